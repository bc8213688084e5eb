from __future__ import annotations

import json
import logging

import pytest
from monai.bundle import ConfigWorkflow

from medkd_ext.engines import (
    Stage,
    as_flag,
    check_writable,
    disabled_stages,
    for_each,
    locate_bundle,
    run_stage,
    run_stages,
    stage_config,
    stage_hint,
)


def _write(path, config):
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def config_dir(tmp_path):
    """A base workflow that runs two stages; each stage logs its name, ``source`` and a nested id."""
    d = tmp_path / "configs"
    d.mkdir()
    (d / "metadata.json").write_text("{}")
    log = tmp_path / "log.txt"
    _write(d / "train.json", {
        "imports": ["$import medkd_ext", "$import medkd_ext.engines"],
        "log": str(log),
        "source": "none",
        "net": {"width": 2, "depth": 3},
        "stage_name": "base",
        "out": str(tmp_path / "out"),
        "stages": [
            {"_target_": "medkd_ext.engines.Stage", "name": "a", "config": "a.json", "outputs": ["$@out + '_a'"]},
            {"_target_": "medkd_ext.engines.for_each", "name": "b", "config": ["a.json", "b.json"], "index_id": "index",
             "count": 2},
        ],
        "run": [f"$medkd_ext.engines.run_stages(@stages, '{d}')"],
    })
    line = "$open(@log, 'a').write(@stage_name + ':' + str(@source) + ':' + str(@net#width) + '\\n')"
    _write(d / "a.json", {"stage_name": "a", "run": [line, "$open(@out + '_a', 'w').write('x')"]})
    _write(d / "b.json", {"index": 0, "stage_name": "$'b' + str(@index)", "+net": {"depth": 4}, "run": [line]})
    return d


def _run(files, **overrides):
    workflow = ConfigWorkflow(config_file=[str(f) for f in files], workflow_type=None, **overrides)
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def test_every_id_of_the_running_workflow_reaches_every_stage(config_dir, tmp_path):
    _run([config_dir / "train.json"], source="cli", **{"net#width": 7})
    assert (tmp_path / "log.txt").read_text().splitlines() == ["a:cli:7", "b0:cli:7", "b1:cli:7"]


def test_a_merged_overlay_reaches_every_stage(config_dir, tmp_path):
    overlay = _write(config_dir / "paper.json", {"source": "paper"})
    _run([config_dir / "train.json", overlay])
    assert (tmp_path / "log.txt").read_text().splitlines() == ["a:paper:2", "b0:paper:2", "b1:paper:2"]


def test_stage_config_merges_overlays_in_order_then_the_stage_ids(config_dir):
    base = {"net": {"width": 5, "depth": 3}, "source": "x"}
    config = stage_config(base, Stage("b1", ["a.json", "b.json"], ids={"index": 1}), config_dir)
    assert config["net"] == {"width": 5, "depth": 4}  # "+net" merges into the base's dict
    assert (config["index"], config["stage_name"], config["source"]) == (1, "$'b' + str(@index)", "x")
    assert base == {"net": {"width": 5, "depth": 3}, "source": "x"}  # the running workflow's config is not changed


def test_skipping_and_outputs(config_dir, tmp_path):
    base = {"log": str(tmp_path / "log.txt"), "source": 0, "net": {"width": 1}, "out": str(tmp_path / "out")}
    done = tmp_path / "out_a"
    done.write_text("x")
    times = run_stages(
        [Stage("a", "a.json", outputs=[str(done)], reuse_outputs="true"), Stage("b", "b.json", enabled="false")],
        config_dir, base_config=base,
    )
    assert times == {"a": 0.0, "b": 0.0} and not (tmp_path / "log.txt").exists()
    with pytest.raises(RuntimeError, match=r"stage 'b0' finished without writing .*never\.pt"):
        run_stages([Stage("b0", "b.json", outputs=[str(tmp_path / "never.pt")])], config_dir, base_config=base)


def test_missing_overlay_is_named(config_dir):
    with pytest.raises(FileNotFoundError, match="stage 'x'.*nope.json"):
        stage_config({}, Stage("x", "nope.json"), config_dir)
    with pytest.raises(FileNotFoundError, match="nope.json"):
        run_stage(config_dir / "nope.json")


def test_stage_hint_names_the_stage_that_writes_a_file():
    stages = [
        Stage("target", "t.json", outputs=["m/t.pt"]),
        for_each("src", ["t.json", "s.json"], "i", 2, ["m/s0.pt", "m/s1.pt"]),
    ]
    hint = stage_hint(stages, "m/./s1.pt")
    assert "stage 'src_1'" in hint and "configs/train.json" in hint
    assert "\"['configs/train.json', 'configs/t.json', 'configs/s.json']\" --i 1" in hint
    assert stage_hint(stages, "elsewhere.pt") == "run configs/train.json first, which writes it"
    hint = stage_hint(stages, "m/t.pt", "bundles/b")
    assert "run bundles/b/configs/train.json" in hint
    assert "\"['bundles/b/configs/train.json', 'bundles/b/configs/t.json']\"" in hint


