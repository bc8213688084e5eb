"""The RoS-KD recipe (Jaiswal et al., "RoS-KD: A Robust Stochastic Knowledge Distillation Approach for Noisy Medical
Imaging") and its baselines, as the pieces ``bundles/roskd_classification`` assembles from its configs.

- :func:`prepare_training_items`: label checks, a patient-level train/validation split and simulated label noise on
  the training split only;
- :func:`teacher_subset`: the training subset of teacher ``i`` (``overlapping_subsets``, Sec. III-A);
  :func:`teacher_data`, :func:`teacher_paths`, :func:`teacher_training_items`: which teacher set a method distils
  (overlapping subsets for RoS-KD and Baseline V, the whole training split for Baselines II and III);
- :func:`load_teachers`, :func:`roskd_loss_terms`, :func:`uses_smoothing`: one key, ``method``, selects RoS-KD or
  one of the paper's baselines (Sec. IV-C): which teachers are distilled, with which loss, and whether the final
  model is the smooth parameter average ``M_smooth`` (eq. 1).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medkd_ext.data.datalist import check_image_files, load_datalist
from medkd_ext.data.noise import apply_label_noise_to_items
from medkd_ext.data.sampling import overlapping_subsets, patient_split
from medkd_ext.engines.distillation import ALL_TEACHERS, LABEL, LossTerm
from medkd_ext.engines.stages import as_flag, check_stage_output, stage_hint
from medkd_ext.handlers.averaging import recompute_batchnorm
from medkd_ext.losses.response import KDLoss, MultiTeacherKDLoss
from medkd_ext.networks.checkpoint import load_state_dict, save_state_dict

__all__ = [
    "ROSKD_METHODS",
    "as_flag",
    "check_method",
    "check_teacher_list",
    "evaluation_items",
    "load_teachers",
    "method_teacher_indices",
    "prepare_training_items",
    "roskd_loss_terms",
    "save_final_network",
    "study_method",
    "supervised_loss",
    "teacher_data",
    "teacher_paths",
    "teacher_subset",
    "teacher_training_items",
    "TEACHER_DATA",
    "uses_smoothing",
]

logger = logging.getLogger(__name__)

ROSKD_METHODS: dict[str, str] = {
    "student_only": "Baseline I: the student trained alone with cross-entropy (BCE for multi-label)",
    "hinton_kd": "Baseline II: single-teacher Hinton KD from the DenseNet-121 teacher",
    "uniform_mkd": "Baseline III: multi-teacher KD, equal weights on the teachers' averaged outputs",
    "roskd_no_smoothing": "Baseline V: RoS-KD without smooth parameter averaging (final weights)",
    "roskd": "RoS-KD: stochastic (exponential) teacher weights per iteration and smooth parameter averaging",
}
"""``method`` values of the bundle (the paper's Baseline IV, RL-learned teacher weights, is not implemented)."""

def check_method(method: str) -> str:
    """Return ``method`` if it is one of :data:`ROSKD_METHODS`, else raise ``ValueError`` listing them."""
    if method not in ROSKD_METHODS:
        choices = ", ".join(f"'{m}'" for m in ROSKD_METHODS)
        raise ValueError(f"method must be one of {choices}; got {method!r}.")
    return method


def uses_smoothing(method: str) -> bool:
    """Whether ``method`` keeps ``M_smooth`` (RoS-KD eq. 1) as the final model; only ``"roskd"`` does."""
    return check_method(method) == "roskd"


def method_teacher_indices(method: str, num_teachers: int, hinton_teacher: int) -> list[int]:
    """Indices of the teachers ``method`` distils: none (Baseline I), the Hinton teacher (II), or all ``k``."""
    check_method(method)
    if method == "student_only":
        return []
    if method == "hinton_kd":
        if isinstance(hinton_teacher, bool) or not isinstance(hinton_teacher, Integral):
            raise TypeError(f"hinton_teacher must be an integer teacher index, got {hinton_teacher!r}.")
        if not 0 <= hinton_teacher < num_teachers:
            raise ValueError(
                f"hinton_teacher={hinton_teacher} is not a teacher index in [0, {num_teachers}); set it to the "
                "index of the DenseNet-121 teacher in teacher_defs."
            )
        return [int(hinton_teacher)]
    return list(range(num_teachers))


def supervised_loss(multi_label: bool) -> nn.Module:
    """Cross-entropy on logits (multi-class) or binary cross-entropy on logits (multi-label)."""
    return nn.BCEWithLogitsLoss() if multi_label else nn.CrossEntropyLoss()


def roskd_loss_terms(method: str, temperature: float, alpha: float, multi_label: bool = False) -> list[LossTerm]:
    """The loss terms of ``method`` for :class:`~medkd_ext.engines.DistillationTrainer` (RoS-KD eq. 3-4).

    Distilling methods train on ``alpha * kd + (1 - alpha) * ce`` with the distillation term
    ``"kd"`` and the supervised term ``"ce"`` (cross-entropy, or BCE when ``multi_label``):

    - ``"student_only"`` (Baseline I): ``ce`` alone, weight 1;
    - ``"hinton_kd"`` (II): ``KDLoss(temperature)`` from the one teacher given to the trainer;
    - ``"uniform_mkd"`` (III): ``MultiTeacherKDLoss(temperature, "uniform")`` over all teachers;
    - ``"roskd_no_smoothing"`` (V) and ``"roskd"``: ``MultiTeacherKDLoss(temperature, "exponential")``, teacher
      weights drawn afresh at every iteration (eq. 4).

    Args:
        method: one of :data:`ROSKD_METHODS`.
        temperature: softening temperature ``tau > 0`` (paper: 0.5).
        alpha: weight of the distillation term in ``[0, 1]`` (paper: 0.9).
        multi_label: per-class sigmoid/Bernoulli KL and BCE instead of softmax KL and cross-entropy.
    """
    check_method(method)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha must be a number in [0, 1] (weight of the distillation term), got {alpha!r}.")
    ce = supervised_loss(multi_label)
    if method == "student_only":
        return [LossTerm("ce", ce, weight=1.0, teacher=LABEL)]
    if method == "hinton_kd":
        kd = LossTerm("kd", KDLoss(temperature, multi_label=multi_label), weight=float(alpha))
    else:
        weighting = "uniform" if method == "uniform_mkd" else "exponential"
        loss = MultiTeacherKDLoss(temperature, weighting, multi_label=multi_label)
        kd = LossTerm("kd", loss, weight=float(alpha), teachers=ALL_TEACHERS)
    return [kd, LossTerm("ce", ce, weight=1.0 - float(alpha), teacher=LABEL)]


def check_teacher_list(teacher_defs: Sequence[Any], num_teachers: int) -> None:
    """Raise ``ValueError`` unless there is exactly one teacher network per subset (``len == k``)."""
    if isinstance(num_teachers, bool) or not isinstance(num_teachers, Integral) or num_teachers < 1:
        raise ValueError(f"num_teachers (k) must be a positive integer, got {num_teachers!r}.")
    if not isinstance(teacher_defs, Sequence) or isinstance(teacher_defs, (str, bytes)):
        raise TypeError(f"teacher_defs must be a list of networks, got {type(teacher_defs).__name__}.")
    if len(teacher_defs) != num_teachers:
        raise ValueError(
            f"teacher_defs lists {len(teacher_defs)} networks but num_teachers (k) is {num_teachers}: teacher i is "
            "trained on subset i, so give exactly k networks (or set num_teachers to the length of the list)."
        )


def load_teachers(
    method: str,
    teacher_defs: Sequence[nn.Module],
    teacher_ckpts: Sequence[str | os.PathLike],
    device: str | torch.device,
    hinton_teacher: int,
    stages: Sequence[Any] = (),
    bundle_root: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
) -> dict[str, nn.Module]:
    """The trained teachers ``method`` distils, loaded from ``teacher_ckpts``, keyed by their index.

    Every checkpoint the method needs is checked before any is loaded, so a missing one is reported with the stage
    that writes it before training starts.

    Args:
        method: one of :data:`ROSKD_METHODS`.
        teacher_defs: the ``k`` teacher networks (untrained instances).
        teacher_ckpts: the ``k`` teacher checkpoints (``teacher_ckpts[i]`` holds teacher ``i``).
        device: device to put the teachers on.
        hinton_teacher: index of the single teacher of ``"hinton_kd"``.
        stages: the bundle's stages, to name the one that writes a missing checkpoint (:func:`stage_hint`).
        bundle_root: the bundle's folder, for the command in that message.
        settings: this run's input and data settings, checked against each teacher's record
            (:func:`medkd_ext.engines.check_stage_output`) before anything is loaded.

    Returns:
        ``{"<i>": teacher_i}`` (empty for ``"student_only"``).
    """
    if len(teacher_ckpts) != len(teacher_defs):
        raise ValueError(
            f"{len(teacher_ckpts)} teacher checkpoints for {len(teacher_defs)} teacher_defs; give one for each teacher."
        )
    indices = method_teacher_indices(method, len(teacher_defs), hinton_teacher)
    paths = {i: os.fspath(teacher_ckpts[i]) for i in indices}
    missing = [path for path in paths.values() if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(
            f"method '{method}' needs the teacher checkpoint(s) {missing}, which do not exist: "
            f"{stage_hint(stages, missing[0], bundle_root)}."
        )
    if settings is not None:
        for path in paths.values():
            check_stage_output(path, settings, stage_hint(stages, path, bundle_root))
    teachers = {}
    for i in indices:
        hint = f"{stage_hint(stages, paths[i], bundle_root)}, with the current teacher_defs"
        network = teacher_defs[i].to(device)
        teachers[str(i)] = load_state_dict(network, paths[i], device=device, stage_hint=hint)
    return teachers


def _describe(item: Mapping[str, Any], index: int) -> str:
    return f"case {index} (image {item.get('image', '?')})"


def _check_labels(items: Sequence[Mapping[str, Any]], num_classes: int, multi_label: bool) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, Integral) or num_classes < 2 - int(multi_label):
        raise ValueError(f"num_classes must be an integer >= {2 - int(multi_label)}, got {num_classes!r}.")
    for index, item in enumerate(items):
        if "label" not in item:
            raise ValueError(f"{_describe(item, index)} has no 'label'; every training case needs one.")
        label = item["label"]
        if hasattr(label, "tolist"):
            label = label.tolist()
        if multi_label:
            if (
                not isinstance(label, (list, tuple))
                or len(label) != num_classes
                or any(isinstance(v, bool) or v not in (0, 1) for v in label)
            ):
                raise ValueError(
                    f"{_describe(item, index)} has label {label!r}; a multi-label label must be a multi-hot list of "
                    f"num_classes={num_classes} zeros and ones: fix the datalist or num_classes."
                )
        elif isinstance(label, bool) or not isinstance(label, Integral) or not 0 <= label < num_classes:
            raise ValueError(
                f"{_describe(item, index)} has label {label!r}, outside the classes [0, {num_classes}); labels must "
                "be integer class indices: fix the datalist, set num_classes, or pass multi_label=true for multi-hot "
                "labels."
            )


def prepare_training_items(
    items: Sequence[Mapping[str, Any]],
    num_classes: int,
    multi_label: bool,
    val_fraction: float,
    noise_rate: float,
    seed: int = 0,
    noise_mode: str = "symmetric",
) -> dict[str, list[dict[str, Any]]]:
    """Check the labelled cases, split off a validation set and corrupt the training labels.

    Labels are checked first (integer class indices in ``[0, C)``, or multi-hot lists of length ``C``), and the
    image files are checked to exist and be whole (``check_image_files``), so that a bad datalist fails before any
    training. The validation set is drawn by patient when every case has a ``"patient"`` entry (``patient_split``),
    else by case. Symmetric label noise at ``noise_rate`` is then injected into the training split only
    (``apply_label_noise_to_items``; the original label is kept under ``"clean_label"``), as in the paper's
    noisy-label setting.

    Args:
        items: the labelled cases (the datalist's ``"training"`` list).
        num_classes: number of classes ``C``.
        multi_label: multi-hot labels.
        val_fraction: fraction of the cases held out for validation, in ``[0, 1)``.
        noise_rate: label-noise rate in ``[0, 1]``; 0 keeps the labels.
        seed: seed of the split and the noise.
        noise_mode: ``"symmetric"`` or ``"symmetric_exclusive"``.

    Returns:
        ``{"train": noisy training cases, "validation": clean validation cases}``.
    """
    items = [dict(item) for item in items]
    if not items:
        raise ValueError("the datalist has no training case.")
    _check_labels(items, num_classes, multi_label)
    check_image_files(items, keys=("image",))
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}.")
    if not 0.0 <= float(noise_rate) <= 1.0:
        raise ValueError(f"noise_rate must be in [0, 1], got {noise_rate!r}.")
    if float(val_fraction) == 0.0:
        train, val = items, []
    elif all("patient" in item for item in items):
        train, val = patient_split(items, (1.0 - float(val_fraction), float(val_fraction)), seed=seed)
    else:
        order = np.random.default_rng(seed).permutation(len(items))
        n_val = max(1, int(round(float(val_fraction) * len(items))))
        chosen = set(order[:n_val].tolist())
        train = [item for i, item in enumerate(items) if i not in chosen]
        val = [item for i, item in enumerate(items) if i in chosen]
    if not train:
        raise ValueError(f"val_fraction={val_fraction} leaves no training case out of {len(items)}; lower it.")
    noisy = apply_label_noise_to_items(train, float(noise_rate), num_classes, seed=seed, mode=noise_mode)
    changed = sum(item["label"] != item["clean_label"] for item in noisy)
    logger.info(
        "%d training cases (%d labels changed by %.0f%% %s noise), %d validation cases",
        len(noisy), changed, 100 * float(noise_rate), noise_mode, len(val),
    )
    return {"train": noisy, "validation": val}


