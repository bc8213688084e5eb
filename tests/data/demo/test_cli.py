from __future__ import annotations

import functools
import subprocess
import sys

import medkd_ext.data.demo
from medkd_ext.data.demo import cli, main, make_segmentation_demo


def test_classification_written_then_reused(tmp_path, capsys):
    assert main(["--task", "classification", "--out", str(tmp_path), "--seed", "1", "--spatial-dims", "2"]) == 0
    out = capsys.readouterr().out
    assert "written" in out and str(tmp_path / "dataset.json") in out
    main(["--task", "classification", "--out", str(tmp_path), "--seed", "1"])
    assert "reused" in capsys.readouterr().out


def test_segmentation_lists_every_domain(tmp_path, capsys, monkeypatch):
    small = functools.partial(make_segmentation_demo, size=12, n_target_train=1, n_target_test=1, n_source=1)
    monkeypatch.setattr(cli, "make_segmentation_demo", small)
    assert main(["--task", "segmentation", "--out", str(tmp_path), "--seed", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"segmentation demo (written) in {tmp_path}:"
    assert lines[1:] == [f"  {d}: {tmp_path / d / 'dataset.json'}" for d in ("target", "source_1", "source_2")]


def test_run_as_module_without_runpy_warning():
    command = [sys.executable, "-W", "error::RuntimeWarning", "-m", "medkd_ext.data.demo", "--help"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: python -m medkd_ext.data.demo")
    assert medkd_ext.data.demo.__doc__.split("\n")[0] in " ".join(result.stdout.split())