def test_for_each_and_stage_arguments_are_checked():
    assert [s.ids for s in for_each("t", "t.json", "teacher_index", 3)] == [{"teacher_index": i} for i in range(3)]
    with pytest.raises(ValueError, match="2 outputs for 3 stages"):
        for_each("t", "t.json", "teacher_index", 3, ["a", "b"])
    with pytest.raises(ValueError, match="count must be a non-negative integer"):
        for_each("t", "t.json", "teacher_index", -1)
    with pytest.raises(ValueError, match="enabled must be true or false"):
        Stage("t", "t.json", enabled="maybe")
    with pytest.raises(ValueError, match="config must be a file name"):
        Stage("t", [])


def test_for_each_indices_keep_only_those_stages_with_their_outputs():
    stages = for_each("t", "t.json", "teacher_index", 5, [f"m/t{i}.pt" for i in range(5)], indices=[4])
    assert [(s.name, s.ids, s.outputs) for s in stages] == [("t_4", {"teacher_index": 4}, ["m/t4.pt"])]
    assert for_each("t", "t.json", "teacher_index", 5, indices=[]) == []
    with pytest.raises(ValueError, match=r"indices \[5\] are not stage indices in \[0, 5\)"):
        for_each("t", "t.json", "teacher_index", 5, indices=[5])


def test_disabled_stages_finds_stages_by_name(tmp_path):
    stages = [{"name": "teacher"}, {"name": "student"}, {"name": "evaluate"}]
    config = _write(tmp_path / "train.json", {"stages": stages})
    assert disabled_stages(config, ["student", "evaluate"]) == {"stages#1#enabled": False, "stages#2#enabled": False}
    with pytest.raises(ValueError, match=r"no stage named \['joint'\]; its stages are \['teacher', 'student', 'eval"):
        disabled_stages(config, ["joint"])


def test_as_flag():
    assert as_flag("True") is True and as_flag("false") is False and as_flag(1) is True and as_flag(" no ") is False
    with pytest.raises(ValueError, match="multi_label must be true or false"):
        as_flag("maybe", "multi_label")


def test_run_stages_outside_a_config_needs_a_base_config(config_dir):
    with pytest.raises(RuntimeError, match="base_config"):
        run_stages([Stage("a", "a.json")], config_dir)


def test_locate_bundle(tmp_path, monkeypatch):
    bundle = tmp_path / "bundles" / "demo_bundle"
    (bundle / "configs").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert locate_bundle("demo_bundle") == "bundles/demo_bundle"
    monkeypatch.chdir(bundle)
    assert locate_bundle("demo_bundle") == "."
    with pytest.raises(FileNotFoundError, match="--bundle_root"):
        locate_bundle("no_such_bundle")


def test_load_stage_output_names_the_stage_that_writes_a_missing_file(tmp_path):
    import torch

    from medkd_ext.engines import load_stage_output
    from medkd_ext.networks import save_state_dict

    stages = [Stage("joint_teacher", ["t.json", "j.json"], outputs=[str(tmp_path / "joint.pt")])]
    with pytest.raises(FileNotFoundError, match=r"joint\.pt.*stage 'joint_teacher'.*configs/j\.json"):
        load_stage_output(torch.nn.Linear(2, 2), tmp_path / "joint.pt", "cpu", stages)
    trained = torch.nn.Linear(2, 2)
    save_state_dict(trained, tmp_path / "joint.pt")
    loaded = load_stage_output(torch.nn.Linear(2, 2), tmp_path / "joint.pt", "cpu", stages)
    assert torch.equal(loaded.weight, trained.weight)


def test_ids_of_the_wrong_kind_are_refused_before_any_stage(tmp_path):
    from medkd_ext.engines import check_override_types

    defaults = tmp_path / "train.json"
    defaults.write_text(json.dumps({
        "max_epochs": 80, "learning_rate": 0.001, "roi_size": [32, 32, 32], "amp": False, "arch": "unet",
        "sources": None, "ckpt_dir": "$@bundle_root + '/models'",
    }))
    fine = {
        "max_epochs": 2, "learning_rate": 1, "roi_size": 24, "amp": "false", "arch": 3, "sources": "x",
        "ckpt_dir": "/tmp", "image_size": "abc",  # not in train.json: not checked here
    }
    check_override_types(fine, defaults)
    check_override_types({"max_epochs": "$@other", "roi_size": [24, 24, 16], "learning_rate": [0.1, 0.2]}, defaults)
    with pytest.raises(TypeError) as info:
        check_override_types({"max_epochs": "abc", "learning_rate": "fast", "roi_size": "big", "amp": 0.5}, defaults)
    message = str(info.value)
    for part in (
        "max_epochs = 'abc' is not an integer (default 80)", "learning_rate = 'fast' is not a number (default 0.001)",
        "roi_size = 'big' is not a list", "amp = 0.5 is not a boolean",
    ):
        assert part in message
    with pytest.raises(TypeError, match="max_epochs = 1.5 is not an integer"):
        check_override_types({"max_epochs": 1.5}, defaults)


