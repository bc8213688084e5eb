"""Per-case segmentation reports: IoU, DSC, recall, precision and HD95, built on ``monai.metrics``.

The joint-teacher bundle (Ceausescu et al., Table 2) reports IoU, DSC, Recall, Precision and HD95 per
dataset. ``SegmentationReport`` accumulates one row per (case, class) so that an evaluator handler or a
script can write the table as CSV and Markdown; ``segmentation_report`` is the one-shot form.

Empty masks: a metric that is undefined for a case is reported as ``nan`` and left out of the means
(``nanmean``); the means say how many cases were left out. With an empty label, IoU, DSC and recall are
undefined; with an empty prediction, precision is; HD95 is undefined when either mask is empty (MONAI
returns ``inf`` or ``nan`` there).
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import (
    compute_confusion_matrix_metric,
    compute_dice,
    compute_hausdorff_distance,
    compute_iou,
    get_confusion_matrix,
)
from monai.networks.utils import one_hot

__all__ = ["SEGMENTATION_METRICS", "SegmentationReport", "segmentation_report"]

SEGMENTATION_METRICS: tuple[str, ...] = ("IoU", "DSC", "Recall", "Precision", "HD95")

SpacingLike = float | Sequence[float] | Sequence[Sequence[float]] | None


def _to_one_hot(x: torch.Tensor, num_classes: int, name: str) -> torch.Tensor:
    """``(B, 1, *spatial)`` label indices or ``(B, num_classes, *spatial)`` one-hot -> binary one-hot float."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, 1, *spatial) or (B, C, *spatial), got {type(x)}.")
    if x.ndim < 3:
        raise ValueError(
            f"{name} must be batched and channel-first, (B, 1, *spatial) or (B, {num_classes}, *spatial), "
            f"got shape {tuple(x.shape)}."
        )
    x = x.as_tensor() if hasattr(x, "as_tensor") else x
    if x.shape[1] == 1:
        if x.is_floating_point() and not torch.equal(x, torch.round(x)):
            raise ValueError(
                f"{name} has one channel, so it is read as a label-index map, but it holds non-integer values; "
                "discretise it first (e.g. AsDiscrete(argmax=True) or AsDiscrete(threshold=0.5))."
            )
        bad = (x < 0) | (x >= num_classes)
        if bool(bad.any()):
            values = torch.unique(x[bad]).tolist()[:10]
            raise ValueError(
                f"{name} holds label values {values} outside [0, num_classes={num_classes}); "
                "set num_classes to the number of classes including background, or remap the labels."
            )
        return one_hot(x.long(), num_classes=num_classes, dim=1, dtype=torch.float32)
    if x.shape[1] != num_classes:
        raise ValueError(
            f"{name} has {x.shape[1]} channels; expected 1 (label indices) or num_classes={num_classes} (one-hot)."
        )
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError(
            f"{name} is read as one-hot ({num_classes} channels) but is not binary; discretise probabilities or "
            f"logits first (e.g. AsDiscrete(argmax=True, to_onehot={num_classes}))."
        )
    return x.float()


def _spacing_per_case(spacing: SpacingLike, batch_size: int, spatial_dims: int) -> list[tuple[float, ...] | None]:
    """Normalise ``spacing`` to one tuple of ``spatial_dims`` positive floats (or ``None``) per case."""
    if spacing is None:
        return [None] * batch_size
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().tolist()
    elif isinstance(spacing, np.ndarray):
        spacing = spacing.tolist()
    if isinstance(spacing, (int, float)):
        per_case = [tuple([float(spacing)] * spatial_dims)] * batch_size
    elif isinstance(spacing, Sequence) and len(spacing) > 0 and all(isinstance(s, (int, float)) for s in spacing):
        if len(spacing) != spatial_dims:
            raise ValueError(
                f"spacing {list(spacing)} has {len(spacing)} entries but the images have {spatial_dims} spatial dims; "
                "give one value per spatial dim, or one such sequence per case."
            )
        per_case = [tuple(float(s) for s in spacing)] * batch_size
    elif isinstance(spacing, Sequence) and all(isinstance(s, (Sequence, np.ndarray, torch.Tensor)) for s in spacing):
        if len(spacing) != batch_size:
            raise ValueError(f"spacing gives {len(spacing)} per-case entries but the batch has {batch_size} cases.")
        per_case = [_spacing_per_case(s, 1, spatial_dims)[0] for s in spacing]
    else:
        raise ValueError(
            f"spacing must be None, a number, one value per spatial dim or one such sequence per case, got {spacing!r}."
        )
    for s in per_case:
        if s is not None and not all(math.isfinite(v) and v > 0 for v in s):
            raise ValueError(f"spacing must be positive and finite (mm per voxel), got {s}.")
    return per_case


