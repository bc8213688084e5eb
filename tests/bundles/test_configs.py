"""The bundles' configs side by side: one vocabulary, one layout, no copies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bundles.bundle_checks import REPO

BUNDLES = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/train.json"))
COMMON_IDS = (
    "bundle_root", "dataset_dir", "test_split", "ckpt_dir", "ckpt_file", "output_dir", "device", "num_threads", "seed",
    "max_epochs", "batch_size", "learning_rate", "val_interval", "network_def", "stages", "stage_name", "stage_ckpt",
)


def _config(bundle: Path, name: str) -> dict:
    return json.loads((bundle / "configs" / name).read_text())


STUDENT_WITH_METHOD = "$['train_student.json'] + medkd_ext.engines.kd_study.method_overlays(@distill_method)"
"""The student stage's overlays of the classification bundles: train_student.json, then the KD-study method's."""


def _stage_files(config: str | list[str]) -> list[str]:
    """A stage's overlay files as written in train.json (the KD-study method's overlay left out)."""
    if config == STUDENT_WITH_METHOD:
        return ["train_student.json"]
    return config if isinstance(config, list) else [config]


def test_three_bundles():
    assert [b.name for b in BUNDLES] == ["attention_transfer_densenet", "joint_teacher_seg", "roskd_classification"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_one_vocabulary_and_one_layout(bundle):
    train = _config(bundle, "train.json")
    assert [k for k in COMMON_IDS if k not in train] == []
    # train.json runs its stages (after checks that refuse bad settings before any stage trains); each stage is an
    # overlay, the last one the evaluation on the test split
    assert train["run"][-1] == "$medkd_ext.engines.run_stages(@stages, @bundle_root + '/configs')"
    assert all("check_" in step for step in train["run"][:-1]), train["run"]
    assert _stage_files(train["stages"][-2]["config"]) == ["train_student.json"]
    assert train["stages"][-1]["config"] == "evaluate.json"
    assert "$medkd_ext.engines.set_num_threads(@num_threads)" in train["initialize"]
    # evaluate.json is an overlay on validate#, as in the model zoo
    evaluate = _config(bundle, "evaluate.json")
    assert "imports" not in evaluate and any(k.startswith("validate#") for k in evaluate)
    assert evaluate["run"] == ["$@validate#evaluator.run()"]
    # every overlay is small: it holds what differs, nothing of the base workflow is copied
    for overlay in (bundle / "configs").rglob("*.json"):
        if overlay.name not in ("train.json", "inference.json", "metadata.json"):
            assert "imports" not in json.loads(overlay.read_text()), overlay
    # TensorBoard events of each stage in a subfolder named after the stage
    tensorboard = [h for h in train["train"]["handlers"] if h["_target_"] == "TensorBoardStatsHandler"]
    assert [h["log_dir"] for h in tensorboard] == ["$@output_dir + '/' + @stage_name"]


def test_config_size_and_no_copied_blocks():
    """At most 2,000 lines of config JSON in all, and no block of 8 identical lines in two configs of a bundle."""
    files = [f for b in BUNDLES for f in sorted((b / "configs").rglob("*.json"))]
    assert sum(len(f.read_text().splitlines()) for f in files) <= 2000
    for bundle in BUNDLES:
        seen: dict[tuple[str, ...], str] = {}
        for f in sorted((bundle / "configs").rglob("*.json")):
            lines = [line.strip() for line in f.read_text().splitlines()]
            blocks = {tuple(lines[i : i + 8]) for i in range(len(lines) - 7)}
            for block in blocks:
                assert seen.setdefault(block, f.name) == f.name, f"{bundle.name}: {f.name} repeats {seen[block]}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_the_teacher_cache_is_one_id_and_reaches_the_student_only(bundle):
    """``teacher_cache_views`` (default 0: off) wraps the training dataset in views for the stage that distils from
    frozen teachers (the student) and the trainer reads the cache there; every other training stage trains on the
    plain, freely augmented dataset."""
    from monai.bundle import ConfigParser

    from medkd_ext.engines import Stage, stage_config

    train = _config(bundle, "train.json")
    assert train["teacher_cache_views"] == 0 and train["train"]["dataloader"]["dataset"] == "@train#views"
    assert train["train"]["trainer"]["teacher_cache"] == "@train#teacher_cache"
    for entry in train["stages"]:
        stage = Stage(name="s", config=_stage_files(entry["config"]))
        merged = ConfigParser(stage_config(train, stage, bundle / "configs"))
        views = merged.get("train#views")
        trainer = merged.get("train#trainer")
        if "train_student.json" in stage.config or "distill/init.json" in stage.config:  # the stages that distil
            assert views.startswith("$medkd_ext.engines.teacher_views(@train#dataset, @teacher_cache_views")
            assert trainer["teacher_cache"] == "@train#teacher_cache"
        elif "evaluate.json" not in stage.config:
            assert views == "@train#dataset", stage.config
            assert "teacher_cache" not in trainer, stage.config
