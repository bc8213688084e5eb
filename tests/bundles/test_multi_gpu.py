"""Every bundle's ``train.json`` under ``torchrun --nproc_per_node 2`` with ``configs/multi_gpu_train.json`` on CPU
(gloo), as a user runs it, at a small size: every stage (teachers, joint teacher, student, evaluation) completes,
each checkpoint is written once (by rank 0) and loads, the evaluation covers every test case, and only rank 0 writes
TensorBoard events. RoS-KD with as many teachers as ranks trains one teacher per rank, each exactly as a
single-process run of that teacher stage does.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medkd_ext.data import make_classification_demo, make_pretraining_demo, make_segmentation_demo
from tests.bundles.bundle_checks import REPO, check_properties

TWO_TEACHERS = {
    "num_teachers": 2,
    "teacher_defs": [
        {"_target_": "monai.networks.nets.resnet18", "spatial_dims": "@spatial_dims",
         "n_input_channels": "@in_channels", "num_classes": "@num_classes", "widen_factor": 0.5},
        {"_target_": "medkd_ext.networks.MobileNetV2", "spatial_dims": "@spatial_dims", "in_channels": "@in_channels",
         "out_channels": "@num_classes", "width_mult": 0.5},
    ],
}

BUNDLES = {
    # bundle: (make the data, ids besides the data, checkpoints train.json writes, number of test cases)
    "roskd_classification": (
        lambda root: make_classification_demo(root, seed=0, n_cases=40, n_test=8, size=32),
        ["--batch_size", "8", "--max_epochs", "3", "--teacher_max_epochs", "2", "--warmup_epochs", "1"],
        ["teacher_0.pt", "teacher_1.pt", "model.pt"],
        8,
    ),
    "attention_transfer_densenet": (
        lambda root: (make_classification_demo(root, seed=1, n_cases=32, n_test=8, size=32),
                      make_pretraining_demo(root.with_name("pretrain"), seed=1, n_cases=16, n_test=0, size=32)),
        ["--image_size", "64", "--batch_size", "8", "--max_epochs", "2", "--teacher_max_epochs", "2",
         "--pretrain_max_epochs", "1"],
        ["pretrained.pt", "teacher.pt", "model.pt"],
        8,
    ),
    "joint_teacher_seg": (
        lambda root: make_segmentation_demo(root, seed=0, size=(24, 24, 24), n_target_train=3, n_target_test=3,
                                            n_source=3),
        ["--target_teacher_max_epochs", "1", "--source_teacher_max_epochs", "2", "--joint_max_epochs", "1",
         "--max_epochs", "2", "--val_interval", "1", "--roi_size", "[24, 24, 24]", "--teacher_width", "4",
         "--student_width", "4", "--max_tokens", "64", "--curriculum_warmup", "0", "--curriculum_ramp", "1"],
        ["teacher_target.pt", "teacher_source_0.pt", "teacher_source_1.pt", "joint_teacher.pt", "model.pt"],
        3,
    ),
}


def _configs(bundle: str, extra: list[str], multi_gpu: bool = True) -> str:
    files = [f"bundles/{bundle}/configs/train.json", *extra]
    if multi_gpu:
        files.append(f"bundles/{bundle}/configs/multi_gpu_train.json")
    return str(files)


def _torchrun(configs: str, ids: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "monai.bundle", "run", "--config_file", configs, *ids]
    return subprocess.run(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                          errors="replace", timeout=900)


@pytest.mark.slow
@pytest.mark.parametrize("bundle", list(BUNDLES))
def test_train_json_runs_every_stage_on_two_processes(bundle, tmp_path):
    make_data, ids, checkpoints, n_test = BUNDLES[bundle]
    data, models, out = tmp_path / "data", tmp_path / "models", tmp_path / "eval"
    make_data(data)
    extra = []
    if bundle == "roskd_classification":  # as many teachers as ranks: one teacher per rank
        (tmp_path / "two_teachers.json").write_text(json.dumps(TWO_TEACHERS))
        extra = [str(tmp_path / "two_teachers.json")]
    common = ["--dataset_dir", str(data), "--num_threads", "1", *ids]
    if bundle == "attention_transfer_densenet":
        common += ["--pretrain_dataset_dir", str(tmp_path / "pretrain")]
    result = _torchrun(_configs(bundle, extra), [*common, "--ckpt_dir", str(models), "--output_dir", str(out)])
    assert result.returncode == 0, result.stdout[-4000:]
    assert "process group: 2 processes, backend gloo" in result.stdout

    for name in checkpoints:  # written once, complete, with its record and completion
        state = torch.load(models / name, map_location="cpu", weights_only=True)
        assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), name
        assert (models / name).with_suffix(".json").is_file()
        assert (models / "state" / (Path(name).stem + ".done.json")).is_file()
    assert not list(models.rglob("*.tmp")) and not (models / "state" / "model.pt").exists()

    # the evaluation gathered every rank's test cases; rank 0 wrote it
    if bundle == "joint_teacher_seg":
        rows = (out / "metrics.csv").read_text().splitlines()
        assert sum(1 for r in rows if r.split(",")[0] not in ("case", "mean", "nan_count")) == n_test
    else:
        assert len(json.loads((out / "predictions.json").read_text())) == n_test
        assert json.loads((out / "metrics.json").read_text())

    # TensorBoard events of each stage come from one process (rank 0, or the rank that trained the stage alone)
    for stage_dir in [d for d in out.iterdir() if d.is_dir() and d.name != "masks"]:
        pids = {re.match(r"events\.out\.tfevents\.\d+\.[^.]+\.(\d+)\.", p.name).group(1)
                for p in stage_dir.glob("events.out.tfevents.*")}
        assert len(pids) == 1, (stage_dir.name, pids)

    if bundle == "roskd_classification":
        assert "rank 0 trains this stage alone" in result.stdout and "rank 1 trains this stage alone" in result.stdout
        # teacher 1, trained alone by rank 1, equals the same stage run as one process
        single = tmp_path / "single"
        stage = subprocess.run(
            [sys.executable, "-m", "monai.bundle", "run", "--config_file",
             _configs(bundle, [*extra, f"bundles/{bundle}/configs/train_teacher.json"], multi_gpu=False),
             "--teacher_index", "1", *common, "--ckpt_dir", str(single / "models"), "--output_dir", str(single)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
            timeout=600,
        )
        assert stage.returncode == 0, stage.stdout[-3000:]
        alone = torch.load(single / "models" / "teacher_1.pt", weights_only=True)
        ranked = torch.load(models / "teacher_1.pt", weights_only=True)
        assert alone.keys() == ranked.keys()
        for key in alone:
            torch.testing.assert_close(ranked[key], alone[key], atol=0, rtol=0, msg=key)

    # the overlay keeps every property MONAI's TrainProperties checks (started without torchrun: one
    # process; last, since building the workflow opens TensorBoard writers)
    overrides = {key[2:]: json.loads(value) for key, value in zip(ids[::2], ids[1::2], strict=True)}
    overrides.update({"dataset_dir": str(data), "ckpt_dir": str(models), "output_dir": str(out), "num_threads": 1})
    assert check_properties(REPO / "bundles" / bundle, ["train.json", *extra, "multi_gpu_train.json"], "train",
                            overrides) == []
