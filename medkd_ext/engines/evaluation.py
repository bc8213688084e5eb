"""Evaluation of a segmentation network on several datasets, with a report per dataset."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset, DataLoader
from monai.engines import SupervisedEvaluator
from monai.inferers import Inferer
from torch import nn

from medkd_ext.handlers.reports import SegmentationReportHandler

__all__ = ["evaluate_segmentation"]

logger = logging.getLogger(__name__)


def evaluate_segmentation(
    network: nn.Module,
    datasets: Mapping[str, Sequence[dict[str, Any]]],
    transform: Callable,
    inferer: Inferer,
    postprocessing: Callable,
    output_dir: str | os.PathLike,
    num_classes: int = 2,
    device: str | torch.device = "cpu",
    amp: bool = False,
) -> dict[str, list[dict[str, Any]]]:
    """Run ``network`` on every dataset and write ``<name>_metrics.csv``/``.md`` (per case) and ``metrics.md``.

    Each dataset gets one ``SupervisedEvaluator`` pass with a :class:`SegmentationReportHandler` (IoU, DSC,
    Recall, Precision, HD95 in mm per case and their means); ``metrics.md`` and ``metrics.csv`` summarise the
    means of every dataset, one row per dataset and class.

    Args:
        network: the trained network (put in ``eval()``).
        datasets: name -> list of ``{"image", "label"}`` cases; empty datasets are skipped with a warning.
        transform: the deterministic preprocessing.
        inferer: e.g. a ``SlidingWindowInferer``.
        postprocessing: post-transforms producing one-hot ``pred`` and ``label`` (``Activationsd``, ``AsDiscreted``).
        output_dir: folder of the reports.
        num_classes: classes including background.
        device: device of the evaluation.
        amp: autocast on CUDA.

    Returns:
        name -> mean rows of that dataset's report.
    """
    output_dir = Path(output_dir)
    summary: dict[str, list[dict[str, Any]]] = {}
    for name, cases in datasets.items():
        if not cases:
            logger.warning("evaluate_segmentation: dataset '%s' has no case; skipped.", name)
            continue
        loader = DataLoader(CacheDataset(list(cases), transform=transform, cache_rate=1.0), batch_size=1)
        report = SegmentationReportHandler(output_dir, num_classes=num_classes, prefix=f"{name}_metrics")
        evaluator = SupervisedEvaluator(
            device=device,
            val_data_loader=loader,
            network=network,
            inferer=inferer,
            postprocessing=postprocessing,
            val_handlers=[report],
            amp=amp,
        )
        evaluator.run()
        summary[name] = report.report.means()
    rows = [{"dataset": name, **row} for name, means in summary.items() for row in means]
    if rows:
        columns = ["dataset", "class", "cases", "IoU", "DSC", "Recall", "Precision", "HD95"]
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "metrics.md").write_text("\n".join(lines) + "\n")
        csv_lines = [",".join(columns)] + [",".join(_fmt(r.get(c)) for c in columns) for r in rows]
        (output_dir / "metrics.csv").write_text("\n".join(csv_lines) + "\n")
        logger.info("segmentation metrics of %s written to %s", list(summary), output_dir / "metrics.md")
    return summary


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)
