"""Classification reports for multi-class and multi-label tasks: accuracy, precision/recall/F1, ROC AUC.

The classification bundles report F1 (RoS-KD, Tables I-II) and AUC with F1 (attention transfer, Tables
III-V; the best model is the one with the highest support-weighted F1 on the validation set).

Conventions (those of scikit-learn's ``classification_report`` and ``roc_auc_score``, so numbers compare):

- precision of a class never predicted, recall of a class with no positive label, and F1 of a class neither
  present nor predicted are 0 and included in the macro means; ``notes`` lists each such case;
- AUC is one-vs-rest per class from the rank statistic (ties count one half); a class whose labels take a
  single value has no AUC: it is ``nan``, left out of ``auc_macro``, and listed in ``notes``;
- ``*_weighted`` means are weighted by support (number of positive labels of each class).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from monai.handlers import from_engine
from scipy.stats import rankdata

from medkd_ext.distributed import gather_objects

__all__ = ["binary_auc", "classification_report", "report_to_csv", "report_to_markdown"]

_ArrayLike = torch.Tensor | np.ndarray | Sequence


def _to_numpy(x: _ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        x = x.as_tensor() if hasattr(x, "as_tensor") else x
        return x.double().numpy() if x.is_floating_point() else x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # pragma: no cover - numpy's own message is kept as the cause
        raise TypeError(f"{name} must be a tensor, array or sequence of numbers, got {type(x)}.") from e


def binary_auc(scores: _ArrayLike, targets: _ArrayLike) -> float:
    """ROC AUC of one binary problem from the Mann-Whitney rank statistic (ties count one half).

    Args:
        scores: ``(N,)`` scores, higher meaning more likely positive.
        targets: ``(N,)`` labels in ``{0, 1}``.

    Returns:
        ``(sum of positive ranks - P(P+1)/2) / (P * Q)`` for ``P`` positives and ``Q`` negatives; ``nan`` when
        either count is 0.
    """
    s = _to_numpy(scores, "scores").astype(np.float64).reshape(-1)
    t = _to_numpy(targets, "targets").reshape(-1)
    if s.shape != t.shape:
        raise ValueError(f"binary_auc: scores and targets must have the same length, got {s.size} and {t.size}.")
    if not np.isin(t, (0, 1)).all():
        raise ValueError(f"binary_auc: targets must be 0 or 1, got values {np.unique(t)[:10].tolist()}.")
    pos = t == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _check_probs(probs: np.ndarray, multi_label: bool) -> None:
    if probs.ndim != 2 or probs.shape[0] == 0:
        raise ValueError(f"probs must have shape (N, C) with N >= 1, got {probs.shape}.")
    if not np.isfinite(probs).all():
        raise ValueError("probs contains NaN or Inf; check the model output.")
    activation = "sigmoid" if multi_label else "softmax"
    if probs.min() < -1e-6 or probs.max() > 1 + 1e-6:
        raise ValueError(
            f"probs must be probabilities in [0, 1] but range over [{probs.min():.4g}, {probs.max():.4g}]; "
            f"these look like logits: apply {activation} first."
        )
    if not multi_label:
        if probs.shape[1] < 2:
            raise ValueError(f"multi-class probs need C >= 2 columns, got {probs.shape[1]}.")
        sums = probs.sum(axis=1)
        if np.abs(sums - 1.0).max() > 1e-2:
            raise ValueError(
                f"multi-class probs must be softmax outputs summing to 1 per row (a row sums to "
                f"{sums[np.argmax(np.abs(sums - 1.0))]:.4g}); apply softmax, or pass multi_label=True for "
                "independent sigmoid outputs."
            )


def _targets(labels: np.ndarray, num_samples: int, num_classes: int, multi_label: bool) -> np.ndarray:
    """Labels -> ``(N, C)`` 0/1 int matrix."""
    if multi_label:
        if labels.shape != (num_samples, num_classes):
            raise ValueError(
                f"multi-label labels must be multi-hot of shape (N, C) = ({num_samples}, {num_classes}), "
                f"got {labels.shape}."
            )
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"multi-label labels must be 0 or 1, got values {np.unique(labels)[:10].tolist()}.")
        return labels.astype(np.int64)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 2:
        if labels.shape != (num_samples, num_classes) or not np.isin(labels, (0, 1)).all():
            raise ValueError(
                f"multi-class labels given as a matrix must be one-hot of shape ({num_samples}, {num_classes}), "
                f"got shape {labels.shape}."
            )
        if not (labels.sum(axis=1) == 1).all():
            raise ValueError(
                "multi-class labels must have exactly one 1 per row; pass multi_label=True for multi-hot labels."
            )
        return labels.astype(np.int64)
    if labels.shape != (num_samples,):
        raise ValueError(f"multi-class labels must have shape (N,) = ({num_samples},), got {labels.shape}.")
    if not np.all(np.equal(np.mod(labels, 1), 0)) or labels.min() < 0 or labels.max() >= num_classes:
        bad = labels[(np.mod(labels, 1) != 0) | (labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"multi-class labels must be integers in [0, {num_classes}), got {np.unique(bad)[:10].tolist()}; "
            "check num_classes / the datalist."
        )
    return np.eye(num_classes, dtype=np.int64)[labels.astype(np.int64)]


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else 0.0


def classification_report(
    probs: _ArrayLike,
    labels: _ArrayLike,
    multi_label: bool = False,
    class_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Accuracy, precision/recall/F1 (per class, macro, weighted) and one-vs-rest ROC AUC.

    Args:
        probs: ``(N, C)`` probabilities: softmax outputs for multi-class (rows sum to 1; the prediction is the
            argmax), sigmoid outputs for multi-label (a class is predicted when ``prob >= threshold``). Logits are
            rejected, since AUC ranks of logits and of probabilities differ.
        labels: multi-class: ``(N,)`` (or ``(N, 1)``) class indices, or ``(N, C)`` one-hot; multi-label:
            ``(N, C)`` multi-hot.
        multi_label: whether every class is an independent binary problem.
        class_names: ``C`` names for the per-class entries; default ``"0", "1", ...``.
        threshold: multi-label decision threshold in ``(0, 1)``.

    Returns:
        A dict with ``task`` (``"multi-class"``/``"multi-label"``), ``num_samples``, ``accuracy`` (multi-label:
        over all N*C decisions; ``exact_match`` is the fraction of samples with every label right),
        ``precision_macro``, ``recall_macro``, ``f1_macro``, ``precision_weighted``, ``recall_weighted``,
        ``f1_weighted``, ``auc_macro`` (``nan`` classes left out), ``per_class`` mapping each name to
        ``{"precision", "recall", "f1", "support", "auc"}``, ``threshold`` (``None`` for multi-class) and
        ``notes`` (list of strings on undefined values).
    """
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"classification_report: threshold must be in (0, 1), got {threshold}.")
    p = _to_numpy(probs, "probs").astype(np.float64)
    _check_probs(p, multi_label)
    n, num_classes = p.shape
    y = _targets(_to_numpy(labels, "labels"), n, num_classes, multi_label)
    if class_names is None:
        names = [str(c) for c in range(num_classes)]
    else:
        names = [str(c) for c in class_names]
        if len(names) != num_classes or len(set(names)) != num_classes:
            raise ValueError(
                f"class_names must be {num_classes} distinct names (one per column of probs), got {list(class_names)}."
            )

    if multi_label:
        pred = (p >= threshold).astype(np.int64)
    else:
        pred = np.eye(num_classes, dtype=np.int64)[p.argmax(axis=1)]

    notes: list[str] = []
    per_class: dict[str, dict[str, float]] = {}
    for c, name in enumerate(names):
        tp = int(((pred[:, c] == 1) & (y[:, c] == 1)).sum())
        fp = int(((pred[:, c] == 1) & (y[:, c] == 0)).sum())
        fn = int(((pred[:, c] == 0) & (y[:, c] == 1)).sum())
        support = int(y[:, c].sum())
        if tp + fp == 0:
            notes.append(f"class '{name}' is never predicted: precision set to 0.")
        if support == 0:
            notes.append(f"class '{name}' has no positive label: recall set to 0.")
        auc = binary_auc(p[:, c], y[:, c])
        if math.isnan(auc):
            notes.append(f"class '{name}': labels take a single value, AUC undefined (nan), left out of auc_macro.")
        per_class[name] = {
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "support": support,
            "auc": auc,
        }

    supports = np.array([per_class[k]["support"] for k in names], dtype=np.float64)
    report: dict[str, Any] = {
        "task": "multi-label" if multi_label else "multi-class",
        "num_samples": n,
        "threshold": float(threshold) if multi_label else None,
        "accuracy": float((pred == y).mean()) if multi_label else float((pred.argmax(1) == y.argmax(1)).mean()),
    }
    if multi_label:
        report["exact_match"] = float((pred == y).all(axis=1).mean())
    for metric in ("precision", "recall", "f1"):
        values = np.array([per_class[k][metric] for k in names])
        report[f"{metric}_macro"] = float(values.mean())
        if supports.sum() > 0:
            report[f"{metric}_weighted"] = float((values * supports).sum() / supports.sum())
        else:
            report[f"{metric}_weighted"] = float("nan")
    if supports.sum() == 0:
        notes.append("no positive label in any class: weighted means undefined (nan).")
    aucs = np.array([per_class[k]["auc"] for k in names])
    report["auc_macro"] = float(np.nanmean(aucs)) if not np.isnan(aucs).all() else float("nan")
    report["per_class"] = per_class
    report["notes"] = notes
    return report


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _table_rows(report: dict[str, Any]) -> list[list[Any]]:
    rows: list[list[Any]] = []
    for name, v in report["per_class"].items():
        rows.append([name, v["precision"], v["recall"], v["f1"], v["support"], v["auc"]])
    total = int(sum(v["support"] for v in report["per_class"].values()))
    rows.append(
        ["macro avg", report["precision_macro"], report["recall_macro"], report["f1_macro"], total, report["auc_macro"]]
    )
    rows.append(
        ["weighted avg", report["precision_weighted"], report["recall_weighted"], report["f1_weighted"], total, None]
    )
    return rows


