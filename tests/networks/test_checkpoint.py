from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from medkd_ext.networks import FrozenTeacher, load_state_dict, save_state_dict
from medkd_ext.networks.checkpoint import file_sha256


def make_net(seed: int = 0, width: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, width, 3), nn.BatchNorm2d(width), nn.Conv2d(width, 2, 1))


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    state_b = b.state_dict()
    for key, value in a.state_dict().items():
        assert torch.equal(value, state_b[key]), key


class Holder(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.network = make_net(seed)


def test_round_trip(tmp_path):
    source, target = make_net(0), make_net(1)
    path = save_state_dict(source, tmp_path / "models" / "net.pt")  # parent folder created
    assert path == tmp_path / "models" / "net.pt" and path.is_file()
    assert load_state_dict(target, path) is target
    assert_same_weights(source, target)
    assert [p.name for p in path.parent.iterdir()] == ["net.pt"]  # no temporary file left


def test_saved_file_has_the_mode_of_a_plainly_written_file(tmp_path):
    # the temporary file of an atomic write is created 0600; the checkpoint must be readable as any file the user
    # writes (another user serving it through MONAI Label, a clinician's copy)
    path = save_state_dict(make_net(), tmp_path / "net.pt")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777


def test_saved_file_is_plain_dict_of_tensors_without_wrapper_prefixes(tmp_path):
    net = make_net()
    for wrapped in (nn.DataParallel(net), FrozenTeacher(net), {f"module.{k}": v for k, v in net.state_dict().items()}):
        path = save_state_dict(wrapped, tmp_path / "w.pt")
        saved = torch.load(path, weights_only=True)
        assert type(saved) is dict
        assert list(saved) == list(net.state_dict())
        assert all(isinstance(v, torch.Tensor) for v in saved.values())


@pytest.mark.parametrize("wrap", [nn.DataParallel, FrozenTeacher, lambda n: nn.DataParallel(FrozenTeacher(n))])
def test_checkpoints_interchangeable_between_wrappers(tmp_path, wrap):
    source = make_net(0)
    save_state_dict(wrap(source), tmp_path / "a.pt")
    target = make_net(1)
    load_state_dict(wrap(target), tmp_path / "a.pt")
    assert_same_weights(source, target)
    # a raw checkpoint with wrapper prefixes loads into a bare network too
    torch.save({f"module.{k}": v for k, v in make_net(2).state_dict().items()}, tmp_path / "b.pt")
    load_state_dict(target, tmp_path / "b.pt")
    assert_same_weights(make_net(2), target)


def test_network_whose_only_child_is_named_network(tmp_path):
    source, target = Holder(0), Holder(1)
    save_state_dict(source, tmp_path / "h.pt")
    assert next(iter(torch.load(tmp_path / "h.pt", weights_only=True))) == "0.weight"
    load_state_dict(target, tmp_path / "h.pt")
    assert_same_weights(source, target)
    bare = make_net(3)
    load_state_dict(bare, tmp_path / "h.pt")
    assert_same_weights(source.network, bare)


def test_missing_file_names_file_and_stage(tmp_path):
    path = tmp_path / "models" / "teacher_0.pt"
    with pytest.raises(FileNotFoundError, match=r"teacher_0\.pt.*run configs/train_teacher\.json first"):
        load_state_dict(make_net(), path, stage_hint="run configs/train_teacher.json first")
    with pytest.raises(FileNotFoundError, match=r"teacher_0\.pt' not found; check the path"):
        load_state_dict(make_net(), path)


def test_other_architecture_is_a_clear_error(tmp_path):
    path = save_state_dict(make_net(width=8), tmp_path / "wide.pt")
    target = make_net(width=4)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError) as info:
        load_state_dict(target, path, stage_hint="run configs/train_teacher.json first")
    message = str(info.value)
    assert "wide.pt" in message and "shape mismatch" in message
    assert "0.weight: checkpoint (8, 1, 3, 3) vs network (4, 1, 3, 3)" in message
    assert "train_teacher.json" in message
    for key, value in target.state_dict().items():  # nothing was copied before the error
        assert torch.equal(value, before[key])

    other = save_state_dict(nn.Linear(3, 3), tmp_path / "linear.pt")
    with pytest.raises(ValueError, match=r"missing key.*0\.weight.*unexpected key.*weight"):
        load_state_dict(make_net(), other)
    with pytest.raises(ValueError, match="linear.pt"):
        load_state_dict(make_net(), other, strict=False)  # nothing in common


