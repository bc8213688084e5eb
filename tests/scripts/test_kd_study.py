"""Tests of scripts/kd_study.py: the settings each table needs, the imbalanced data sets it derives (the study's power
law, the test split unchanged), its argument checks, and a one-epoch study on a tiny demo as a user runs it: every
table and the transfer matrix written (Markdown and CSV), a rerun resuming from the runs it recorded (nothing redone,
a new method trained alone and the matrix remade), and a run with other settings refused with the file named."""

from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from medkd_ext.data import load_datalist
from medkd_ext.data.demo.classification import make_classification_demo
from medkd_ext.data.sampling import power_law_counts
from medkd_ext.engines.kd_study import KD_METHODS

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "kd_study.py"


def _module():
    spec = importlib.util.spec_from_file_location("kd_study_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kd_study = _module()


def test_every_method_of_the_study_is_a_row():
    assert set(kd_study.NAMES) == {"baseline", *KD_METHODS} and next(iter(kd_study.NAMES)) == "baseline"
    assert kd_study.parse_args([]).methods == list(kd_study.NAMES)


def test_settings_of_each_table():
    names = lambda tables, rates=(0, 0.2), gammas=(1,): [  # noqa: E731
        s["name"] for s in kd_study.settings_for(list(tables), list(rates), list(gammas))
    ]
    assert names(["III"]) == ["clean"]
    assert names(["transfer"]) == ["clean"]
    assert names(["V"]) == ["clean", "noise_0.2"]  # rate 0 is the clean setting, trained once
    assert names(["V"], rates=(0.4,)) == ["noise_0.4"]
    assert names(["VI"], gammas=(0.2, 2)) == ["imbalance_0.2", "imbalance_2"]
    assert names(["III", "V", "VI", "transfer"]) == ["clean", "noise_0.2", "imbalance_1"]
    noisy = kd_study.settings_for(["V"], [0.6], [])[0]
    assert noisy["noise_rate"] == 0.6 and noisy["gamma"] is None


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kd_study_demo")
    make_classification_demo(root, seed=0, n_cases=48, n_test=8, size=32)
    return root


def test_imbalanced_datalist_follows_the_power_law_and_keeps_the_test_split(tiny_demo, tmp_path):
    datalist = tiny_demo / "dataset.json"
    sizes = [0] * 4
    for item in load_datalist(datalist, "training"):
        sizes[int(item["label"])] += 1
    largest, smallest = kd_study.default_counts(datalist, 4)
    assert largest == min(sizes) and smallest == max(1, round(largest / 20))

    out = kd_study.imbalanced_datalist(datalist, "test", 0.6, (8, 2), tmp_path / "imb" / "dataset.json")
    kept = load_datalist(out, "training")
    counts = [sum(int(i["label"]) == c for i in kept) for c in range(4)]
    assert counts == power_law_counts(4, 0.6, 8, 2)
    assert counts[0] == 8 and counts[-1] == 2
    assert load_datalist(out, "test") == load_datalist(datalist, "test")
    assert all(Path(i["image"]).is_absolute() and Path(i["image"]).is_file() for i in kept)
    # the same gamma gives the same cases (the draw does not depend on the study's seed)
    again = kd_study.imbalanced_datalist(datalist, "test", 0.6, (8, 2), tmp_path / "again" / "dataset.json")
    assert load_datalist(again, "training") == kept


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--seeds", "0"], "--seeds and --workers"),
        (["--noise_rates", "1.5"], "noise rates"),
        (["--gammas", "0"], "gammas"),
        (["--imbalance_counts", "2", "5"], "LARGEST >= SMALLEST"),
        (["--methods", "kd"], "invalid choice"),
    ],
)
def test_bad_arguments_stop_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as error:
        kd_study.parse_args(argv)
    assert error.value.code != 0 and message in capsys.readouterr().err


def _study(work: Path, demo: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(SCRIPT), "--work_dir", str(work), "--seeds", "1", "--max_epochs", "1",
        "--teacher_max_epochs", "1", "--noise_rates", "0", "0.4", "--gammas", "1", "--device", "cpu",
        "--pgd_steps", "2", "--override", "image_size=32", "hinton_teacher=0", "network_def#widen_factor=0.25",
        "batch_size=8", f"dataset_dir={json.dumps(str(demo))}", *extra,
    ]
    return subprocess.run(command, cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=900)


@pytest.mark.slow
def test_a_study_writes_the_tables_resumes_and_refuses_other_settings(tiny_demo, tmp_path):
    work = tmp_path / "study"
    first = _study(work, tiny_demo, "--methods", "baseline", "hinton", "dml")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    markdown = (work / "kd_study.md").read_text()
    for title in ("Table III", "Table V", "Table VI", "Fig. 1", "sigma = 0.4", "gamma = 1"):
        assert title in markdown, title
    assert markdown in first.stdout
    rows = list(csv.DictReader(open(work / "kd_study.csv")))
    runs = {(r["setting"], r["method"]) for r in rows}
    settings = ("clean", "noise_0.4", "imbalance_1")
    assert runs == {(s, m) for s in settings for m in ("teacher", "baseline", "hinton", "dml")}
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    matrix = list(csv.DictReader(open(work / "kd_study_transfer.csv")))
    models = {"teacher", "baseline", "hinton", "dml"}  # the diagonal too (white-box)
    assert {(r["source"], r["target"]) for r in matrix} == {(s, t) for s in models for t in models}
    for r in matrix:
        assert 0 <= int(r["fooled"]) <= int(r["both_correct"]) <= 8
    # the imbalanced setting trained on the power-law subset; the noisy one on noisy labels with its own teacher
    imbalanced = load_datalist(work / "data" / "imbalance_1" / "dataset.json", "training")
    assert len(imbalanced) == sum(power_law_counts(4, 1.0, *kd_study.default_counts(tiny_demo / "dataset.json", 4)))
    assert (work / "noise_0.4" / "seed_0" / "teacher" / "models" / "teacher_full_0.pt").is_file()

    # rerun: nothing is redone; with a new method only its runs and the transfer matrix are
    again = _study(work, tiny_demo, "--methods", "baseline", "hinton", "dml")
    assert again.returncode == 0 and "kd_study: 0 run(s) to do" in again.stdout
    more = _study(work, tiny_demo, "--methods", "baseline", "hinton", "dml", "at", "--tables", "III", "transfer")
    assert more.returncode == 0, more.stdout[-3000:] + more.stderr[-5000:]
    assert "kd_study: 2 run(s) to do" in more.stdout
    assert "clean/seed_0/at:" in more.stdout and "clean/seed_0/transfer:" in more.stdout
    assert "| AT |" in (work / "kd_study.md").read_text()

    # other settings in the same work_dir are refused before any run, the file named on the last line
    other = _study(work, tiny_demo, "--methods", "baseline", "--max_epochs", "2")
    assert other.returncode != 0
    last = other.stderr.strip().splitlines()[-1]
    assert "results.json" in last and "overrides" in last and "--restart" in last
