"""Reading datalists: MSD-style ``dataset.json`` files and CSV tables, and checking the files they name."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medkd_ext.data.imagefiles import check_image_file
from medkd_ext.runtime import find_images

__all__ = ["load_datalist", "check_files_exist", "check_image_files", "class_names", "list_images", "log_splits"]

logger = logging.getLogger(__name__)

_CSV_SPLIT_COLUMN = "split"


def _resolve(base_dir: Path, value: Any) -> Any:
    """Join a relative path (or each path of a list) to ``base_dir``; other values are returned unchanged."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if not text:
            return text
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(text)))
    if isinstance(value, list) and value and all(isinstance(v, (str, os.PathLike)) for v in value):
        return [_resolve(base_dir, v) for v in value]
    return value


def _parse_int_cell(text: str, path: Path, row: int, column: str) -> int:
    try:
        number = float(text)
    except ValueError:
        number = float("nan")
    if not math.isfinite(number) or number != int(number):
        raise ValueError(
            f"datalist {path}: row {row}, column '{column}' holds {text!r}, expected an integer class index; "
            "fix the table (blank or uncertain labels must be mapped to a class before loading)."
        )
    return int(number)


def _load_json(
    path: Path, key: str, base_dir: Path, image_key: str, label_key: str
) -> list[dict[str, Any]]:
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"datalist {path} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno}).") from e
    if not isinstance(content, dict):
        raise ValueError(
            f"datalist {path} must hold a JSON object with lists under keys such as 'training' and 'test', "
            f"got a {type(content).__name__}."
        )
    if key not in content:
        present = sorted(k for k, v in content.items() if isinstance(v, list))
        raise ValueError(
            f"datalist {path} has no key '{key}'; the lists present are {present} (all keys: {sorted(content)}). "
            "Pass one of them as `key`."
        )
    entries = content[key]
    if not isinstance(entries, list):
        raise ValueError(f"datalist {path}: '{key}' must be a list of cases, got a {type(entries).__name__}.")
    if not entries:
        raise ValueError(f"datalist {path} has no cases under '{key}'")
    items = []
    for index, entry in enumerate(entries):
        if isinstance(entry, (str, os.PathLike)):
            entry = {image_key: entry}
        if not isinstance(entry, dict):
            raise TypeError(
                f"datalist {path}: case {index} under '{key}' must be an object or a path string, "
                f"got a {type(entry).__name__}."
            )
        if image_key not in entry:
            raise ValueError(
                f"datalist {path}: case {index} under '{key}' has no '{image_key}' entry (keys: {sorted(entry)}); "
                "pass the right `image_key`."
            )
        item = dict(entry)
        image = item.pop(image_key)
        label = item.pop(label_key, None)
        item["image"] = _resolve(base_dir, image)
        if label_key in entry:
            item["label"] = _resolve(base_dir, label)
        items.append(item)
    return items


def _load_csv(
    path: Path,
    key: str,
    base_dir: Path,
    image_key: str,
    label_key: str,
    class_columns: Sequence[str] | None,
) -> list[dict[str, Any]]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if image_key not in columns:
        raise ValueError(
            f"datalist {path} has no image column '{image_key}'; its columns are {columns}. "
            "Pass the right `image_key`."
        )
    if class_columns is not None:
        missing = [c for c in class_columns if c not in columns]
        if missing:
            raise ValueError(f"datalist {path} lacks the class columns {missing}; its columns are {columns}.")
        if not class_columns:
            raise ValueError("class_columns must name at least one column, got an empty sequence.")
    if _CSV_SPLIT_COLUMN in columns:
        splits = sorted({row[_CSV_SPLIT_COLUMN] for row in rows})
        rows = [row for row in rows if row[_CSV_SPLIT_COLUMN] == key]
        if not rows and splits and key not in splits:
            raise ValueError(
                f"datalist {path} has no cases under '{key}'; its '{_CSV_SPLIT_COLUMN}' column holds {splits}. "
                "Pass one of them as `key`."
            )
    elif key != "training":
        raise ValueError(
            f"datalist {path} has no '{_CSV_SPLIT_COLUMN}' column, so key='{key}' cannot be selected; "
            "add a 'split' column or use key='training' (all rows)."
        )
    if not rows:
        raise ValueError(f"datalist {path} has no cases under '{key}'")

    consumed = {image_key, _CSV_SPLIT_COLUMN}
    consumed.update(class_columns if class_columns is not None else [label_key])
    items = []
    for index, row in enumerate(rows):
        line = index + 2  # 1-based, after the header
        if not row[image_key]:
            raise ValueError(f"datalist {path}: row {line} has an empty '{image_key}' cell.")
        item: dict[str, Any] = {"image": _resolve(base_dir, row[image_key])}
        if class_columns is not None:
            hot = [_parse_int_cell(row[c] or "", path, line, c) for c in class_columns]
            bad = [c for c, v in zip(class_columns, hot) if v not in (0, 1)]
            if bad:
                raise ValueError(
                    f"datalist {path}: row {line} has values other than 0/1 in the class columns {bad}; "
                    "multi-label class columns must be 0 or 1."
                )
            item["label"] = hot
        elif label_key in columns:
            item["label"] = _parse_int_cell(row[label_key] or "", path, line, label_key)
        for column in columns:
            if column not in consumed and column is not None:
                item[column] = row[column]
        items.append(item)
    return items