def test_non_strict_ignores_missing_and_unexpected_keys(tmp_path):
    source = make_net(0)
    state = {k: v for k, v in source.state_dict().items() if k.startswith("0.")}
    state["extra.weight"] = torch.zeros(1)
    path = save_state_dict(state, tmp_path / "part.pt")
    target = make_net(1)
    with pytest.raises(ValueError, match=r"7 missing key.*1\.weight.*1 unexpected key.*extra\.weight"):
        load_state_dict(target, path)
    load_state_dict(target, path, strict=False)
    assert torch.equal(target[0].weight, source[0].weight)
    assert not torch.equal(target[2].weight, source[2].weight)


def test_nested_checkpoint_needs_key(tmp_path):
    source = make_net(0)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": source.state_dict(), "optimizer": {"lr": torch.tensor(0.1)}}, path)
    with pytest.raises(ValueError, match=r"pass key= one of model, optimizer"):
        load_state_dict(make_net(1), path)
    with pytest.raises(ValueError, match=r"no entry key='network'; its entries are model, optimizer"):
        load_state_dict(make_net(1), path, key="network")
    target = load_state_dict(make_net(1), path, key="model")
    assert_same_weights(source, target)


def test_unreadable_file(tmp_path):
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"corrupt\.pt.*could not be read.*step 1"):
        load_state_dict(make_net(), bad, stage_hint="step 1")
    pickled = tmp_path / "object.pt"
    torch.save({"weight": torch.zeros(1), "net": make_net()}, pickled)  # a module is not weights-only
    with pytest.raises(ValueError, match=r"object\.pt.*could not be read"):
        load_state_dict(make_net(), pickled)
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list"):
        load_state_dict(make_net(), tmp_path / "list.pt")


def test_device_maps_tensors(tmp_path):
    path = save_state_dict(make_net(), tmp_path / "n.pt")
    target = load_state_dict(make_net(1), path, device=torch.device("cpu"))
    assert all(v.device.type == "cpu" for v in target.state_dict().values())


def test_failed_save_keeps_old_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    old = make_net(0)
    path = save_state_dict(old, tmp_path / "best.pt")
    original = path.read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_state_dict(make_net(1), path)
    monkeypatch.undo()
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert_same_weights(old, load_state_dict(make_net(2), path))


def test_save_rejects_non_state_dicts(tmp_path):
    with pytest.raises(TypeError, match="nn.Module or a state dict"):
        save_state_dict([1, 2], tmp_path / "x.pt")
    with pytest.raises(TypeError, match="'lr' -> float"):
        save_state_dict({"lr": 0.1}, tmp_path / "x.pt")
    assert not any(tmp_path.iterdir())


def test_a_weight_file_changed_after_its_record_is_refused_with_its_name(tmp_path):
    """``save_settings`` records the SHA-256 of the finished checkpoint; ``load_state_dict`` refuses a file whose
    bytes no longer have it (replaced or truncated), naming the file and the record; without a record nothing is
    checked."""
    from medkd_ext.engines import save_settings

    network = nn.Linear(3, 2)
    path = tmp_path / "teacher_0.pt"
    save_state_dict(network, path)
    save_settings(path, {"num_classes": 2})
    assert json.loads((tmp_path / "teacher_0.json").read_text())["sha256"] == file_sha256(path)
    load_state_dict(nn.Linear(3, 2), path)
    save_state_dict(nn.Linear(3, 2), path)  # same keys and shapes: only the record can tell
    with pytest.raises(ValueError, match=r"teacher_0.pt' is not the file that was trained.*teacher_0.json"):
        load_state_dict(nn.Linear(3, 2), path)
    path.write_bytes(path.read_bytes()[:50])
    with pytest.raises(ValueError, match="SHA-256"):
        load_state_dict(nn.Linear(3, 2), path)
    (tmp_path / "teacher_0.json").unlink()
    with pytest.raises(ValueError, match="could not be read"):  # truncated, no record: torch's error, with the file
        load_state_dict(nn.Linear(3, 2), path)
