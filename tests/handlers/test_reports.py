from __future__ import annotations

import json

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
