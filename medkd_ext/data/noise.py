"""Simulated label noise for the robustness experiments (KD study, Sec. IV-B; RoS-KD noisy-label setting)."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np

__all__ = ["LABEL_NOISE_MODES", "inject_label_noise", "apply_label_noise_to_items"]

LABEL_NOISE_MODES = ("symmetric", "symmetric_exclusive")


def _to_numpy(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach") and hasattr(labels, "cpu"):  # torch.Tensor, without importing torch here
        labels = labels.detach().cpu().numpy()
    arr = np.asarray(labels)
    if arr.dtype == object:
        raise TypeError("labels must be a rectangular array of integers (ragged lists are not accepted).")
    return arr


def inject_label_noise(
    labels: Any, rate: float, num_classes: int, seed: int = 0, mode: str = "symmetric"
) -> tuple[np.ndarray, np.ndarray]:
    """Corrupt labels at random, as the KD study does to test robustness to label noise.

    Multi-class (1-D integer labels, shape ``(N,)``): each label is, with probability ``rate`` (the paper's noise
    rate sigma), replaced by a class drawn uniformly at random.

    - ``mode="symmetric"`` follows the KD study (Sarfraz et al., Sec. IV-B, after Arazo et al.): the replacement
      is drawn from ALL ``C`` classes, so it may be the original class and the expected fraction of labels that
      actually change is ``rate * (C - 1) / C``.
    - ``mode="symmetric_exclusive"`` draws the replacement from the ``C - 1`` other classes, so the expected
      fraction changed is ``rate``.

    Multi-label (0/1 array of shape ``(N, C)``): each bit is flipped independently with probability ``rate``
    (both modes); the expected fraction of bits changed is ``rate``.

    Draws do not depend on ``rate``: with one seed, the labels corrupted at a lower rate are a subset of those
    corrupted at a higher rate and receive the same replacement class, so noise levels are nested.

    Args:
        labels: a numpy array, list or torch tensor, shape ``(N,)`` of class indices or ``(N, C)`` of 0/1.
        rate: probability of corrupting each label (or bit), in ``[0, 1]``.
        num_classes: ``C``; labels must lie in ``[0, C)``, and ``(N, C)`` arrays must have ``C`` columns.
        seed: seed of ``numpy.random.default_rng``.
        mode: ``"symmetric"`` or ``"symmetric_exclusive"``.

    Returns:
        ``(noisy, changed_mask)``: numpy arrays of the input's shape; ``noisy`` has the input's (integer) dtype,
        ``changed_mask`` is boolean and marks the labels (bits) whose value actually changed.
    """
    if mode not in LABEL_NOISE_MODES:
        raise ValueError(f"mode must be one of {LABEL_NOISE_MODES}, got {mode!r}.")
    if isinstance(rate, bool) or not isinstance(rate, Real) or not 0.0 <= float(rate) <= 1.0:
        raise ValueError(f"rate must be a probability in [0, 1], got {rate!r}.")
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    arr = _to_numpy(labels)
    if arr.ndim not in (1, 2):
        raise ValueError(
            f"labels must have shape (N,) (multi-class) or (N, C) (multi-label), got shape {tuple(arr.shape)}."
        )
    if arr.dtype.kind == "b":
        arr = arr.astype(np.int64)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError("labels must be integer class indices (or 0/1); found non-integer values.")
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"labels must hold integers, got dtype {arr.dtype}.")
    rng = np.random.default_rng(int(seed))
    rate = float(rate)

    if arr.ndim == 2:
        if arr.shape[1] != num_classes:
            raise ValueError(
                f"multi-label labels have {arr.shape[1]} columns but num_classes={num_classes}; they must match."
            )
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError("multi-label labels must be 0/1 (multi-hot); found other values.")
        flip = rng.random(arr.shape) < rate
        noisy = np.where(flip, 1 - arr, arr).astype(arr.dtype)
        return noisy, flip

    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, num_classes={num_classes}), found values from {arr.min()} to {arr.max()}."
        )
    if mode == "symmetric_exclusive" and num_classes < 2:
        raise ValueError("mode='symmetric_exclusive' needs num_classes >= 2 (there is no other class to draw).")
    corrupt = rng.random(arr.shape) < rate
    if mode == "symmetric":
        replacement = rng.integers(0, num_classes, size=arr.shape)
    else:
        drawn = rng.integers(0, num_classes - 1, size=arr.shape)
        replacement = drawn + (drawn >= arr)
    noisy = np.where(corrupt, replacement, arr).astype(arr.dtype)
    return noisy, noisy != arr


def apply_label_noise_to_items(
    items: Sequence[dict[str, Any]],
    rate: float,
    num_classes: int,
    seed: int = 0,
    label_key: str = "label",
    mode: str = "symmetric",
) -> list[dict[str, Any]]:
    """Return copies of classification cases with noisy labels (see :func:`inject_label_noise`).

    Each returned case is a shallow copy of the input case whose ``label_key`` holds the noisy label (a Python
    ``int``, or a ``list[int]`` multi-hot for multi-label) and whose ``"clean_label"`` holds the original one.
    The input cases are not modified.

    Args:
        items: the cases; every label is an integer class index, or every label a multi-hot list of length C.
        rate: noise rate in ``[0, 1]``.
        num_classes: number of classes ``C``.
        seed: seed of ``numpy.random.default_rng``.
        label_key: the entry holding the label.
        mode: ``"symmetric"`` (as in the KD study) or ``"symmetric_exclusive"``.
    """
    labels = []
    for index, item in enumerate(items):
        if label_key not in item:
            raise ValueError(f"items[{index}] has no '{label_key}' entry; every case needs a label to corrupt.")
        label = item[label_key]
        if hasattr(label, "tolist"):
            label = label.tolist()
        labels.append(list(label) if isinstance(label, (list, tuple)) else label)
    if not labels:
        return []
    kinds = {isinstance(label, list) for label in labels}
    if len(kinds) > 1:
        raise ValueError("labels mix class indices and multi-hot lists; use one kind of label for all cases.")
    try:
        noisy, _ = inject_label_noise(np.asarray(labels), rate, num_classes, seed=seed, mode=mode)
    except TypeError as e:
        raise ValueError(f"labels under '{label_key}' must be integers or multi-hot lists: {e}") from e
    result = []
    for item, clean, new in zip(items, labels, noisy.tolist()):
        out = dict(item)
        out["clean_label"] = clean
        out[label_key] = new
        result.append(out)
    return result
