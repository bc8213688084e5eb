"""Datalists and the checks of the images they name, teacher subsets, simulated label noise and class imbalance,
patient splits and demo data."""

from __future__ import annotations

from typing import Any

from .datalist import check_files_exist, check_image_files, class_names, list_images, load_datalist, log_splits
from .imagefiles import IMAGE_SUFFIXES, check_image_file, dicom_files, is_dicom_file, is_image_file
from .loader import PrefetchDataLoader, independent_transform
from .noise import LABEL_NOISE_MODES, apply_label_noise_to_items, inject_label_noise
from .parts import ALL_CASES, datalist_part
from .sampling import overlapping_subsets, patient_split, power_law_counts, power_law_imbalance
from .segmentation import require_cases, segmentation_datalists
from .views import (
    CASE_KEY,
    CROP_KEY,
    VIEW_KEY,
    TeacherCacheDataset,
    data_fingerprint,
    draw_view,
    randomizables,
    seed_randomizables,
    transform_signature,
    view_seed,
)

# The demo package is imported on first use of one of its names: it needs scipy, which nothing else here does.
# (It is also run as python -m medkd_ext.data.demo; its __main__ module is never imported, so runpy does not warn.)
_DEMO_NAMES = (
    "CLASSIFICATION_CLASS_NAMES",
    "CLASSIFICATION_SITES",
    "DEMO_MANIFEST_NAME",
    "PRETRAINING_CLASS_NAMES",
    "SEGMENTATION_DOMAINS",
    "default_demo_root",
    "ensure_classification_demo",
    "ensure_pretraining_demo",
    "ensure_segmentation_demo",
    "make_classification_demo",
    "make_pretraining_demo",
    "make_segmentation_demo",
    "segmentation_demo_dir",
)


def __getattr__(name: str) -> Any:
    if name in _DEMO_NAMES:
        from . import demo

        return getattr(demo, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_DEMO_NAMES))

__all__ = [
    "ALL_CASES",
    "CASE_KEY",
    "CROP_KEY",
    "VIEW_KEY",
    "TeacherCacheDataset",
    "data_fingerprint",
    "independent_transform",
    "draw_view",
    "randomizables",
    "seed_randomizables",
    "transform_signature",
    "view_seed",
    "IMAGE_SUFFIXES",
    "datalist_part",
    "CLASSIFICATION_CLASS_NAMES",
    "CLASSIFICATION_SITES",
    "DEMO_MANIFEST_NAME",
    "LABEL_NOISE_MODES",
    "PRETRAINING_CLASS_NAMES",
    "PrefetchDataLoader",
    "SEGMENTATION_DOMAINS",
    "apply_label_noise_to_items",
    "check_files_exist",
    "check_image_file",
    "check_image_files",
    "class_names",
    "default_demo_root",
    "dicom_files",
    "ensure_classification_demo",
    "ensure_pretraining_demo",
    "ensure_segmentation_demo",
    "inject_label_noise",
    "is_dicom_file",
    "is_image_file",
    "list_images",
    "load_datalist",
    "log_splits",
    "make_classification_demo",
    "make_pretraining_demo",
    "make_segmentation_demo",
    "overlapping_subsets",
    "patient_split",
    "power_law_counts",
    "power_law_imbalance",
    "require_cases",
    "segmentation_datalists",
    "segmentation_demo_dir",
]