def _lines(tmp_path):
    log = tmp_path / "log.txt"
    return log.read_text().splitlines() if log.exists() else []


def test_resume_skips_a_finished_stage_only_while_its_settings_and_outputs_are_unchanged(config_dir, tmp_path):
    """``--resume true`` skips stage ``a`` after it finished; a changed id, a replaced output or a missing record make
    it run again; ids that change only how a run executes (``num_threads``) do not."""
    _run([config_dir / "train.json"])
    record = tmp_path / "state" / "out_a.done.json"
    assert json.loads(record.read_text())["stage"] == "a" and _lines(tmp_path) == ["a:none:2", "b0:none:2", "b1:none:2"]
    (tmp_path / "log.txt").unlink()
    _run([config_dir / "train.json"], resume="true", num_threads=1)
    assert _lines(tmp_path) == ["b0:none:2", "b1:none:2"]  # b writes no file to check: it runs again
    (tmp_path / "log.txt").unlink()
    _run([config_dir / "train.json"], resume="true", source="other")
    assert _lines(tmp_path)[0] == "a:other:2"
    (tmp_path / "log.txt").unlink()
    (tmp_path / "out_a").write_text("replaced")
    _run([config_dir / "train.json"], resume="true", source="other")
    assert _lines(tmp_path)[0] == "a:other:2"
    (tmp_path / "log.txt").unlink()
    _run([config_dir / "train.json"], source="other")  # without --resume every stage runs, as before
    assert _lines(tmp_path)[0] == "a:other:2"


def test_an_interrupted_run_is_announced_and_a_finished_stage_keeps_its_output(config_dir, tmp_path, caplog):
    """Without --resume, the log says that an earlier run was interrupted and how to continue it; with --resume, a
    finished stage whose state file is left by a later interrupted rerun is skipped and that state removed."""
    _run([config_dir / "train.json"])
    state = tmp_path / "state" / "out_a"
    state.write_text("state of a rerun killed in its first epochs")
    with caplog.at_level(logging.WARNING, logger="medkd_ext.engines.stages"):
        _run([config_dir / "train.json"], resume="true")
    assert "was interrupted in stage" not in caplog.text and not state.exists()
    state.write_text("state of an interrupted run")
    with caplog.at_level(logging.WARNING, logger="medkd_ext.engines.stages"):
        _run([config_dir / "train.json"])
    assert "interrupted in stage a" in caplog.text and "--resume true" in caplog.text


def test_reused_outputs_of_an_interrupted_stage_are_not_reused(config_dir, tmp_path):
    """A teacher file written by a stage that was then killed (its training state is still there) is not taken as a
    finished teacher: the stage runs again."""
    base = {"log": str(tmp_path / "log.txt"), "source": 0, "net": {"width": 1}, "out": str(tmp_path / "out"),
            "stage_name": "x"}
    done = tmp_path / "out_a"
    done.write_text("x")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "out_a").write_text("state of an interrupted run")
    run_stages([Stage("a", "a.json", outputs=[str(done)], reuse_outputs=True)], config_dir, base_config=base)
    assert _lines(tmp_path) == ["a:0:1"]


def test_check_writable_names_the_id_and_the_folder(tmp_path):
    check_writable({"ckpt_dir": tmp_path / "new" / "models"})
    assert (tmp_path / "new" / "models").is_dir() and not list((tmp_path / "new" / "models").iterdir())
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(PermissionError, match=r"cannot write to output_dir '.*a_file/eval'.*give --output_dir"):
        check_writable({"ckpt_dir": tmp_path, "output_dir": blocker / "eval"})


def test_parse_overrides_reads_json_values_and_keeps_other_text():
    """The scripts' ``--override id=value``: JSON where it parses (as MONAI's command line), the text otherwise."""
    from medkd_ext.engines import parse_overrides

    got = parse_overrides(["image_size=64", "roi_size=[32, 32, 32]", "amp=true", "network_def#widen_factor=0.25",
                           "noise_mode=symmetric", "output_dir=/a=b", "ckpt=null"])
    assert got == {"image_size": 64, "roi_size": [32, 32, 32], "amp": True, "network_def#widen_factor": 0.25,
                   "noise_mode": "symmetric", "output_dir": "/a=b", "ckpt": None}
    for bad in ("image_size", "=64"):
        with pytest.raises(ValueError, match=f"--override takes id=value .* got {bad!r}"):
            parse_overrides([bad])
