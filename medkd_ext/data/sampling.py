"""Sub-sampling datalists: overlapping teacher subsets, power-law class imbalance and patient-level splits."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from numbers import Integral, Real
from typing import Any, TypeVar

import numpy as np

__all__ = ["overlapping_subsets", "power_law_counts", "power_law_imbalance", "patient_split"]

T = TypeVar("T")


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def overlapping_subsets(items: Sequence[T], k: int, overlap: float, seed: int = 0) -> list[list[T]]:
    """Divide a training set into ``k`` overlapping subsets, one per teacher (RoS-KD, Sec. III-A).

    The items are shuffled and partitioned into ``k`` disjoint chunks ``C_i`` whose sizes differ by at most one.
    Subset ``D_i`` is ``C_i`` plus a random ``round(overlap * |D \\ C_i|)`` of the items outside ``C_i``
    (rounded half up), so ``overlap=0`` gives disjoint subsets and ``overlap=1`` gives every subset the whole set;
    the union of the subsets is always the whole set. The chunks depend on ``seed`` only, so with one seed every
    subset contains the disjoint subset obtained with ``overlap=0``. Inside a subset, items keep their original order.

    Args:
        items: the training cases.
        k: number of subsets (teachers), ``1 <= k <= len(items)``.
        overlap: overlap ratio ``p`` in ``[0, 1]``.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        ``k`` lists of the original item objects (not copies).
    """
    n = len(items)
    if n == 0:
        raise ValueError("items is empty; overlapping_subsets needs at least one training item.")
    k = _check_int("k", k, 1)
    if k > n:
        raise ValueError(f"k={k} is larger than the number of training items ({n}); use at most {n} subsets.")
    if isinstance(overlap, bool) or not isinstance(overlap, Real) or not 0.0 <= float(overlap) <= 1.0:
        raise ValueError(f"overlap must be a ratio in [0, 1], got {overlap!r}.")
    rng = np.random.default_rng(_check_seed(seed))
    chunks = np.array_split(rng.permutation(n), k)
    subsets = []
    for chunk in chunks:
        outside = np.setdiff1d(np.arange(n), chunk)
        extra = rng.choice(outside, size=_round_half_up(float(overlap) * outside.size), replace=False)
        chosen = np.sort(np.concatenate([chunk, extra]))
        subsets.append([items[i] for i in chosen.tolist()])
    return subsets


def power_law_counts(num_classes: int, gamma: float, max_count: int, min_count: int) -> list[int]:
    """Class sizes of the power-law imbalance model of the KD study (Sarfraz et al., Sec. IV-C; Dong et al.).

    ``n_c = round(a / (b + (c - 1) ** gamma))`` for the class index ``c = 1..C`` (rounded half up), with the offsets
    ``b = min_count * (C - 1) ** gamma / (max_count - min_count)`` and ``a = max_count * b``, so that
    ``n_1 = max_count`` and ``n_C = min_count`` exactly. The paper's text extraction prints the exponent as
    ``-gamma``; with a positive exponent the sizes fall from ``max_count`` to ``min_count`` and the distribution
    becomes a steeper power law (all but the first class near ``min_count``) as ``gamma`` decreases, which is what
    the paper describes. ``max_count == min_count`` gives a balanced set.

    Args:
        num_classes: ``C >= 2``.
        gamma: imbalance ratio, ``> 0`` (the study uses 0.2, 0.6, 1.0, 2.0).
        max_count: size of the largest class (class index 0).
        min_count: size of the smallest class (class index ``C - 1``), ``1 <= min_count <= max_count``.

    Returns:
        ``C`` counts, non-increasing, class 0 first.
    """
    num_classes = _check_int("num_classes", num_classes, 2)
    if isinstance(gamma, bool) or not isinstance(gamma, Real) or not math.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a positive number, got {gamma!r}.")
    min_count = _check_int("min_count", min_count, 1)
    max_count = _check_int("max_count", max_count, 1)
    if max_count < min_count:
        raise ValueError(f"max_count ({max_count}) must be >= min_count ({min_count}).")
    if max_count == min_count:
        return [max_count] * num_classes
    b = min_count * (num_classes - 1) ** gamma / (max_count - min_count)
    a = max_count * b
    return [_round_half_up(a / (b + (c - 1) ** gamma)) for c in range(1, num_classes + 1)]


def power_law_imbalance(
    items: Sequence[dict[str, Any]],
    gamma: float,
    max_count: int,
    min_count: int,
    seed: int = 0,
    label_key: str = "label",
    num_classes: int | None = None,
) -> list[dict[str, Any]]:
    """Sub-sample a multi-class training set to power-law class sizes (see :func:`power_law_counts`).

    Class ``j`` (label value ``j``, i.e. the paper's ``c = j + 1``) keeps ``n_{j+1}`` of its items, drawn without
    replacement; class 0 is the largest. The kept items are returned in their original order.

    Args:
        items: the cases, each with an integer class index under ``label_key``.
        gamma: imbalance ratio, ``> 0``.
        max_count: size of class 0.
        min_count: size of the last class.
        seed: seed of ``numpy.random.default_rng``.
        label_key: the entry holding the class index.
        num_classes: number of classes; by default the largest label plus one.

    Raises:
        ValueError: a class has fewer items than its requested count (class and counts named), a label that
            is not an integer class index.
    """
    labels = []
    for index, item in enumerate(items):
        if label_key not in item:
            raise ValueError(f"items[{index}] has no '{label_key}' entry; power_law_imbalance needs class indices.")
        label = item[label_key]
        if hasattr(label, "item") and getattr(label, "ndim", 1) == 0:
            label = label.item()
        if isinstance(label, bool) or not isinstance(label, Integral) or label < 0:
            raise ValueError(
                f"items[{index}]['{label_key}'] is {label!r}; power_law_imbalance needs a non-negative integer class "
                "index (multi-class labels only)."
            )
        labels.append(int(label))
    if not labels:
        raise ValueError("items is empty; nothing to sub-sample.")
    labels_arr = np.asarray(labels)
    if num_classes is None:
        num_classes = int(labels_arr.max()) + 1
    num_classes = _check_int("num_classes", num_classes, 2)
    if labels_arr.max() >= num_classes:
        raise ValueError(f"labels go up to {labels_arr.max()}, outside [0, num_classes={num_classes}).")
    counts = power_law_counts(num_classes, gamma, max_count, min_count)
    rng = np.random.default_rng(_check_seed(seed))
    kept = []
    for cls, wanted in enumerate(counts):
        members = np.flatnonzero(labels_arr == cls)
        if members.size < wanted:
            raise ValueError(
                f"class {cls} has {members.size} items but the power law (gamma={gamma}, max_count={max_count}, "
                f"min_count={min_count}) asks for {wanted}; lower max_count/min_count."
            )
        kept.append(rng.choice(members, size=wanted, replace=False))
    return [items[i] for i in np.sort(np.concatenate(kept)).tolist()]


def patient_split(
    items: Sequence[dict[str, Any]], fractions: Sequence[float], key: str = "patient", seed: int = 0
) -> list[list[dict[str, Any]]]:
    """Split cases into e.g. train/validation/test so that no patient appears in two splits.

    Patients (the values of ``items[i][key]``) are shuffled, then assigned one at a time, largest first, to the
    split whose item count is furthest below its target ``fraction * len(items)``; a split with a positive
    fraction left without patients takes the smallest patient of the split holding the most patients. Split
    sizes therefore match the fractions as closely as the patients' sizes allow.

    Args:
        items: the cases, each with a hashable patient id under ``key``.
        fractions: non-negative split fractions summing to 1, e.g. ``(0.7, 0.15, 0.15)``.
        key: the entry holding the patient id.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        one list of cases per fraction, each in the original order.
    """
    fracs = [float(f) for f in fractions]
    if not fracs or any(not math.isfinite(f) or f < 0 for f in fracs) or abs(sum(fracs) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be non-negative and sum to 1, got {tuple(fractions)}.")
    groups: dict[Hashable, list[int]] = {}
    for index, item in enumerate(items):
        if key not in item:
            raise ValueError(f"items[{index}] has no '{key}' entry; every case needs a patient id for patient_split.")
        groups.setdefault(item[key], []).append(index)
    n_active = sum(f > 0 for f in fracs)
    if len(groups) < n_active:
        raise ValueError(
            f"{len(groups)} patients cannot fill {n_active} splits; every split with a positive fraction needs "
            "at least one patient."
        )
    rng = np.random.default_rng(_check_seed(seed))
    patients = list(groups.values())
    order = rng.permutation(len(patients))
    # stable sort on size keeps the shuffled order among patients of equal size
    ordered = sorted((patients[i] for i in order), key=len, reverse=True)
    targets = [f * len(items) for f in fracs]
    assigned: list[list[list[int]]] = [[] for _ in fracs]
    counts = [0] * len(fracs)
    for group in ordered:
        j = max(range(len(fracs)), key=lambda s: (fracs[s] > 0, targets[s] - counts[s], -s))
        assigned[j].append(group)
        counts[j] += len(group)
    for j, f in enumerate(fracs):
        if f > 0 and not assigned[j]:
            donor = max(range(len(fracs)), key=lambda s: len(assigned[s]))
            smallest = min(assigned[donor], key=len)
            assigned[donor].remove(smallest)
            assigned[j].append(smallest)
    return [[items[i] for i in sorted(i for g in split for i in g)] for split in assigned]