def save_final_network(
    network: nn.Module,
    path: str | os.PathLike,
    bn_loader: Iterable | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Write a trained network's state dict atomically, after recomputing its BatchNorm statistics on ``bn_loader``.

    Used for the teachers and for students without smoothing. BatchNorm running statistics are exponential averages
    (momentum 0.1) that start from variance 1; after the few hundred iterations of a demo-sized run they still carry
    that start, which ``M_smooth`` does not (its statistics are recomputed), so recomputing them for every final
    model keeps the comparison fair. With long training (the paper's) recomputation changes nothing.

    Args:
        network: the trained network.
        path: the checkpoint file.
        bn_loader: batches (dicts with ``"image"``) for the recomputation; ``None`` keeps the running statistics.
        device: device of the BatchNorm pass; default the network's.
    """
    if bn_loader is not None:
        recompute_batchnorm(network, bn_loader, device)
    return save_state_dict(network, path)


TEACHER_DATA = {"roskd": "subsets", "roskd_no_smoothing": "subsets", "hinton_kd": "full", "uniform_mkd": "full"}
"""The data the teachers of a ``method`` are trained on. RoS-KD and Baseline V distil teachers trained on the ``k``
overlapping subsets; Baseline II (Hinton KD from DenseNet-121) and Baseline III ("conventional ensemble KD", whose
teachers "use the same training dataset", RoS-KD Sec. I and Fig. 3) distil teachers trained on the whole training
split; Baseline I has none."""


def study_method(method: str, distill_method: str | None) -> str:
    """The ``method`` a run with ``distill_method`` (a KD-study method, :mod:`medkd_ext.engines.kd_study`) runs as:
    the single-teacher mode ``"hinton_kd"`` (the DenseNet teacher ``hinton_teacher``, trained on the whole training
    split, no smoothing) for teacher-student methods, ``"student_only"`` (no teacher) for ONE and DML, ``method``
    itself when ``distill_method`` is null."""
    from medkd_ext.engines.kd_study import check_choice, needs_teacher

    if check_choice(distill_method) is None:
        return check_method(method)
    return "hinton_kd" if needs_teacher(distill_method) else "student_only"


def teacher_data(method: str) -> str | None:
    """``"subsets"``, ``"full"`` or ``None``: what the teachers of ``method`` are trained on (:data:`TEACHER_DATA`)."""
    return TEACHER_DATA.get(check_method(method))


def teacher_paths(ckpt_dir: str | os.PathLike, num_teachers: int, data: str | None) -> list[str]:
    """The ``k`` teacher checkpoints of a teacher set: ``teacher_<i>.pt`` (overlapping subsets, and Baseline I's
    unused default) or ``teacher_full_<i>.pt`` (the whole training split), so both sets live in one ``ckpt_dir``."""
    stem = "teacher_full" if data == "full" else "teacher"
    return [os.path.join(os.fspath(ckpt_dir), f"{stem}_{i}.pt") for i in range(int(num_teachers))]


def teacher_training_items(
    train_items: Sequence[dict[str, Any]],
    data: str | None,
    num_teachers: int,
    overlap: float,
    index: int,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Training cases of teacher ``index``: its overlapping subset (:func:`teacher_subset`) when ``data`` is
    ``"subsets"``, the whole (noisy) training split when it is ``"full"``."""
    if data == "full":
        return list(train_items)
    if data != "subsets":
        raise ValueError(f"the teachers' data must be 'subsets' or 'full', got {data!r}; method 'student_only' has "
                         "no teachers to train (give --train_teachers false).")
    return teacher_subset(train_items, num_teachers, overlap, index, seed)


def teacher_subset(
    train_items: Sequence[dict[str, Any]], num_teachers: int, overlap: float, index: int, seed: int = 0
) -> list[dict[str, Any]]:
    """Training cases of teacher ``index``: subset ``index`` of ``overlapping_subsets(train_items, k, overlap, seed)``.

    Raises ``ValueError`` when ``k`` exceeds the number of training cases or ``index`` is not in ``[0, k)``.
    """
    if isinstance(index, bool) or not isinstance(index, Integral) or not 0 <= index < num_teachers:
        raise ValueError(f"teacher_index must be an integer in [0, num_teachers={num_teachers}), got {index!r}.")
    if isinstance(num_teachers, Integral) and num_teachers > len(train_items):
        raise ValueError(
            f"num_teachers (k) = {num_teachers} is larger than the training set ({len(train_items)} cases after the "
            "validation split); lower k or add training cases."
        )
    return overlapping_subsets(train_items, num_teachers, overlap, seed=seed)[int(index)]


def evaluation_items(
    datalist: str | os.PathLike,
    key: str,
    num_classes: int,
    multi_label: bool,
    class_columns: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The labelled cases of split ``key`` of the datalist (e.g. ``"test"``), labels and files checked.

    ``class_columns`` names the 0/1 class columns of a multi-label CSV datalist (:func:`load_datalist`).
    """
    items = load_datalist(datalist, key=key, class_columns=class_columns)
    _check_labels(items, num_classes, multi_label)
    check_image_files(items, keys=("image",))
    return items