def _case_ids_from_meta(x: torch.Tensor, batch_size: int) -> list[str] | None:
    meta = getattr(x, "meta", None)
    if not isinstance(meta, dict):
        return None
    name = meta.get("filename_or_obj")
    if isinstance(name, (str, os.PathLike)):
        names = [name] * batch_size if batch_size == 1 else None
    elif isinstance(name, Sequence) and len(name) == batch_size:
        names = list(name)
    else:
        names = None
    if names is None or not all(isinstance(n, (str, os.PathLike)) and str(n) for n in names):
        return None
    return [str(n) for n in names]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


class SegmentationReport:
    """Streaming per-case segmentation report: IoU, DSC, Recall, Precision and HD95 per (case, class).

    Inputs to :meth:`update` are batched, binarised and channel-first, each one of

    - a label-index map ``(B, 1, *spatial)`` with integer values in ``[0, num_classes)``, or
    - a one-hot (or multi-hot, for overlapping regions) map ``(B, num_classes, *spatial)`` of zeros and ones;

    ``pred`` and ``label`` may use different forms. 2D and 3D both work. Metrics are computed with
    ``monai.metrics`` (``compute_iou``, ``compute_dice``, ``get_confusion_matrix`` + ``"sensitivity"`` /
    ``"precision"``, ``compute_hausdorff_distance(percentile=95)``, symmetric, Euclidean).

    Empty masks give ``nan`` for the undefined metrics (see the module docstring); :meth:`means` averages with
    ``nanmean`` and reports, per metric, how many rows were left out.

    Args:
        num_classes: number of classes including background (``>= 2``).
        include_background: whether class 0 gets rows too.

    Example::

        report = SegmentationReport(num_classes=2)
        report.update(pred, label, case_id="case_001", spacing=(0.8, 0.8, 2.5))
        report.to_csv("eval/metrics.csv")
        print(report.to_markdown("eval/metrics.md"))
    """

    def __init__(self, num_classes: int = 2, include_background: bool = False) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(
                f"SegmentationReport: num_classes must be an int >= 2 (classes including background), "
                f"got {num_classes!r}."
            )
        self.num_classes = num_classes
        self.include_background = bool(include_background)
        self._rows: list[dict[str, Any]] = []
        self._cases_seen = 0

    @property
    def classes(self) -> list[int]:
        """Class indices that get rows."""
        return list(range(0 if self.include_background else 1, self.num_classes))

    def reset(self) -> None:
        """Forget every row."""
        self._rows = []
        self._cases_seen = 0

    def update(
        self,
        pred: torch.Tensor,
        label: torch.Tensor,
        case_id: str | Sequence[str] | None = None,
        spacing: SpacingLike = None,
    ) -> list[dict[str, Any]]:
        """Add the rows of a batch of cases.

        Args:
            pred: binarised prediction, ``(B, 1, *spatial)`` indices or ``(B, num_classes, *spatial)`` one-hot.
            label: ground truth in either form, same batch and spatial shape as ``pred``.
            case_id: one id per case (a string when ``B == 1``). When omitted, the file names in the label's (or
                the prediction's) MetaTensor ``meta["filename_or_obj"]`` are used, else ``"case_<n>"``.
            spacing: voxel size in mm, making HD95 a distance in mm (else in voxels): a number (isotropic), one
                value per spatial dim, or one such sequence per case.

        Returns:
            The rows added, one per (case, class).
        """
        y_pred = _to_one_hot(pred, self.num_classes, "pred")
        y = _to_one_hot(label, self.num_classes, "label")
        if y_pred.shape != y.shape:
            raise ValueError(
                f"pred and label must have the same batch and spatial shape, got {tuple(pred.shape)} and "
                f"{tuple(label.shape)}."
            )
        y = y.to(y_pred.device)
        batch_size, spatial_dims = y.shape[0], y.ndim - 2
        ids = self._case_ids(case_id, batch_size, label, pred)
        self._cases_seen += batch_size
        spacings = _spacing_per_case(spacing, batch_size, spatial_dims)

        iou = compute_iou(y_pred, y, include_background=self.include_background, ignore_empty=True)
        dsc = compute_dice(y_pred, y, include_background=self.include_background, ignore_empty=True)
        confusion = get_confusion_matrix(y_pred, y, include_background=self.include_background)
        recall = compute_confusion_matrix_metric("sensitivity", confusion)
        precision = compute_confusion_matrix_metric("precision", confusion)
        with warnings.catch_warnings():
            # empty masks are expected here; they become nan and are counted by means()
            warnings.filterwarnings("ignore", message=".* is all 0, this may result in nan/inf distance")
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            hd95 = torch.stack(
                [
                    compute_hausdorff_distance(
                        y_pred[b : b + 1],
                        y[b : b + 1],
                        include_background=self.include_background,
                        percentile=95,
                        spacing=None if spacings[b] is None else [list(spacings[b])],
                    )[0]
                    for b in range(batch_size)
                ]
            )
        hd95 = torch.where(torch.isfinite(hd95), hd95, torch.full_like(hd95, float("nan")))
        # HD95 is undefined when either mask is empty, whatever MONAI returns for that class
        either_empty = (y.flatten(2).sum(-1) == 0) | (y_pred.flatten(2).sum(-1) == 0)
        if not self.include_background:
            either_empty = either_empty[:, 1:]
        hd95 = torch.where(either_empty.to(hd95.device), torch.full_like(hd95, float("nan")), hd95)

        values = {
            "IoU": iou,
            "DSC": dsc,
            "Recall": recall,
            "Precision": precision,
            "HD95": hd95,
        }
        values = {k: v.detach().double().cpu() for k, v in values.items()}
        added = []
        for b in range(batch_size):
            for j, c in enumerate(self.classes):
                row: dict[str, Any] = {"case": ids[b], "class": c}
                row.update({m: float(values[m][b, j]) for m in SEGMENTATION_METRICS})
                added.append(row)
        self._rows.extend(added)
        return added

    def _case_ids(
        self, case_id: str | Sequence[str] | None, batch_size: int, label: torch.Tensor, pred: torch.Tensor
    ) -> list[str]:
        if case_id is None:
            ids = _case_ids_from_meta(label, batch_size) or _case_ids_from_meta(pred, batch_size)
            if ids is not None:
                return ids
            return [f"case_{self._cases_seen + b}" for b in range(batch_size)]
        if isinstance(case_id, (str, os.PathLike)):
            ids = [str(case_id)]
        else:
            ids = [str(c) for c in case_id]
        if len(ids) != batch_size:
            raise ValueError(f"case_id gives {len(ids)} ids for a batch of {batch_size} cases; give one id per case.")
        return ids

    def rows(self) -> list[dict[str, Any]]:
        """Per-case rows ``{"case", "class", "IoU", "DSC", "Recall", "Precision", "HD95"}`` in update order."""
        return [dict(r) for r in self._rows]

    def means(self) -> list[dict[str, Any]]:
        """Means over cases, one row per class and a last row ``class="all"`` pooling every (case, class) row.

        Each row holds ``"class"``, ``"cases"`` (number of rows averaged), the ``nanmean`` of every metric
        (``nan`` when no row defines it) and ``"<metric>_nan"``: how many rows were ``nan`` and left out.
        """
        groups: list[tuple[int | str, list[dict[str, Any]]]] = [
            (c, [r for r in self._rows if r["class"] == c]) for c in self.classes
        ]
        groups.append(("all", self._rows))
        out = []
        for name, rows in groups:
            summary: dict[str, Any] = {"class": name, "cases": len(rows)}
            for m in SEGMENTATION_METRICS:
                vals = np.array([r[m] for r in rows], dtype=np.float64)
                valid = vals[~np.isnan(vals)]
                summary[m] = float(valid.mean()) if valid.size else float("nan")
                summary[f"{m}_nan"] = int(vals.size - valid.size)
            out.append(summary)
        return out

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the per-case rows, then per class a ``case="mean"`` row and a ``case="nan_count"`` row.

        Columns: ``case, class, IoU, DSC, Recall, Precision, HD95``. Parent folders are created.
        """
        header = ["case", "class", *SEGMENTATION_METRICS]
        lines: list[list[Any]] = [[r["case"], r["class"], *(r[m] for m in SEGMENTATION_METRICS)] for r in self._rows]
        for s in self.means():
            lines.append(["mean", s["class"], *(s[m] for m in SEGMENTATION_METRICS)])
            lines.append(["nan_count", s["class"], *(s[f"{m}_nan"] for m in SEGMENTATION_METRICS)])
        _make_parent(path)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(lines)

    def to_markdown(self, path: str | os.PathLike | None = None) -> str:
        """Markdown tables: per-case rows, then means with ``(k nan)`` where k rows were left out.

        Args:
            path: when given, the text is also written there (parent folders are created).

        Returns:
            The Markdown text.
        """
        header = ["case", "class", *SEGMENTATION_METRICS]
        text = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self._rows:
            text.append("| " + " | ".join(_fmt(r[k]) for k in header) + " |")
        text += ["", "Means over cases (nan excluded; (k nan) = rows left out):", ""]
        mean_header = ["class", "cases", *SEGMENTATION_METRICS]
        text += ["| " + " | ".join(mean_header) + " |", "|" + "---|" * len(mean_header)]
        for s in self.means():
            cells = [str(s["class"]), str(s["cases"])]
            for m in SEGMENTATION_METRICS:
                cells.append(_fmt(s[m]) + (f" ({s[f'{m}_nan']} nan)" if s[f"{m}_nan"] else ""))
            text.append("| " + " | ".join(cells) + " |")
        markdown = "\n".join(text) + "\n"
        if path is not None:
            _make_parent(path)
            with open(path, "w") as f:
                f.write(markdown)
        return markdown


def _make_parent(path: str | os.PathLike) -> None:
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)


def segmentation_report(
    preds: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int = 2,
    include_background: bool = False,
    spacing: SpacingLike = None,
    case_ids: Sequence[str] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Per-case IoU, DSC, Recall, Precision and HD95 of a batch, and their means.

    Args:
        preds: binarised predictions, ``(B, 1, *spatial)`` label indices or ``(B, num_classes, *spatial)`` one-hot.
        labels: ground truth in either form, same batch and spatial shape.
        num_classes: number of classes including background.
        include_background: whether class 0 gets rows too.
        spacing: voxel size in mm (a number, one value per spatial dim, or one such sequence per case); HD95 is
            in mm when given, in voxels otherwise.
        case_ids: one id per case; by default the MetaTensor file names, else ``case_0, case_1, ...``.

    Returns:
        ``{"rows": SegmentationReport.rows(), "means": SegmentationReport.means()}``; undefined values are
        ``nan`` and left out of the means, which count them (see :class:`SegmentationReport`).
    """
    report = SegmentationReport(num_classes=num_classes, include_background=include_background)
    report.update(preds, labels, case_id=case_ids, spacing=spacing)
    return {"rows": report.rows(), "means": report.means()}
