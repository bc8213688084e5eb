"""Evaluation: per-case segmentation reports, classification reports, adversarial attacks (FGSM, PGD)."""

from __future__ import annotations

from .attacks import evaluate_under_attack, fgsm, pgd, transferability
from .classification import (
    ClassificationMetric,
    PredictionCollector,
    binary_auc,
    classification_report,
    report_to_csv,
    report_to_markdown,
)
from .robustness import ATTACKS, robustness_report, robustness_to_markdown
from .segmentation import SEGMENTATION_METRICS, SegmentationReport, segmentation_report

__all__ = [
    "ATTACKS",
    "robustness_report",
    "robustness_to_markdown",
    "ClassificationMetric",
    "PredictionCollector",
    "SEGMENTATION_METRICS",
    "SegmentationReport",
    "binary_auc",
    "classification_report",
    "evaluate_under_attack",
    "fgsm",
    "pgd",
    "report_to_csv",
    "report_to_markdown",
    "segmentation_report",
    "transferability",
]
