"""scripts/at_tables.py: the paper's Table IV columns on the demo, every network from the pre-trained weights: transfer
learning (DenseNet-121 all layers and last 34 layers, DenseNet-40) and attention transfer from the pre-trained network
(cross-domain) and from the in-domain teacher of the related site, to DenseNet-121 and DenseNet-40 students."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from medkd_ext.data import make_classification_demo, make_pretraining_demo

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_seven_columns_from_one_pretrained_network_and_one_teacher(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import at_tables
    finally:
        sys.path.remove(str(REPO / "scripts"))
    make_classification_demo(tmp_path / "data", seed=1, n_cases=32, n_test=8, size=32)
    make_pretraining_demo(tmp_path / "pretrain_data", seed=1, n_cases=16, n_test=0, size=32)
    overrides = [f"dataset_dir={tmp_path / 'data'}", f"pretrain_dataset_dir={tmp_path / 'pretrain_data'}",
                 "image_size=64", "batch_size=8", "pretrain_max_epochs=1", "num_threads=1"]
    args = ["--seeds", "1", "--out-dir", str(tmp_path / "out"), "--max-epochs", "1", "--teacher-max-epochs", "1",
            "--device", "cpu"]
    for item in overrides:
        args += ["--override", item]
    assert at_tables.main(args) == 0
    out = tmp_path / "out"
    pretrained = torch.load(out / "models" / "pretrained.pt", weights_only=True)
    assert pretrained["class_layers.out.weight"].shape[0] == 8  # the generic demo's classes
    teacher_record = json.loads((out / "models" / "teacher.json").read_text())
    assert teacher_record["teacher_datalist"] == str(tmp_path / "data_related" / "dataset.json")
    assert teacher_record["pretrained_ckpt"] == str(out / "models" / "pretrained.pt")
    assert not (out / "models" / "state" / "pretrained.pt").exists()  # finished, not "interrupted"
    table = (out / "table_iv.md").read_text(encoding="utf-8").splitlines()
    header = table[2].split(" | ")
    assert len(header) == 8 and "last 34 layers" in table[2] and "Teacher generic" in table[2]
    tp = [float(c.rstrip("m |")) for c in table[4].split(" | ")[1:]]
    assert tp[1] < tp[0] and tp[2] < tp[0] and tp[3] == tp[0] and tp[4] == tp[2]  # last 34 layers: fewer
    results = json.loads((out / "results.json").read_text())
    assert set(results["scores"]) == {c[0] for c in at_tables.COLUMNS}
    # the cross-domain column distilled from the pre-trained network with its 8 classes
    record = json.loads((out / "seed0" / "at_generic_40" / "model.json").read_text())
    assert record["student_net"] == "medkd_ext.networks.DenseNet40"
