"""scripts/joint_teacher_table.py rotates the target role over the demo's datasets, as the paper does: each domain is
generated first (few training cases, the test cases) with the others as sources, and a run prints one block per
target; own data and --targets are not mixed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "joint_teacher_table.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", timeout=1800)


def test_each_domain_can_be_the_target_with_the_others_as_sources(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import joint_teacher_table as table
    finally:
        sys.path.remove(str(SCRIPT.parent))
    lesions = {}
    for target in ("target", "source_1", "source_2"):
        data = table.demo_with_target(target, tmp_path, size=16, cases=(2, 1, 2))
        first = json.loads(Path(data["target_datalist"]).read_text())
        assert first["domain"] == target and first["role"] == "target" and len(first["test"]) == 1
        sources = [json.loads(Path(p).read_text()) for p in data["source_datalists"]]
        assert sorted(s["domain"] for s in sources) == sorted({"target", "source_1", "source_2"} - {target})
        assert all(s["role"] == "source" and not s["test"] and len(s["training"]) == 2 for s in sources)
        lesions[target] = first["lesion_type"]
    assert lesions == {"target": "metastases", "source_1": "glioma", "source_2": "stroke"}


@pytest.mark.slow
def test_a_rotated_run_prints_a_block_for_its_target(tmp_path):
    # roi_size keeps its default (as in a user's run: the evaluations read it from the records), the demo is 24^3
    tiny = ["target_teacher_max_epochs=1", "source_teacher_max_epochs=1", "joint_max_epochs=1", "max_epochs=1",
            "val_interval=1", "teacher_width=4", "student_width=4", "max_tokens=64", "curriculum_warmup=0",
            "curriculum_ramp=1"]
    args = ["--seeds", "1", "--targets", "source_2", "--out", str(tmp_path / "t"), "--demo_size", "24",
            "--demo_cases", "3", "2", "3"]
    for item in tiny:
        args += ["--override", item]
    ran = _run(*args)
    assert ran.returncode == 0, ran.stdout[-3000:]
    text = (tmp_path / "t" / "table.md").read_text(encoding="utf-8")
    assert text.startswith("Target source_2 (sources: the other domains), test set, mean ± std over 1 seed(s)")
    assert "| student |" in text and "| multi-head |" in text
    models = tmp_path / "t" / "target_source_2" / "seed_0" / "models"
    assert {"model.pt", "joint_teacher.pt", "baseline_specific.pt", "baseline_multihead.pt"} <= {
        p.name for p in models.iterdir()}
    # trained on the rotated demo: source_2 (stroke-like lesions) as the target
    first = json.loads((tmp_path / "t" / "data" / "source_2" / "source_2" / "dataset.json").read_text())
    assert first["role"] == "target" and first["lesion_type"] == "stroke"


def test_targets_are_refused_with_own_data(tmp_path):
    ran = _run("--targets", "source_1", "--override", f"dataset_dir={tmp_path}")
    assert ran.returncode == 2 and "with your own data (dataset_dir)" in ran.stdout


def test_resume_reuses_only_a_finished_seed_with_the_same_overrides(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import joint_teacher_table as table
    finally:
        sys.path.remove(str(SCRIPT.parent))
    seed = tmp_path / "seed_0"
    header = "case,class,IoU,DSC,Recall,Precision,HD95,n_cases,n_empty_prediction,n_empty_reference,n_both_empty\n"
    for i, name in enumerate(table.ROWS):
        report = seed / "table" / name.replace(" ", "_") / "metrics.csv"
        report.parent.mkdir(parents=True)
        rows = f"a.nii.gz,1,0.5,0.6,0.7,0.8,2.0,1,0,0,0\nmean,1,0.5,0.{i + 1},0.7,0.8,2.0,1,0,0,0\n"
        report.write_text(header + rows)
    overrides = {"dataset_dir": "/data/target", "max_epochs": 20}
    assert table.finished_seed(seed, overrides) is None  # reports without the record of their overrides
    (seed / "table" / "overrides.json").write_text(json.dumps(overrides), encoding="utf-8")
    reused = table.finished_seed(seed, overrides)
    assert [reused[name]["DSC"] for name in table.ROWS] == [0.1, 0.2, 0.3, 0.4]
    assert reused["student"]["n_cases"] == 1
    assert table.finished_seed(seed, {**overrides, "max_epochs": 30}) is None
    (seed / "table" / "student" / "metrics.csv").unlink()
    assert table.finished_seed(seed, overrides) is None
