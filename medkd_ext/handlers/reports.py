"""Handlers that collect an evaluator's predictions and write reports: classification metrics, segmentation
metrics and inference probabilities, as JSON, CSV and Markdown."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.handlers import from_engine

from medkd_ext import runtime
from medkd_ext.distributed import gather_objects, is_main_process
from medkd_ext.metrics.classification import (
    ClassificationMetric,
    PredictionCollector,
    report_to_csv,
    report_to_markdown,
)
from medkd_ext.metrics.segmentation import SegmentationReport
from medkd_ext.runtime import source_filename

__all__ = [
    "ClassificationMetric",
    "ClassificationReportHandler",
    "SegmentationReportHandler",
    "ProbabilityWriter",
    "source_filename",
]

logger = logging.getLogger(__name__)

_PRED_LABEL = from_engine(["pred", "label"])


class ClassificationReportHandler:
    """Collects probabilities and labels over an evaluator run and writes the classification report.

    At ``COMPLETED``, writes ``<prefix>.json``, ``<prefix>.csv`` and ``<prefix>.md`` under ``output_dir`` and keeps
    the report in ``.report``.

    Args:
        output_dir: folder of the report files (created if needed).
        multi_label: multi-hot labels and sigmoid probabilities.
        class_names: names of the classes for the per-class rows.
        prefix: file name stem.
        output_transform: takes ``(probs, labels)`` from the engine output.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        multi_label: bool = False,
        class_names: Sequence[str] | None = None,
        prefix: str = "metrics",
        output_transform: Callable = _PRED_LABEL,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.multi_label = multi_label
        self.class_names = list(class_names) if class_names is not None else None
        self.prefix = prefix
        self.output_transform = output_transform
        self.report: dict[str, Any] | None = None
        self._collector = PredictionCollector()

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _reset(self, engine: Engine) -> None:
        self._collector = PredictionCollector()

    def _collect(self, engine: Engine) -> None:
        probs, labels = self.output_transform(engine.state.output)
        self._collector.add(probs, labels)

    def _write(self, engine: Engine) -> None:
        self.report = self._collector.report(self.multi_label, self.class_names)  # every rank's cases, on every rank
        if not is_main_process():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        stem = self.output_dir / self.prefix
        (stem.with_suffix(".json")).write_text(json.dumps(self.report, indent=2, default=float))
        report_to_csv(self.report, stem.with_suffix(".csv"))
        report_to_markdown(self.report, stem.with_suffix(".md"))
        logger.info("classification report written to %s.{json,csv,md}", stem)


class SegmentationReportHandler:
    """Per-case IoU, DSC, Recall, Precision and HD95 over an evaluator run, written as CSV and Markdown.

    Predictions and labels are taken from the engine output (decollated per case; label maps ``(1, *spatial)``
    or one-hot ``(C, *spatial)``), case ids and voxel spacing from the label's metadata, so HD95 is in mm.
    Every case counts (:class:`~medkd_ext.metrics.segmentation.SegmentationReport`): an empty prediction or an
    empty reference scores IoU, DSC and Precision 0 and HD95 the image diagonal in mm (Recall 0 for an empty
    prediction, undefined and left out for an empty reference), both empty score 1 and HD95 0; the mean rows
    give per class ``n_cases``, ``n_empty_prediction``, ``n_empty_reference`` and ``n_both_empty``.

    Args:
        output_dir: folder of ``<prefix>.csv`` and ``<prefix>.md``.
        num_classes: number of classes including background.
        include_background: report the background class too.
        prefix: file name stem.
        output_transform: takes ``(preds, labels)`` from the engine output.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        num_classes: int = 2,
        include_background: bool = False,
        prefix: str = "metrics",
        output_transform: Callable = _PRED_LABEL,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.report = SegmentationReport(num_classes=num_classes, include_background=include_background)
        self.prefix = prefix
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, lambda e: self.report.reset())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Engine) -> None:
        preds, labels = self.output_transform(engine.state.output)
        if isinstance(preds, torch.Tensor):
            preds, labels = list(preds), list(labels)
        for pred, label in zip(preds, labels, strict=True):
            spacing = None
            meta = getattr(label, "meta", None)
            if isinstance(meta, dict) and "pixdim" in meta:
                spatial_dims = pred.ndim - 1
                spacing = [float(s) for s in torch.as_tensor(meta["pixdim"]).flatten()[1 : spatial_dims + 1]]
            self.report.update(pred.unsqueeze(0), label.unsqueeze(0), case_id=source_filename(label), spacing=spacing)

    def _write(self, engine: Engine) -> None:
        self.report.gather()  # every rank's cases, on every rank
        if not is_main_process():
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.report.to_csv(self.output_dir / f"{self.prefix}.csv")
        self.report.to_markdown(self.output_dir / f"{self.prefix}.md")
        logger.info("segmentation report written to %s", self.output_dir / f"{self.prefix}.{{csv,md}}")


class ProbabilityWriter(runtime.ProbabilityWriter):
    """Inference: collects each case's class probabilities and writes them as a JSON list at ``COMPLETED``
    (:class:`medkd_ext.runtime.ProbabilityWriter`, which exported bundles use); in a distributed run the cases of
    every rank are gathered and rank 0 writes them.

    Args:
        output_file: JSON file to write (its folder is created).
        class_names: names of the classes; default ``"0", "1", ...``.
        output_transform: takes ``(probs, images)`` from the engine output.
    """

    def all_entries(self) -> list[dict[str, Any]] | None:
        entries = [entry for part in gather_objects(self.entries) for entry in part]  # every rank's cases
        return entries if is_main_process() else None
