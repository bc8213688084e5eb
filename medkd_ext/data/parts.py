"""One named part of a datalist split by patient: the source, training and validation sets of a bundle."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

from medkd_ext.data.datalist import check_image_files, load_datalist
from medkd_ext.data.sampling import patient_split

__all__ = ["ALL_CASES", "datalist_part"]

ALL_CASES = "all"
"""``part`` value of :func:`datalist_part` that returns every case of the list."""


def datalist_part(
    datalist: str | os.PathLike,
    part: str,
    fractions: Mapping[str, float],
    seed: int = 0,
    key: str = "training",
    patient_key: str = "patient",
    class_columns: list[str] | None = None,
    name: str = "datalist",
) -> list[dict[str, Any]]:
    """The cases of one part of a datalist's list, the list being split into named parts with no patient shared.

    The split is :func:`medkd_ext.data.patient_split` with the fractions in the order of ``fractions``, so every
    config that names the same ``fractions`` and ``seed`` sees the same parts (e.g. a teacher trained on
    ``"source"`` and a student trained on ``"train"``, both validated on ``"validation"``). Cases without a patient
    id count as a patient each. The image files are checked to exist and be whole (:func:`check_image_files`).

    Args:
        datalist: an MSD-style ``dataset.json`` or a CSV table (see :func:`medkd_ext.data.load_datalist`).
        part: a name of ``fractions``, or ``"all"`` for the whole list.
        fractions: part name -> fraction of the cases, non-negative, summing to 1, e.g.
            ``{"source": 0.6, "train": 0.15, "validation": 0.25}``.
        seed: seed of the split.
        key: the list to read (``"training"``, ``"test"``, ...).
        patient_key: the entry holding the patient id.
        class_columns: CSV only, the 0/1 columns of a multi-label table.
        name: the config id that gave ``datalist`` (``"teacher_datalist"``), named when the file does not exist.

    Returns:
        the part's cases, in datalist order.

    Raises:
        ValueError: ``part`` is not a name of ``fractions``, bad fractions, a part with a positive fraction is
            empty, or the part asked for has fraction 0.
        FileNotFoundError: the datalist or an image it names does not exist.
    """
    if not isinstance(fractions, Mapping) or not fractions:
        raise ValueError(f"datalist_part: fractions must be a non-empty mapping part -> fraction, got {fractions!r}.")
    names = list(fractions)
    if part != ALL_CASES and part not in names:
        raise ValueError(f"datalist_part: part {part!r} is not one of {names} (or '{ALL_CASES}').")
    values = [float(fractions[n]) for n in names]
    if any(not math.isfinite(v) or v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"datalist_part: fractions {dict(fractions)} must be non-negative and sum to 1.")
    items = load_datalist(datalist, key=key, class_columns=class_columns, name=name)
    check_image_files(items, "image")
    if part == ALL_CASES:
        return items
    if values[names.index(part)] == 0:
        raise ValueError(f"datalist_part: part {part!r} has fraction 0 in {dict(fractions)}; give it a positive one.")
    for item in items:
        item.setdefault(patient_key, item["image"])
    parts = patient_split(items, values, key=patient_key, seed=seed)
    return parts[names.index(part)]
