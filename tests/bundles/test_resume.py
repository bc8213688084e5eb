"""Resume after a crash and determinism, for every bundle (issue 14): ``train.json`` killed with SIGKILL in the middle
of a stage's second epoch and rerun with ``--resume true`` reaches the weights of an uninterrupted run, finished
stages are not trained again, and the same seed gives the same metrics and weights run twice. Each run is a subprocess
as a user starts it (``tests/bundles/kill_at.py`` around ``python -m monai.bundle run``), at a small size, one thread.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from medkd_ext.data import make_classification_demo, make_pretraining_demo, make_segmentation_demo
from tests.bundles.bundle_checks import check_resume_after_kill, check_same_seed_same_results, run_bundle


def _classification_data(root: Path, seed: int, n_cases: int) -> None:
    make_classification_demo(root, seed=seed, n_cases=n_cases, n_test=8, size=32)


def _attention_transfer_data(root: Path) -> None:
    _classification_data(root, 1, 32)
    make_pretraining_demo(root.with_name("pretrain"), seed=1, n_cases=16, n_test=0, size=32)


def _segmentation_data(root: Path) -> None:
    make_segmentation_demo(root, seed=0, size=(24, 24, 24), n_target_train=3, n_target_test=2, n_source=3)


BUNDLES = {
    # bundle: (make the data, ids of train.json besides the data, trainers to kill: index -> stage name)
    "roskd_classification": (
        lambda root: _classification_data(root, 0, 40),
        ["--batch_size", "8", "--max_epochs", "3", "--teacher_max_epochs", "2", "--warmup_epochs", "1"],
        {2: "teacher_2", -1: "student"},  # a teacher on its subset; the student with smoothing and precise BN
    ),
    "attention_transfer_densenet": (
        _attention_transfer_data,
        ["--image_size", "64", "--batch_size", "8", "--max_epochs", "3", "--teacher_max_epochs", "2",
         "--pretrain_max_epochs", "2"],
        {1: "teacher", -1: "student"},  # (0 is pretraining) the teacher is reused when present: not when interrupted
    ),
    "joint_teacher_seg": (
        _segmentation_data,
        ["--target_teacher_max_epochs", "1", "--source_teacher_max_epochs", "2", "--joint_max_epochs", "1",
         "--max_epochs", "2", "--roi_size", "[24, 24, 24]", "--teacher_width", "4", "--student_width", "4",
         "--max_tokens", "64", "--curriculum_warmup", "0", "--curriculum_ramp", "1"],
        {1: "source_teacher_0", -1: "student"},  # the domain-adversarial teacher with its two loaders; the student
    ),
}


def _args(bundle: str, data: Path) -> list[str]:
    extra = []
    if bundle == "attention_transfer_densenet":  # a tiny generic pre-training set beside the data
        extra = ["--pretrain_dataset_dir", str(data.with_name("pretrain"))]
    return ["run", "--config_file", f"bundles/{bundle}/configs/train.json", "--dataset_dir", str(data),
            "--device", "cpu", "--num_threads", "1", *BUNDLES[bundle][1], *extra]


@pytest.fixture(scope="module", params=list(BUNDLES))
def uninterrupted(request, tmp_path_factory) -> tuple[str, Path, Path, list[dict]]:
    """A bundle's ``train.json`` run to the end: the bundle, its data, the run's folder and the trainers it ran."""
    bundle = request.param
    root = tmp_path_factory.mktemp(f"{bundle}_uninterrupted")
    data = root / "data"
    BUNDLES[bundle][0](data)
    result, trainers = run_bundle([*_args(bundle, data), "--ckpt_dir", str(root / "models"), "--output_dir",
                                   str(root / "eval")])
    assert result.returncode == 0, result.stdout[-3000:]
    return bundle, data, root, trainers


@pytest.mark.slow
@pytest.mark.parametrize("kill", ["a teacher stage", "the student stage"])
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(uninterrupted, kill, tmp_path):
    """SIGKILL in the middle of the stage's second epoch, then ``--resume true``: finished stages are skipped (their
    files untouched), the interrupted one continues after its last saved epoch (less than one epoch repeated), and
    every weight file equals the uninterrupted run's within 1e-6."""
    bundle, data, root, trainers = uninterrupted
    index = list(BUNDLES[bundle][2])[0 if kill == "a teacher stage" else 1]
    check_resume_after_kill(_args(bundle, data), root / "models", trainers, index, tmp_path)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_metrics_and_weights(uninterrupted, tmp_path):
    bundle, data, root, _ = uninterrupted
    check_same_seed_same_results(_args(bundle, data), root, tmp_path)
