from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.data import MetaTensor

from medkd_ext.handlers import (
    ClassificationReportHandler,
    ProbabilityWriter,
    SegmentationReportHandler,
)
from medkd_ext.metrics import ClassificationMetric, classification_report

PROBS = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
LABELS = torch.tensor([0, 1, 1, 1])


def _evaluator(batches):
    """An engine whose output per iteration is a decollated batch, as MONAI evaluators produce."""
    return Engine(lambda e, b: [{"pred": p, "label": y, "image": img} for p, y, img in zip(*b)])


def _batches():
    images = [MetaTensor(torch.zeros(1, 2, 2), meta={"filename_or_obj": f"/data/case_{i}.png"}) for i in range(4)]
    return [(PROBS[:2], LABELS[:2], images[:2]), (PROBS[2:], LABELS[2:], images[2:])]


def test_classification_metric_equals_the_report_entry():
    engine = _evaluator(_batches())
    ClassificationMetric("f1_macro").attach(engine, "f1")
    ClassificationMetric("auc_macro").attach(engine, "auc")
    engine.run(_batches(), max_epochs=1)
    expected = classification_report(PROBS.numpy(), LABELS.numpy())
    assert engine.state.metrics["f1"] == pytest.approx(expected["f1_macro"])
    # AUC of class 1 scores 0.1, 0.8, 0.4, 0.7 against 0, 1, 1, 1: every positive ranks above the negative
    assert engine.state.metrics["auc"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no key 'nope'"):
        bad = _evaluator(_batches())
        ClassificationMetric("nope").attach(bad, "x")
        bad.run(_batches(), max_epochs=1)


def test_classification_report_handler_writes_json_csv_markdown(tmp_path):
    engine = _evaluator(_batches())
    handler = ClassificationReportHandler(tmp_path / "eval", class_names=["normal", "finding"])
    handler.attach(engine)
    engine.run(_batches(), max_epochs=1)
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["num_samples"] == 4 and saved["accuracy"] == pytest.approx(0.75)
    assert set(saved["per_class"]) == {"normal", "finding"}
    assert "finding" in (tmp_path / "eval" / "metrics.md").read_text()
    assert (tmp_path / "eval" / "metrics.csv").stat().st_size > 0


def test_probability_writer_names_each_source_file(tmp_path):
    engine = _evaluator(_batches())
    ProbabilityWriter(tmp_path / "out" / "probs.json", class_names=["normal", "finding"]).attach(engine)
    engine.run(_batches(), max_epochs=1)
    entries = json.loads((tmp_path / "out" / "probs.json").read_text())
    assert [e["image"] for e in entries] == [f"/data/case_{i}.png" for i in range(4)]
    assert entries[1]["probabilities"] == pytest.approx({"normal": 0.2, "finding": 0.8})


def test_segmentation_report_handler_uses_label_spacing(tmp_path):
    label = torch.zeros(1, 12, 12, 12)
    label[:, 3:7, 3:7, 3:7] = 1
    pred = torch.roll(label, shifts=2, dims=1)  # shifted by 2 voxels along the first axis
    meta = {"filename_or_obj": "/data/case_0.nii.gz", "pixdim": torch.tensor([1.0, 1.5, 1.0, 1.0, 1, 1, 1, 1])}
    label = MetaTensor(label, meta=meta)
    engine = Engine(lambda e, b: [{"pred": pred, "label": label}])
    handler = SegmentationReportHandler(tmp_path, num_classes=2)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    row = handler.report.rows()[0]
    assert row["case"] == "/data/case_0.nii.gz"
    assert row["DSC"] == pytest.approx(2 * 32 / 128)
    assert row["HD95"] == pytest.approx(3.0)  # 2 voxels of 1.5 mm
    text = (tmp_path / "metrics.md").read_text()
    assert "HD95" in text and np.isfinite(row["IoU"])


def _table_script():
    path = Path(__file__).resolve().parents[2] / "scripts" / "joint_teacher_table.py"
    spec = importlib.util.spec_from_file_location("joint_teacher_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_segmentation_report_counts_a_missed_case_and_the_table_reads_the_counts(tmp_path):
    """A case with nothing predicted scores 0 and HD95 the diagonal of its 12 x 12 x 12 grid of 1.5 x 1 x 1 mm voxels
    (sqrt(18^2 + 12^2 + 12^2) mm); metrics.csv and metrics.md count it, and the joint-teacher table script reads the
    counts."""
    label = torch.zeros(1, 12, 12, 12)
    label[:, 3:7, 3:7, 3:7] = 1
    pred = torch.roll(label, shifts=2, dims=1)  # HD95 2 voxels of 1.5 mm
    meta = {"pixdim": torch.tensor([1.0, 1.5, 1.0, 1.0, 1, 1, 1, 1])}
    labels = [MetaTensor(label, meta={**meta, "filename_or_obj": f"/data/case_{i}.nii.gz"}) for i in range(2)]
    outputs = [{"pred": pred, "label": labels[0]}, {"pred": torch.zeros_like(pred), "label": labels[1]}]
    engine = Engine(lambda e, b: outputs)
    handler = SegmentationReportHandler(tmp_path, num_classes=2)
    handler.attach(engine)
    engine.run([0], max_epochs=1)
    diagonal = math.sqrt(18**2 + 12**2 + 12**2)
    missed = handler.report.rows()[1]
    assert missed["empty"] == "prediction" and missed["HD95"] == pytest.approx(diagonal)
    assert (missed["IoU"], missed["DSC"], missed["Recall"], missed["Precision"]) == (0.0, 0.0, 0.0, 0.0)
    with open(tmp_path / "metrics.csv") as f:
        mean = next(r for r in csv.DictReader(f) if r["case"] == "mean" and r["class"] == "all")
    assert float(mean["HD95"]) == pytest.approx((3.0 + diagonal) / 2)
    assert float(mean["Precision"]) == pytest.approx((1 / 2 + 0) / 2)  # overlap 32 of 64 predicted voxels
    counts = {"n_cases": 2, "n_empty_prediction": 1, "n_empty_reference": 0, "n_both_empty": 0}
    assert {n: int(mean[n]) for n in counts} == counts
    assert "| 2 | 1 | 0 | 0 |" in (tmp_path / "metrics.md").read_text()

    table = _table_script()
    means = table._means(tmp_path / "metrics.csv")
    assert means["HD95"] == pytest.approx((3.0 + diagonal) / 2)
    assert {n: means[n] for n in counts} == counts
    text = table.format_table([{name: means for name in table.ROWS}] * 3)
    assert text.splitlines()[0].endswith("| HD95 | cases | empty pred. | empty ref. | both empty |")
    assert text.splitlines()[-1].endswith("| 6 | 3 | 0 | 0 |")  # summed over the 3 seeds
