from __future__ import annotations

import json

import pytest

from medkd_ext.engines import locate_bundle, run_stage, run_stages


def _write_stage(config_dir, name, tag):
    config = {
        "log": "unset",
        "source": "none",
        "run": [f"$open(@log, 'a').write('{tag}:' + str(@source) + '\\n')"],
    }
    (config_dir / name).write_text(json.dumps(config))


@pytest.fixture
def config_dir(tmp_path):
    d = tmp_path / "configs"
    d.mkdir()
    (d / "metadata.json").write_text("{}")
    _write_stage(d, "a.json", "a")
    _write_stage(d, "b.json", "b")
    (d / "overlay.json").write_text(json.dumps({"source": "overlaid"}))
    return d


def test_stages_run_in_order_with_common_and_own_overrides(config_dir, tmp_path):
    log = tmp_path / "log.txt"
    times = run_stages(
        config_dir,
        ["a.json", {"config": "b.json", "overrides": {"source": 1}}, {"config": "b.json", "overrides": {"source": 2}}],
        overrides={"log": str(log)},
    )
    assert log.read_text().splitlines() == ["a:none", "b:1", "b:2"]
    assert list(times) == ["a.json", "b.json source=1", "b.json source=2"]


def test_overlays_and_skipping(config_dir, tmp_path):
    log = tmp_path / "log.txt"
    done = tmp_path / "teacher.pt"
    done.write_text("x")
    times = run_stages(
        config_dir, ["a.json", "b.json"], {"log": str(log)}, skip_if_exists={"a.json": done},
        overlays=[config_dir / "overlay.json"],
    )
    assert log.read_text().splitlines() == ["b:overlaid"]
    assert times["a.json"] == 0.0


def test_missing_config_is_named(config_dir):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        run_stage(config_dir / "nope.json")


def test_locate_bundle(tmp_path, monkeypatch):
    bundle = tmp_path / "bundles" / "demo_bundle"
    (bundle / "configs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert locate_bundle("demo_bundle") == "bundles/demo_bundle"
    monkeypatch.chdir(bundle)
    assert locate_bundle("demo_bundle") == "."
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        locate_bundle("no_such_bundle")
