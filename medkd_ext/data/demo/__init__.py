"""Synthetic demo datasets, so that every bundle runs out of the box without downloading data.

Three generators, all deterministic from ``seed`` down to the bytes of every file, and idempotent (a finished dataset
is recorded in a manifest and reused untouched; see :mod:`medkd_ext.data.demo.cache`):

- :func:`make_segmentation_demo` (:mod:`medkd_ext.data.demo.segmentation`, for ``bundles/joint_teacher_seg``): 3D
  NIfTI lesion segmentation in several MR-like datasets that differ in lesion type (metastasis-, glioma- and
  stroke-like) and appearance, MSD-style ``dataset.json`` per domain.
- :func:`make_classification_demo` (:mod:`medkd_ext.data.demo.classification`, for the classification bundles):
  radiograph-like 2D PNG or 3D NIfTI images with shape-coded findings, multi-class or multi-label, with
  ``dataset.json`` and ``labels.csv``; ``site="related"`` gives another hospital's dataset of the same findings.
- :func:`make_pretraining_demo` (:mod:`medkd_ext.data.demo.pretraining`, the ImageNet role of the
  attention-transfer bundle): generic colour patterns (textures and objects), 8 classes, for pre-training.

:func:`ensure_segmentation_demo`, :func:`segmentation_demo_dir`, :func:`ensure_classification_demo` and
:func:`ensure_pretraining_demo` generate
them on first use under :func:`default_demo_root`, as the bundle configs do.

Command line (:mod:`medkd_ext.data.demo.cli`)::

    python -m medkd_ext.data.demo --task segmentation --out DIR [--seed S]
    python -m medkd_ext.data.demo --task classification --out DIR [--seed S] [--spatial-dims 2|3] [--multi-label]
        [--site target|related]
    python -m medkd_ext.data.demo --task pretraining --out DIR [--seed S] [--spatial-dims 2|3]
"""

from __future__ import annotations

from .cache import DEMO_MANIFEST_NAME, default_demo_root
from .classification import (
    CLASSIFICATION_CLASS_NAMES,
    CLASSIFICATION_SITES,
    ensure_classification_demo,
    make_classification_demo,
)
from .cli import main
from .pretraining import PRETRAINING_CLASS_NAMES, ensure_pretraining_demo, make_pretraining_demo
from .segmentation import (
    SEGMENTATION_DOMAINS,
    ensure_segmentation_demo,
    make_segmentation_demo,
    segmentation_demo_dir,
)

__all__ = [
    "segmentation_demo_dir",
    "DEMO_MANIFEST_NAME",
    "SEGMENTATION_DOMAINS",
    "CLASSIFICATION_CLASS_NAMES",
    "CLASSIFICATION_SITES",
    "PRETRAINING_CLASS_NAMES",
    "default_demo_root",
    "make_segmentation_demo",
    "make_classification_demo",
    "ensure_segmentation_demo",
    "ensure_classification_demo",
    "make_pretraining_demo",
    "ensure_pretraining_demo",
    "main",
]