_COLUMNS = ["class", "precision", "recall", "f1", "support", "auc"]


def report_to_markdown(report: dict[str, Any], path: str | os.PathLike | None = None) -> str:
    """Markdown text of a :func:`classification_report`: a summary line, the per-class table, the notes.

    Args:
        report: the dict returned by :func:`classification_report`.
        path: when given, the text is also written there (parent folders are created).

    Returns:
        The Markdown text.
    """
    summary = f"{report['task']}, {report['num_samples']} samples: accuracy {_fmt(report['accuracy'])}"
    if "exact_match" in report:
        summary += f", exact match {_fmt(report['exact_match'])} (threshold {report['threshold']})"
    text = [summary, "", "| " + " | ".join(_COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in _table_rows(report):
        text.append("| " + " | ".join(_fmt(v) for v in row) + " |")
    if report["notes"]:
        text += ["", "Notes:", ""] + [f"- {note}" for note in report["notes"]]
    markdown = "\n".join(text) + "\n"
    if path is not None:
        _write(path, markdown)
    return markdown


def report_to_csv(report: dict[str, Any], path: str | os.PathLike) -> None:
    """Write a :func:`classification_report` as CSV.

    Columns ``class, precision, recall, f1, support, auc``: one row per class, then ``macro avg`` and
    ``weighted avg`` rows, then an ``accuracy`` row (and, multi-label, an ``exact_match`` row) whose value sits
    in the ``f1`` column as scikit-learn prints it. Parent folders are created.
    """
    rows = _table_rows(report)
    rows.append(["accuracy", None, None, report["accuracy"], report["num_samples"], None])
    if "exact_match" in report:
        rows.append(["exact_match", None, None, report["exact_match"], report["num_samples"], None])
    _make_parent(path)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(_COLUMNS)
        writer.writerows([["" if v is None else v for v in row] for row in rows])


def _make_parent(path: str | os.PathLike) -> None:
    parent = os.path.dirname(os.fspath(path))
    if parent:
        os.makedirs(parent, exist_ok=True)


def _write(path: str | os.PathLike, text: str) -> None:
    _make_parent(path)
    with open(path, "w") as f:
        f.write(text)


_PRED_LABEL = from_engine(["pred", "label"])


def _as_rows(values: Any) -> torch.Tensor:
    """A batch of per-sample tensors (decollated list, or a batched tensor) as a ``(B, ...)`` CPU float tensor."""
    if isinstance(values, (list, tuple)):
        return torch.stack([torch.as_tensor(v).detach().cpu().float() for v in values])
    t = torch.as_tensor(values).detach().cpu().float()
    return t if t.ndim > 1 else t.unsqueeze(1)


class PredictionCollector:
    """Accumulates probabilities and labels of several batches for :func:`classification_report`.

    Under torchrun each rank collects its part of the cases and :meth:`report` (collective: every rank calls it)
    reports on every rank's cases together.
    """

    def __init__(self) -> None:
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def add(self, probs: Any, labels: Any) -> None:
        self.probs.append(_as_rows(probs))
        self.labels.append(_as_rows(labels))

    def report(self, multi_label: bool, class_names: Sequence[str] | None) -> dict[str, Any]:
        local = (torch.cat(self.probs), torch.cat(self.labels)) if self.probs else None
        parts = [part for part in gather_objects(local) if part is not None]
        if not parts:
            raise ValueError("classification report: no prediction was collected; is the evaluator's dataset empty?")
        probs = torch.cat([p for p, _ in parts]).numpy()
        labels = torch.cat([lab for _, lab in parts]).numpy()
        if not multi_label and labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        return classification_report(probs, labels.astype(np.int64), multi_label=multi_label, class_names=class_names)


class ClassificationMetric(Metric):
    """An ignite metric with the value of one entry of ``classification_report`` (e.g. mean AUC, weighted F1).

    Fed probabilities (softmax for multi-class, sigmoid for multi-label) and labels; usable as an evaluator's
    ``key_val_metric`` to choose the best model.

    Args:
        report_key: entry of :func:`medkd_ext.metrics.classification_report`: ``"auc_macro"``, ``"f1_weighted"``,
            ``"f1_macro"``, ``"accuracy"``, ...
        multi_label: whether labels are multi-hot and probabilities sigmoid outputs.
        output_transform: takes ``(probs, labels)`` from the engine output, by default ``pred`` and ``label``.
    """

    def __init__(
        self,
        report_key: str = "auc_macro",
        multi_label: bool = False,
        output_transform: Callable = _PRED_LABEL,
    ) -> None:
        self.report_key = report_key
        self.multi_label = multi_label
        self._collector = PredictionCollector()
        super().__init__(output_transform=output_transform)

    def reset(self) -> None:
        self._collector = PredictionCollector()

    def update(self, output: Sequence[Any]) -> None:
        probs, labels = output
        self._collector.add(probs, labels)

    def compute(self) -> float:
        report = self._collector.report(self.multi_label, None)
        if self.report_key not in report:
            raise ValueError(f"ClassificationMetric: report has no key '{self.report_key}'; keys are {list(report)}.")
        value = float(report[self.report_key])
        return 0.0 if math.isnan(value) else value