def load_datalist(
    path: str | os.PathLike,
    key: str = "training",
    base_dir: str | os.PathLike | None = None,
    image_key: str = "image",
    label_key: str = "label",
    class_columns: Sequence[str] | None = None,
    name: str = "datalist",
) -> list[dict[str, Any]]:
    """Load the cases of a datalist as a list of dictionaries keyed ``"image"`` and ``"label"``.

    Two formats are read, chosen by the file suffix:

    - ``.json``: the Medical Segmentation Decathlon ``dataset.json`` (as ``monai.data.load_decathlon_datalist``
      reads it): lists of ``{"image": ..., "label": ...}`` under ``"training"``, ``"validation"``, ``"test"``;
      plain path strings (MSD ``"test"``) become ``{"image": path}``. A label that is a path (segmentation) is
      resolved like the image; an integer or a multi-hot list (classification) is kept. Other fields are kept
      unchanged.
    - ``.csv``: one row per image. The image column is ``image_key``; the label is the integer column
      ``label_key`` (multi-class), or, when ``class_columns`` is given, the 0/1 columns it names become a
      multi-hot ``list[int]`` in that order (multi-label). Other columns (e.g. ``"patient"``) are kept as strings.
      If the table has a ``"split"`` column, only the rows whose split equals ``key`` are returned; without it,
      only ``key="training"`` is accepted and every row is returned. A table without the label column gives
      items without ``"label"`` (inference).

    ``image_key`` and ``label_key`` name the entries in the file; the returned items always use the MONAI data
    keys ``"image"`` and ``"label"`` that the bundles' transforms expect. ``class_columns`` only applies to CSV.
    Relative paths are resolved against ``base_dir``, by default the folder holding the datalist. Files are not
    checked here; call :func:`check_image_files` (or :func:`check_files_exist`) for that.

    Args:
        path: the ``dataset.json`` or ``.csv`` file.
        key: the list to read (JSON key, or value of the CSV ``"split"`` column).
        base_dir: folder that relative paths are joined to; defaults to the datalist's folder.
        image_key: name of the image entry/column in the file.
        label_key: name of the label entry/column in the file.
        class_columns: CSV only: the 0/1 columns, one per class, of a multi-label table.
        name: the config id that gave ``path`` (``"teacher_datalist"``, ``"source_datalists[1]"``), named when the
            file does not exist.

    Returns:
        a new list of new dictionaries, in file order.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ValueError: invalid JSON, a missing ``key`` (the keys present are named), an empty list, a CSV without
            the image column or with a non-integer label.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"datalist file {path} does not exist; check the `{name}` path.")
    base = Path(os.path.abspath(Path(base_dir).expanduser() if base_dir is not None else path.parent))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _load_csv(path, key, base, image_key, label_key, class_columns)
    if suffix == ".json":
        return _load_json(path, key, base, image_key, label_key)
    raise ValueError(f"datalist {path} has suffix '{path.suffix}'; expected an MSD-style '.json' or a '.csv' table.")


def check_files_exist(
    items: Sequence[dict[str, Any]], keys: Sequence[str] | str = ("image", "label"), allow_missing_keys: bool = True
) -> None:
    """Check that every path a datalist names exists, before any training time is spent.

    A value is checked when it is a path string (a file, or a folder holding a DICOM series) or a list of them;
    other values (integer or multi-hot classification labels) are skipped.

    Args:
        items: the cases, e.g. from :func:`load_datalist`.
        keys: the entries to check in each case.
        allow_missing_keys: if False, a case lacking one of ``keys`` raises ``ValueError``.

    Raises:
        FileNotFoundError: naming the first missing path, its case (index and image) and how many are missing.
        ValueError: a case lacking a key when ``allow_missing_keys`` is False.
    """
    if isinstance(keys, str):
        keys = (keys,)
    missing: list[tuple[int, str, str]] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise TypeError(f"items[{index}] must be a dict, got a {type(item).__name__}.")
        for key in keys:
            if key not in item:
                if not allow_missing_keys:
                    raise ValueError(f"case {index} ({item.get('image', '?')}) has no '{key}' entry.")
                continue
            value = item[key]
            paths = value if isinstance(value, (list, tuple)) else [value]
            for p in paths:
                if isinstance(p, (str, os.PathLike)) and not os.path.exists(p):
                    missing.append((index, key, os.fspath(p)))
    if missing:
        index, key, p = missing[0]
        image = items[index].get("image", "?")
        more = f" ({len(missing)} missing paths in all)" if len(missing) > 1 else ""
        raise FileNotFoundError(
            f"case {index} (image {image}): the '{key}' file {p} does not exist{more}; "
            "check `dataset_dir` / the datalist."
        )


def _paths(items: Sequence[dict[str, Any]], keys: Sequence[str]) -> list[str]:
    """The distinct path strings under ``keys`` of ``items``, in order (other values are skipped)."""
    paths: dict[str, None] = {}
    for item in items:
        for key in keys:
            value = item.get(key)
            for p in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(p, (str, os.PathLike)):
                    paths[os.fspath(p)] = None
    return list(paths)


def _check_readable(paths: Sequence[str | os.PathLike]) -> None:
    """:func:`check_image_file` on every path; one ``ValueError``: the first problem, and how many files have one."""
    problems = []
    for path in paths:
        try:
            check_image_file(path)
        except ValueError as error:
            problems.append((os.fspath(path), error))
    if problems:
        path, error = problems[0]
        if len(problems) == 1:
            raise error
        others = ", ".join(p for p, _ in problems[1:4]) + (", ..." if len(problems) > 4 else "")
        raise ValueError(f"{error} {len(problems)} images in all are broken; the others: {others}.") from error


def check_image_files(items: Sequence[dict[str, Any]], keys: Sequence[str] | str = ("image", "label")) -> None:
    """Check that every image a datalist names exists and is whole, before any training time is spent.

    :func:`check_files_exist`, then :func:`medkd_ext.data.imagefiles.check_image_file` on each path (NIfTI headers
    and lengths, PNG/JPEG end markers, DICOM series slices: headers and file ends are read, not the images).

    Args:
        items: the cases, e.g. from :func:`load_datalist`.
        keys: the entries to check in each case; values that are not paths (class labels) are skipped.

    Raises:
        FileNotFoundError: a path does not exist (as :func:`check_files_exist`).
        ValueError: a broken image, named with what is wrong and what to do (and how many others are broken).
    """
    keys = (keys,) if isinstance(keys, str) else tuple(keys)
    check_files_exist(items, keys)
    _check_readable(_paths(items, keys))


def list_images(folder: str | os.PathLike, spatial_dims: int | None = None) -> list[str]:
    """The images of an inference folder, found by :func:`medkd_ext.runtime.find_images` (3D: image files and
    DICOM series folders; ``spatial_dims=2``: image files and single-frame DICOM files, multi-slice series refused),
    sorted, as strings; every image is checked to be whole (:func:`medkd_ext.data.imagefiles.check_image_file`)
    before any is processed.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: no image is found (the message lists what the folder holds), ``folder`` is a file that is not
            an image, (2D) a multi-slice DICOM series is given, or an image is broken.
    """
    if not Path(folder).exists():
        raise FileNotFoundError(
            f"images {folder} do not exist: give an image file or a folder of images (`input_dir` of the "
            "classification bundles, `dataset_dir`, or the cases as `dataset#data`)."
        )
    found = find_images(folder, spatial_dims)
    _check_readable(found)
    return found


def log_splits(splits: Mapping[str, Sequence[Any]], **more: Sequence[Any]) -> dict[str, int]:
    """Log and return the number of cases of each split (``name -> cases``; a list of lists counts per entry).

    Bundles call it in ``initialize`` with the splits they build (``"$medkd_ext.data.log_splits(@splits)"``): the
    counts tell the user what the datalist gave, and building the splits there checks every file and label before
    any stage trains.

    Args:
        splits: split name -> list of cases, or a list of such lists (several source datasets).
        more: further splits by name (e.g. ``test=@test_items``).
    """
    counts: dict[str, int] = {}
    for name, cases in {**dict(splits), **more}.items():
        if cases and all(isinstance(c, (list, tuple)) for c in cases):
            counts.update({f"{name}[{i}]": len(c) for i, c in enumerate(cases)})
        else:
            counts[name] = len(cases)
    logger.info("cases per split: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    return counts


def class_names(
    datalist: str | os.PathLike, num_classes: int, class_columns: Sequence[str] | None = None
) -> list[str]:
    """The names of the classes, for reports and inference outputs.

    From ``class_columns`` when given (a multi-label CSV names its classes by its columns), else from the
    ``"labels"`` entry of an MSD-style ``dataset.json`` (``{"0": name, ...}``); ``"0", "1", ...`` otherwise (a
    multi-class CSV, or an entry that is missing or has another length).
    """
    if class_columns:
        names = [str(c) for c in class_columns]
        if len(names) != int(num_classes):
            raise ValueError(f"class_columns names {len(names)} classes but num_classes is {num_classes}.")
        return names
    names = [str(i) for i in range(int(num_classes))]
    path = Path(datalist)
    if path.suffix.lower() != ".json" or not path.is_file():
        return names
    try:
        labels = json.loads(path.read_text(encoding="utf-8")).get("labels")
    except (OSError, ValueError, AttributeError):
        return names
    if isinstance(labels, Mapping) and all(str(i) in labels for i in range(int(num_classes))):
        return [str(labels[str(i)]) for i in range(int(num_classes))]
    return names
