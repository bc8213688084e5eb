"""Datalists of the joint-teacher segmentation bundle: one target dataset and one or more source datasets."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd_ext.data.datalist import check_files_exist, load_datalist

__all__ = ["segmentation_datalists"]


def _has_key(path: Path, key: str) -> bool:
    if path.suffix.lower() != ".json":
        return False
    with open(path, encoding="utf-8") as f:
        content = json.load(f)
    return bool(content.get(key))


def _labelled(path: Path, key: str) -> list[dict[str, Any]]:
    items = load_datalist(path, key=key)
    unlabelled = [i for i, item in enumerate(items) if "label" not in item]
    if unlabelled:
        raise ValueError(
            f"datalist {path}: the cases {unlabelled[:5]} under '{key}' have no 'label'; every training case of a "
            "segmentation dataset needs a label map."
        )
    check_files_exist(items, keys=("image", "label"))
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
    to exist before any training starts.

    Args:
        target_datalist: MSD ``dataset.json`` (or CSV) of the target dataset.
        source_datalists: one datalist per source dataset (their ``"training"`` cases are used).
        val_fraction: fraction of the target's training cases held out for validation.
        seed: seed of the split.
        sources: indices into ``source_datalists`` to use (the "which sources" ablation); default all.
        test_key: the key of the target datalist's held-out, labelled test cases (a bundle's ``test_split``).

    Returns:
        ``{"target_train", "target_val", "target_test", "sources"}``: lists of ``{"image", "label"}`` items;
        ``sources`` is a list with one list per used source dataset.
    """
    target_path = Path(target_datalist)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}.")
    train = _labelled(target_path, "training")
    if _has_key(target_path, "validation"):
        val = _labelled(target_path, "validation")
    else:
        n_val = int(round(val_fraction * len(train)))
        if val_fraction > 0 and len(train) >= 2:
            n_val = min(max(n_val, 1), len(train) - 1)
        order = np.random.default_rng(seed).permutation(len(train))
        val_idx = set(order[:n_val].tolist())
        val = [item for i, item in enumerate(train) if i in val_idx]
        train = [item for i, item in enumerate(train) if i not in val_idx]
    test = _labelled(target_path, test_key) if _has_key(target_path, test_key) else []
    all_sources = list(source_datalists)
    chosen = range(len(all_sources)) if sources is None else sources
    source_items = []
    for index in chosen:
        if not 0 <= index < len(all_sources):
            raise ValueError(f"source index {index} is out of range: {len(all_sources)} source datalists are given.")
        path = Path(all_sources[index])
        try:
            source_items.append(_labelled(path, "training"))
        except ValueError as e:
            raise ValueError(f"source dataset {index} ({path}): {e}") from e
    return {"target_train": train, "target_val": val, "target_test": test, "sources": source_items}
