import json

import numpy as np
import pytest

from medkd_ext.engines import check_recorded, recorded, save_settings, settings_path


def test_record_beside_the_weights_and_read_back(tmp_path):
    ckpt = tmp_path / "models" / "model.pt"
    path = save_settings(ckpt, {"width": 16, "roi_size": (32, 32, 16)}, {"datalist": tmp_path / "d.json"})
    assert path == settings_path(ckpt) == tmp_path / "models" / "model.json"
    assert json.loads(path.read_text()) == {"width": 16, "roi_size": [32, 32, 16], "datalist": str(tmp_path / "d.json")}
    assert recorded(ckpt, "width") == 16 and recorded(ckpt, "roi_size", [8, 8, 8]) == [32, 32, 16]
    assert recorded(ckpt, "absent", 3) == 3
    with pytest.raises(KeyError, match="records no 'absent'"):
        recorded(ckpt, "absent")


def test_without_a_record_the_default_or_a_clear_error(tmp_path):
    ckpt = tmp_path / "model.pt"
    assert recorded(ckpt, "width", 8) == 8
    with pytest.raises(FileNotFoundError, match=r"model\.json does not exist.*give --width"):
        recorded(ckpt, "width")
    check_recorded(ckpt, {"width": 99})  # nothing recorded: nothing to refuse


def test_a_value_that_disagrees_with_the_record_is_refused_naming_both(tmp_path):
    ckpt = tmp_path / "model.pt"
    save_settings(ckpt, {"width": 16, "pixdim": [1.0, 1.0, 1.5], "names": ["a", "b"]})
    check_recorded(ckpt, {"width": 16, "pixdim": (1.0, 1.0, 1.5), "names": ["a", "b"], "other": 1})
    expected = r"width: trained with 16, this run has 8; pixdim: trained with \[1\.0, 1\.0, 1\.5\]"
    with pytest.raises(ValueError, match=expected):
        check_recorded(ckpt, {"width": 8, "pixdim": np.array([1.0, 1.0, 2.0])})


def test_values_that_json_cannot_hold_are_named(tmp_path):
    with pytest.raises(TypeError, match="'network'"):
        save_settings(tmp_path / "model.pt", {"network": object()})


def test_a_stage_output_is_checked_against_its_record_before_loading(tmp_path):
    """A teacher loaded by a later stage: settings that disagree with the teacher stage's record stop the load,
    naming the id, both values and what to do; without a record (a teacher from elsewhere) nothing is checked."""
    import torch

    from medkd_ext.engines import Stage, load_stage_output

    ckpt = tmp_path / "teacher.pt"
    torch.save(torch.nn.Linear(2, 2).state_dict(), ckpt)
    stages = [Stage(name="teacher", config="train_teacher.json", outputs=[str(ckpt)])]
    loaded = load_stage_output(torch.nn.Linear(2, 2), ckpt, "cpu", stages, tmp_path, settings={"pixdim": [1, 1, 2]})
    assert torch.equal(loaded.weight, torch.load(ckpt)["weight"])  # no record: loaded as before
    save_settings(ckpt, {"pixdim": [1.0, 1.0, 1.5], "datalist": "/data/a.json"})
    load_stage_output(torch.nn.Linear(2, 2), ckpt, "cpu", stages, tmp_path, settings={"pixdim": [1.0, 1.0, 1.5]})
    with pytest.raises(ValueError) as info:
        load_stage_output(
            torch.nn.Linear(2, 2), ckpt, "cpu", stages, tmp_path,
            settings={"pixdim": [1.0, 1.0, 1.5], "datalist": "/demo/d.json"},
        )
    message = str(info.value)
    assert "datalist: trained with '/data/a.json', this run has '/demo/d.json'" in message
    assert message.count("this run has") == 1 and "written by stage 'teacher'" in message  # pixdim agrees
    assert "config files and ids that stage ran with" in message


def test_a_reused_checkpoint_made_otherwise_is_warned_about(tmp_path, caplog):
    from medkd_ext.engines import warn_if_reused_otherwise

    ckpt = tmp_path / "teacher.pt"
    ckpt.write_bytes(b"weights")
    advice = "Delete it, or give another --teacher_ckpt."
    assert warn_if_reused_otherwise(ckpt, {"teacher_datalist": "a.csv"}, "the teacher", advice) == []  # no record
    save_settings(ckpt, {"teacher_net": "densenet121"})  # an earlier version recorded no training data
    with caplog.at_level("WARNING", logger="medkd_ext.engines.settings"):
        found = warn_if_reused_otherwise(ckpt, {"teacher_datalist": "a.csv"}, "the teacher", advice)
    assert found and "names none of ['teacher_datalist']" in found[0]
    assert "the teacher" in caplog.text and "reused without training" in caplog.text and advice in caplog.text
    save_settings(ckpt, {"teacher_datalist": "a.csv", "split_seed": 0})
    assert warn_if_reused_otherwise(ckpt, {"teacher_datalist": "a.csv", "split_seed": 0}, "the teacher", advice) == []
    found = warn_if_reused_otherwise(ckpt, {"teacher_datalist": "b.csv", "split_seed": 0}, "the teacher", advice)
    assert found == ["teacher_datalist: trained with 'a.csv', this run has 'b.csv'"]
