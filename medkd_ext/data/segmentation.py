"""Datalists of the joint-teacher segmentation bundle: one target dataset and one or more source datasets."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd_ext.data.datalist import check_image_files, load_datalist

__all__ = ["segmentation_datalists", "require_cases"]

logger = logging.getLogger(__name__)


def _has_key(path: Path, key: str) -> bool:
    if path.suffix.lower() != ".json":
        return False
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    return bool(content.get(key))


def _labelled(path: Path, key: str, name: str) -> list[dict[str, Any]]:
    items = load_datalist(path, key=key, name=name)
    unlabelled = [i for i, item in enumerate(items) if "label" not in item]
    if unlabelled:
        raise ValueError(
            f"datalist {path}: the cases {unlabelled[:5]} under '{key}' have no 'label'; every training case of a "
            "segmentation dataset needs a label map."
        )
    check_image_files(items, keys=("image", "label"))
    return items


def _test_cases(path: Path, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The labelled and the unlabelled cases of ``key`` (MSD's ``"test"`` list holds images without labels)."""
    items = load_datalist(path, key=key)
    labelled = [item for item in items if "label" in item]
    unlabelled = [item for item in items if "label" not in item]
    check_image_files(labelled, keys=("image", "label"))
    check_image_files(unlabelled, keys=("image",))
    if unlabelled:
        logger.info(
            "datalist %s: %d of the %d cases under '%s' have no label; they are left out of the evaluation "
            "(inference.json segments them).", path, len(unlabelled), len(items), key,
        )
    return labelled, unlabelled


def require_cases(items: Sequence[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """``items`` as a list, or ``ValueError`` naming ``what`` when there is none (e.g. no labelled test case)."""
    items = list(items)
    if not items:
        raise ValueError(f"{what} has no case to evaluate: give labelled cases there, or set test_split.")
    return items


def segmentation_datalists(
    target_datalist: str | os.PathLike,
    source_datalists: Sequence[str | os.PathLike] = (),
    val_fraction: float = 0.2,
    seed: int = 0,
    sources: Sequence[int] | None = None,
    test_key: str = "test",
) -> dict[str, Any]:
    """Read and check the target and source datalists, and split the target's training cases.

    The target's ``"training"`` cases are split into train and validation (``val_fraction`` of the cases, at least
    one when the fraction is positive and there are two cases or more; or the datalist's own ``"validation"`` list
    when it has one). Its ``"test"`` cases, if labelled, are the held-out evaluation set. Every file is checked
    to exist and be whole (:func:`~medkd_ext.data.check_image_files`) before any training starts.

    Args:
        target_datalist: MSD ``dataset.json`` (or CSV) of the target dataset.
        source_datalists: one datalist per source dataset (their ``"training"`` cases are used).
        val_fraction: fraction of the target's training cases held out for validation.
        seed: seed of the split.
        sources: indices into ``source_datalists`` to use (the "which sources" ablation); default all.
        test_key: the key of the target datalist's held-out test cases (a bundle's ``test_split``); those with a
            label are the evaluation set, those without (MSD's ``"test"`` list) are left out of it with a note.

    Returns:
        ``{"target_train", "target_val", "target_test", "target_test_unlabelled", "sources"}``: lists of
        ``{"image", "label"}`` items (``target_test`` the labelled test cases, the evaluation set;
        ``target_test_unlabelled`` the test images without a label, as MSD's ``"test"`` list has them);
        ``sources`` is a list with one list per used source dataset.
    """
    target_path = Path(target_datalist)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    train = _labelled(target_path, "training", "target_datalist")
    if _has_key(target_path, "validation"):
        val = _labelled(target_path, "validation", "target_datalist")
    else:
        n_val = int(round(val_fraction * len(train)))
        if val_fraction > 0 and len(train) >= 2:
            n_val = min(max(n_val, 1), len(train) - 1)
        order = np.random.default_rng(seed).permutation(len(train))
        val_idx = set(order[:n_val].tolist())
        val = [item for i, item in enumerate(train) if i in val_idx]
        train = [item for i, item in enumerate(train) if i not in val_idx]
    test, unlabelled = _test_cases(target_path, test_key) if _has_key(target_path, test_key) else ([], [])
    all_sources = list(source_datalists)
    chosen = range(len(all_sources)) if sources is None else sources
    source_items = []
    for index in chosen:
        if not 0 <= index < len(all_sources):
            raise ValueError(f"source index {index} is out of range: {len(all_sources)} source datalists are given.")
        path = Path(all_sources[index])
        try:
            source_items.append(_labelled(path, "training", f"source_datalists[{index}]"))
        except ValueError as e:
            raise ValueError(f"source dataset {index} ({path}): {e}") from e
    return {
        "target_train": train,
        "target_val": val,
        "target_test": test,
        "target_test_unlabelled": unlabelled,
        "sources": source_items,
    }
