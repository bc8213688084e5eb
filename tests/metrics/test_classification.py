from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from monai.metrics import compute_roc_auc

from medkd_ext.metrics import binary_auc, classification_report, report_to_csv, report_to_markdown

# predictions: 0, 1, 1, 2, 2, 0, 1
PROBS = torch.tensor(
    [
        [0.7, 0.2, 0.1],
        [0.2, 0.5, 0.3],
        [0.1, 0.8, 0.1],
        [0.3, 0.3, 0.4],
        [0.1, 0.2, 0.7],
        [0.6, 0.3, 0.1],
        [0.2, 0.7, 0.1],
    ]
)
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 1])


def test_multiclass_values_match_hand_computation():
    r = classification_report(PROBS, LABELS, class_names=["a", "b", "c"])
    assert r["task"] == "multi-class" and r["num_samples"] == 7 and r["threshold"] is None
    assert r["accuracy"] == pytest.approx(4 / 7)
    a, b, c = (r["per_class"][k] for k in "abc")
    # a: tp 1 fp 1 fn 1; b: tp 2 fp 1 fn 1; c: tp 1 fp 1 fn 1
    assert (a["precision"], a["recall"], a["f1"], a["support"]) == pytest.approx((0.5, 0.5, 0.5, 2))
    assert (b["precision"], b["recall"], b["f1"], b["support"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3, 3))
    assert c["f1"] == pytest.approx(0.5)
    assert r["f1_macro"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    assert r["f1_weighted"] == pytest.approx((2 * 0.5 + 3 * 2 / 3 + 2 * 0.5) / 7)
    assert r["recall_weighted"] == pytest.approx(r["accuracy"])  # holds for single-label tasks
    # class a: positives 0.7, 0.2 vs negatives 0.1 0.3 0.1 0.6 0.2 -> (5 + 2.5) / 10
    assert a["auc"] == pytest.approx(0.75)
    monai_aucs = compute_roc_auc(PROBS, torch.nn.functional.one_hot(LABELS, 3), average="none")
    assert [r["per_class"][k]["auc"] for k in "abc"] == pytest.approx(monai_aucs)
    assert r["auc_macro"] == pytest.approx(np.mean(monai_aucs))
    assert r["notes"] == []


def test_one_hot_and_column_labels_equal_index_labels():
    base = classification_report(PROBS, LABELS)
    assert classification_report(PROBS, torch.nn.functional.one_hot(LABELS, 3)) == base
    assert classification_report(PROBS.numpy(), LABELS[:, None].tolist()) == base


def test_multilabel_threshold_accuracy_and_exact_match():
    probs = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.4], [0.1, 0.8]])
    labels = np.array([[1, 0], [1, 1], [0, 0], [0, 1]])
    r = classification_report(probs, labels, multi_label=True)
    assert r["accuracy"] == pytest.approx(6 / 8) and r["exact_match"] == pytest.approx(0.5)
    assert r["per_class"]["0"]["f1"] == pytest.approx(0.5) and r["per_class"]["1"]["f1"] == pytest.approx(1.0)
    assert r["per_class"]["0"]["auc"] == pytest.approx(0.75) and r["per_class"]["1"]["auc"] == pytest.approx(1.0)
    low = classification_report(probs, labels, multi_label=True, threshold=0.35)
    for k in "01":
        assert low["per_class"][k]["precision"] == pytest.approx(2 / 3)
        assert low["per_class"][k]["recall"] == pytest.approx(1.0)
    assert low["threshold"] == 0.35


def test_single_valued_class_has_nan_auc_excluded_and_noted():
    probs = np.array([[0.9, 0.2, 0.3], [0.4, 0.6, 0.1], [0.6, 0.4, 0.2], [0.1, 0.8, 0.4]])
    labels = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]])
    r = classification_report(probs, labels, multi_label=True, class_names=["x", "y", "z"])
    assert math.isnan(r["per_class"]["z"]["auc"])
    assert r["auc_macro"] == pytest.approx((0.75 + 1.0) / 2)
    assert any("'z'" in n and "AUC undefined" in n for n in r["notes"])
    assert r["per_class"]["z"]["recall"] == 0.0 and any("no positive label" in n for n in r["notes"])


def test_binary_auc_ties_and_agreement_with_monai():
    assert binary_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    assert binary_auc([0.5, 0.5, 0.5], [0, 1, 1]) == pytest.approx(0.5)
    assert math.isnan(binary_auc([0.1, 0.2], [1, 1]))
    gen = torch.Generator().manual_seed(0)
    scores = torch.rand(50, generator=gen).round(decimals=1)  # many ties
    targets = (torch.rand(50, generator=gen) > 0.5).long()
    assert binary_auc(scores, targets) == pytest.approx(compute_roc_auc(scores, targets))


def test_markdown_and_csv(tmp_path):
    r = classification_report(PROBS, LABELS, class_names=["a", "b", "c"])
    text = report_to_markdown(r, tmp_path / "r.md")
    assert (tmp_path / "r.md").read_text() == text
    assert "| b | 0.6667 | 0.6667 | 0.6667 | 3 | " in text
    assert "| weighted avg |" in text and "accuracy 0.5714" in text
    report_to_csv(r, tmp_path / "sub" / "r.csv")
    with open(tmp_path / "sub" / "r.csv") as f:
        rows = {row["class"]: row for row in csv.DictReader(f)}
    assert list(rows) == ["a", "b", "c", "macro avg", "weighted avg", "accuracy"]
    assert float(rows["weighted avg"]["f1"]) == pytest.approx(4 / 7)
    assert float(rows["accuracy"]["f1"]) == pytest.approx(4 / 7)


@pytest.mark.parametrize(
    "probs, labels, kwargs, match",
    [
        (PROBS * 5, LABELS, {}, "look like logits"),
        (PROBS * 0.5, LABELS, {}, "summing to 1"),
        (PROBS, torch.tensor([0, 1, 2, 3, 0, 1, 2]), {}, r"integers in \[0, 3\), got \[3\]"),
        (PROBS, LABELS[:5], {}, "shape"),
        (PROBS, LABELS, {"class_names": ["a", "b"]}, "3 distinct names"),
        (PROBS, torch.ones(7, 3), {"multi_label": True, "threshold": 1.5}, "threshold"),
        (PROBS, torch.ones(7, 2), {"multi_label": True}, r"multi-hot of shape \(N, C\)"),
        (PROBS, torch.full((7, 3), 2), {"multi_label": True}, "0 or 1"),
        (PROBS, torch.ones(7, 3), {}, "exactly one 1 per row"),
    ],
)
def test_bad_inputs_raise_clear_errors(probs, labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        classification_report(probs, labels, **kwargs)
