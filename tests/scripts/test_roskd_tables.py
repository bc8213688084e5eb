"""scripts/roskd_tables.py as a user runs it, at one epoch on a tiny demo: the comparison repeated at two label-noise
rates (teachers retrained on each noisy label set), one Table I and one Table II per rate, the results file merged
with another run's by ``--from_json``, and bad rates refused."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from medkd_ext.data import make_classification_demo

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "roskd_tables.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", timeout=1200)


@pytest.mark.slow
def test_two_noise_rates_give_a_table_each_and_merge(tmp_path):
    make_classification_demo(tmp_path / "data", seed=0, n_cases=40, n_test=8, size=32)
    common = ["--dataset_dir", str(tmp_path / "data"), "--seeds", "1", "--teacher_max_epochs", "1",
              "--max_epochs", "1", "--pgd_steps", "1", "--methods", "student_only", "uniform_mkd", "roskd",
              "--override", "image_size=32", "batch_size=8", "warmup_epochs=0"]
    ran = _run(*common, "--noise_rates", "0", "0.4", "--work_dir", str(tmp_path / "a"))
    assert ran.returncode == 0, ran.stdout[-3000:]
    results = json.loads((tmp_path / "a" / "roskd_tables.json").read_text())
    assert [t["noise_rate"] for t in results["tables"]] == [0.0, 0.4]
    for rate in ("0", "0.4"):
        teachers = tmp_path / "a" / f"noise_{rate}" / "seed_0" / "models"
        assert (teachers / "teacher_0.pt").is_file() and (teachers / "model_roskd.pt").is_file()
        record = json.loads((teachers / "teacher_0.json").read_text())
        assert record["noise_rate"] == float(rate)
    assert "Table I, label noise 0 (fraction of training labels flipped)" in ran.stdout
    assert "Table II, label noise 0.4" in ran.stdout and "| PGD | RoS-KD |" in ran.stdout
    # a second seed at one rate, merged: that rate's table pools two seeds
    second = _run(*common, "--noise_rates", "0.4", "--first_seed", "1", "--work_dir", str(tmp_path / "b"))
    assert second.returncode == 0, second.stdout[-3000:]
    merged = _run("--from_json", str(tmp_path / "a" / "roskd_tables.json"), str(tmp_path / "b" / "roskd_tables.json"),
                  "--methods", "student_only", "uniform_mkd", "roskd")
    assert merged.returncode == 0, merged.stdout[-3000:]
    assert "label noise 0 (fraction of training labels flipped): test split, macro averages, mean +/- std over 1 " \
           "seed(s)" in merged.stdout
    assert "label noise 0.4 (fraction of training labels flipped): test split, macro averages, mean +/- std over 2 " \
           "seed(s)" in merged.stdout


def test_a_noise_rate_outside_0_1_is_refused():
    ran = _run("--noise_rates", "0.2", "1.5", "--seeds", "1")
    assert ran.returncode == 2 and "--noise_rates must lie in [0, 1), got [1.5]" in ran.stdout
