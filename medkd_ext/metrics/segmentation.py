"""Per-case segmentation reports: IoU, DSC, recall, precision and HD95, built on ``monai.metrics``.

The joint-teacher bundle (Ceausescu et al., Table 2) reports IoU, DSC, Recall, Precision and HD95 per
dataset. ``SegmentationReport`` accumulates one row per (case, class) so that an evaluator handler or a
script can write the table as CSV and Markdown; ``segmentation_report`` is the one-shot form.

Empty masks: every case counts. Per (case, class), with the prediction ``P`` and the reference (label) ``R``
of that class:

- ``P`` empty, ``R`` not (a missed structure, ``empty="prediction"``): IoU, DSC, Recall and Precision are 0 and
  HD95 is the image diagonal;
- ``R`` empty, ``P`` not (a false alarm, ``empty="reference"``): IoU, DSC and Precision are 0, HD95 is the image
  diagonal and Recall is undefined (``nan``, left out of the Recall mean and counted in ``Recall_nan``);
- both empty (``empty="both"``): IoU, DSC, Recall and Precision are 1 and HD95 is 0;
- neither empty (``empty="none"``): the ``monai.metrics`` values.

The image diagonal is that of the case's image extent, ``sqrt(sum_i (shape_i * spacing_i)^2)``: in mm when
``spacing`` is given, in voxels otherwise (as HD95 itself); it exceeds every distance between two voxels of the
image, so it bounds the HD95 of any two non-empty masks. A missed structure thus scores the worst value of every
metric instead of leaving the means (where it would improve the mean HD95), and the reports say how many cases
fell in each group (``n_cases``, ``n_empty_prediction``, ``n_empty_reference``, ``n_both_empty``), per class.
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

from medkd_ext.distributed import gather_objects

__all__ = ["SEGMENTATION_COUNTS", "SEGMENTATION_METRICS", "SegmentationReport", "segmentation_report"]

SEGMENTATION_METRICS: tuple[str, ...] = ("IoU", "DSC", "Recall", "Precision", "HD95")
SEGMENTATION_COUNTS: tuple[str, ...] = ("n_cases", "n_empty_prediction", "n_empty_reference", "n_both_empty")
"""The counts of :meth:`SegmentationReport.means`: rows averaged, and those with an empty prediction, an empty
reference, or both empty."""

# the value of a row's "empty" -> the count it adds to
_EMPTY_COUNTS = {"prediction": "n_empty_prediction", "reference": "n_empty_reference", "both": "n_both_empty"}

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


def _image_diagonal(spatial_shape: Sequence[int], spacing: tuple[float, ...] | None) -> float:
    """``sqrt(sum_i (shape_i * spacing_i)^2)``: the diagonal of the image extent, in mm (voxels without spacing)."""
    spacing = spacing if spacing is not None else (1.0,) * len(spatial_shape)
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(spatial_shape, spacing, strict=True)))


def _empty_mask(pred_empty: bool, ref_empty: bool) -> str:
    """Which mask of a (case, class) is empty: ``"none"``, ``"prediction"``, ``"reference"`` or ``"both"``."""
    if pred_empty:
        return "both" if ref_empty else "prediction"
    return "reference" if ref_empty else "none"


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

    Every case counts, empty masks included (per class):

    - empty prediction, non-empty reference: IoU, DSC, Recall and Precision 0, HD95 the image diagonal;
    - non-empty prediction, empty reference: IoU, DSC and Precision 0, HD95 the image diagonal, Recall ``nan``
      (undefined: left out of the Recall mean and counted);
    - both empty: IoU, DSC, Recall and Precision 1, HD95 0.

    The image diagonal is ``sqrt(sum_i (shape_i * spacing_i)^2)`` over the spatial shape of the case, in mm when
    ``spacing`` is given (in voxels otherwise). Each row says which mask was empty (``"empty"``); :meth:`means`
    averages with ``nanmean``, reports per metric how many rows were left out (``"<metric>_nan"``, only Recall
    can have any) and counts the rows of each group (``n_cases``, ``n_empty_prediction``, ``n_empty_reference``,
    ``n_both_empty``).

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

    def gather(self) -> None:
        """Under torchrun, take every rank's rows (in rank order), so that each rank reports on all the cases the ranks
        saw between them. Collective: every rank calls it; a no-op in a single process."""
        parts = gather_objects((self._rows, self._cases_seen))
        if len(parts) > 1:
            self._rows = [row for rows, _ in parts for row in rows]
            self._cases_seen = sum(seen for _, seen in parts)

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
            spacing: voxel size in mm, making HD95 (and the image diagonal given for an empty mask) a distance in
                mm (else in voxels): a number (isotropic), one value per spatial dim, or one such sequence per case.

        Returns:
            The rows added, one per (case, class): ``{"case", "class", "IoU", "DSC", "Recall", "Precision",
            "HD95", "empty"}``, ``"empty"`` one of ``"none"``, ``"prediction"``, ``"reference"``, ``"both"``.
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
            # empty masks are expected here; their HD95 is replaced below
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
        values = {"IoU": iou, "DSC": dsc, "Recall": recall, "Precision": precision, "HD95": hd95}
        values = {k: v.detach().double().cpu() for k, v in values.items()}

        # every case counts: MONAI leaves the metrics of an empty mask nan (or inf), set them by convention
        first = 0 if self.include_background else 1
        pred_empty = (y_pred.flatten(2).sum(-1) == 0)[:, first:].cpu()
        ref_empty = (y.flatten(2).sum(-1) == 0)[:, first:].cpu()
        both, missed, false_alarm = pred_empty & ref_empty, pred_empty & ~ref_empty, ~pred_empty & ref_empty
        one_empty = missed | false_alarm
        diagonal = torch.tensor([_image_diagonal(y.shape[2:], s) for s in spacings], dtype=torch.float64)
        diagonal = diagonal.unsqueeze(1).expand_as(values["HD95"])
        for m in ("IoU", "DSC", "Precision"):
            values[m] = values[m].masked_fill(one_empty, 0.0)
        values["Recall"] = values["Recall"].masked_fill(missed, 0.0).masked_fill(false_alarm, float("nan"))
        for m in ("IoU", "DSC", "Recall", "Precision"):
            values[m] = values[m].masked_fill(both, 1.0)
        values["HD95"] = torch.where(one_empty, diagonal, values["HD95"]).masked_fill(both, 0.0)

        added = []
        for b in range(batch_size):
            for j, c in enumerate(self.classes):
                row: dict[str, Any] = {"case": ids[b], "class": c}
                row.update({m: float(values[m][b, j]) for m in SEGMENTATION_METRICS})
                row["empty"] = _empty_mask(bool(pred_empty[b, j]), bool(ref_empty[b, j]))
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
        """Per-case rows ``{"case", "class", "IoU", "DSC", "Recall", "Precision", "HD95", "empty"}`` in update order.

        ``"empty"`` says which mask of that class was empty: ``"none"``, ``"prediction"``, ``"reference"`` or
        ``"both"`` (the conventions for each are in the class docstring).
        """
        return [dict(r) for r in self._rows]

    def means(self) -> list[dict[str, Any]]:
        """Means over cases, one row per class and a last row ``class="all"`` pooling every (case, class) row.

        Each row holds ``"class"``, the ``nanmean`` of every metric (``nan`` when no row defines it),
        ``"<metric>_nan"`` (how many rows were ``nan`` and left out: only Recall, for an empty reference) and the
        counts of :data:`SEGMENTATION_COUNTS`: ``"n_cases"`` (rows averaged; ``"cases"`` is the same number) and
        how many of them had an empty prediction (``"n_empty_prediction"``), an empty reference
        (``"n_empty_reference"``) or both empty (``"n_both_empty"``). The ``"all"`` row counts (case, class) rows.
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
            summary.update(_counts(rows))
            out.append(summary)
        return out

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the per-case rows, then per class a ``case="mean"`` row and a ``case="nan_count"`` row.

        Columns: ``case, class, IoU, DSC, Recall, Precision, HD95, n_cases, n_empty_prediction, n_empty_reference,
        n_both_empty``. A ``mean`` row's counts are those of :meth:`means`; a case row counts itself (``n_cases``
        1, and 1 in the column of its empty-mask group), so a ``mean`` row's counts are the sums over its class's
        case rows; ``nan_count`` rows leave the count columns blank. Parent folders are created.
        """
        header = ["case", "class", *SEGMENTATION_METRICS, *SEGMENTATION_COUNTS]
        lines: list[list[Any]] = []
        for r in self._rows:
            counts = _counts([r])
            lines.append([r["case"], r["class"], *(r[m] for m in SEGMENTATION_METRICS), *counts.values()])
        for s in self.means():
            means = [s[m] for m in SEGMENTATION_METRICS]
            nans = [s[f"{m}_nan"] for m in SEGMENTATION_METRICS]
            lines.append(["mean", s["class"], *means, *(s[n] for n in SEGMENTATION_COUNTS)])
            lines.append(["nan_count", s["class"], *nans, *[""] * len(SEGMENTATION_COUNTS)])
        _make_parent(path)
        with open(path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(header)
            writer.writerows(lines)

    def to_markdown(self, path: str | os.PathLike | None = None) -> str:
        """Markdown tables: per-case rows with their empty mask, then means with ``(k nan)`` where k rows were left
        out and the counts of :data:`SEGMENTATION_COUNTS`.

        Args:
            path: when given, the text is also written there (parent folders are created).

        Returns:
            The Markdown text.
        """
        header = ["case", "class", *SEGMENTATION_METRICS, "empty"]
        text = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in self._rows:
            text.append("| " + " | ".join(_fmt(r[k]) for k in header) + " |")
        text += [
            "",
            "Means over cases (every case counts: an empty prediction or reference scores 0 and HD95 the image "
            "diagonal, both empty score 1 and HD95 0; Recall is undefined for an empty reference, (k nan) = rows "
            "left out):",
            "",
        ]
        mean_header = ["class", *SEGMENTATION_METRICS, *SEGMENTATION_COUNTS]
        text += ["| " + " | ".join(mean_header) + " |", "|" + "---|" * len(mean_header)]
        for s in self.means():
            cells = [str(s["class"])]
            for m in SEGMENTATION_METRICS:
                cells.append(_fmt(s[m]) + (f" ({s[f'{m}_nan']} nan)" if s[f"{m}_nan"] else ""))
            cells += [str(s[n]) for n in SEGMENTATION_COUNTS]
            text.append("| " + " | ".join(cells) + " |")
        markdown = "\n".join(text) + "\n"
        if path is not None:
            _make_parent(path)
            with open(path, "w") as f:
                f.write(markdown)
        return markdown


def _counts(rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """The counts of :data:`SEGMENTATION_COUNTS` over ``rows``."""
    counts = {n: 0 for n in SEGMENTATION_COUNTS}
    counts["n_cases"] = len(rows)
    for r in rows:
        if r["empty"] in _EMPTY_COUNTS:
            counts[_EMPTY_COUNTS[r["empty"]]] += 1
    return counts


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
        spacing: voxel size in mm (a number, one value per spatial dim, or one such sequence per case); HD95 and
            the image diagonal are in mm when given, in voxels otherwise.
        case_ids: one id per case; by default the MetaTensor file names, else ``case_0, case_1, ...``.

    Returns:
        ``{"rows": SegmentationReport.rows(), "means": SegmentationReport.means()}``. Every case counts: empty
        masks score by the conventions of :class:`SegmentationReport` (an empty prediction or reference 0 and HD95
        the image diagonal, both empty 1 and HD95 0, Recall of an empty reference ``nan`` and left out), and the
        means count the cases of each group.
    """
    report = SegmentationReport(num_classes=num_classes, include_background=include_background)
    report.update(preds, labels, case_id=case_ids, spacing=spacing)
    return {"rows": report.rows(), "means": report.means()}
