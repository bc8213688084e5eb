from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medkd_ext.networks import FrozenTeacher, freeze, unwrap_network


def bn_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Dropout(0.5), nn.Conv2d(4, 2, 1))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(3, 3)

    def forward(self, x):
        y = self.body(x)
        return {"logits": y, "aux": (y * 2, y * 3)}


class Pair(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.student = bn_net()
        self.teacher = FrozenTeacher(bn_net())


def test_teacher_is_frozen_and_stays_in_eval():
    teacher = FrozenTeacher(bn_net())
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert teacher.train() is teacher
    assert not any(m.training for m in teacher.modules())
    pair = Pair()
    pair.train()
    assert pair.student.training
    assert not any(m.training for m in pair.teacher.modules())


def test_teacher_unchanged_by_an_optimizer_step_on_a_loss_using_its_outputs():
    pair = Pair()
    pair.train()
    before = copy.deepcopy(pair.teacher.state_dict())
    optimizer = torch.optim.SGD(pair.parameters(), lr=0.1, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        x = torch.randn(4, 1, 6, 6)
        out_t = pair.teacher(x)
        assert not out_t.requires_grad
        loss = (pair.student(x) * out_t).mean()  # mul saves the teacher output for backward
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = pair.teacher.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key  # weights and batch-norm statistics
    assert all(p.grad is None for p in pair.teacher.parameters())
    assert pair.student[0].weight.grad is not None


@pytest.mark.parametrize("inference_mode", [True, False])
def test_train_called_on_the_bare_network_is_undone_before_each_forward(inference_mode):
    net = bn_net()
    teacher = FrozenTeacher(net, inference_mode=inference_mode)
    stats = net[1].running_mean.clone()
    net.train()  # e.g. a handler that holds the bare network
    x = torch.randn(4, 1, 5, 5) + 3.0
    out = teacher(x)
    assert not any(m.training for m in net.modules())
    assert torch.equal(net[1].running_mean, stats)  # batch norm used its statistics and did not update them
    net.train()
    torch.testing.assert_close(teacher(x), out)  # dropout off again


def test_outputs_are_deterministic_in_eval_despite_dropout():
    teacher = FrozenTeacher(bn_net())
    teacher.train()
    x = torch.randn(2, 1, 5, 5)
    torch.testing.assert_close(teacher(x), teacher(x))


def test_without_clone_outputs_are_inference_tensors_that_cannot_enter_backward():
    teacher = FrozenTeacher(bn_net(), clone_outputs=False)
    x = torch.randn(2, 1, 5, 5)
    out = teacher(x)
    assert out.is_inference()
    weight = torch.ones_like(out, requires_grad=True)
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        (weight * out).sum().backward()
    cloned = FrozenTeacher(bn_net())(x)
    assert not cloned.is_inference()
    torch.testing.assert_close(cloned, out)


def test_no_grad_mode_and_outer_inference_mode():
    x = torch.randn(2, 1, 5, 5)
    out = FrozenTeacher(bn_net(), inference_mode=False)(x)
    assert not out.is_inference() and not out.requires_grad
    with torch.inference_mode():
        assert FrozenTeacher(bn_net())(x).is_inference()  # nothing to clone for an evaluator


def test_structured_outputs_are_cloned():
    teacher = FrozenTeacher(TwoHeads())
    out = teacher(torch.randn(2, 3))
    tensors = [out["logits"], *out["aux"]]
    assert isinstance(out, dict) and isinstance(out["aux"], tuple)
    assert not any(t.is_inference() for t in tensors)
    torch.testing.assert_close(out["aux"][1], 3 * out["logits"])


def test_state_dict_has_inner_keys_and_loads_both_forms():
    net = bn_net()
    teacher = FrozenTeacher(net)
    assert list(teacher.state_dict()) == list(net.state_dict())
    source = bn_net()
    with torch.no_grad():
        for p in source.parameters():
            p.add_(1.0)
    teacher.load_state_dict(source.state_dict())
    torch.testing.assert_close(teacher.network[0].weight, source[0].weight)
    prefixed = {f"network.{k}": v + 1 for k, v in source.state_dict().items()}
    teacher.load_state_dict(prefixed)
    torch.testing.assert_close(teacher.network[0].weight, source[0].weight + 1)
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.load_state_dict(source.state_dict(), assign=True)
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(RuntimeError, match="Missing key"):
        teacher.load_state_dict({"0.weight": source[0].weight})


def test_nested_teacher_state_dict_round_trip():
    pair, other = Pair(), Pair()
    keys = list(pair.state_dict())
    assert "teacher.0.weight" in keys and not any(k.startswith("teacher.network.") for k in keys)
    other.load_state_dict(pair.state_dict())
    for key, value in pair.state_dict().items():
        assert torch.equal(other.state_dict()[key], value)


def test_inner_network_with_a_child_named_network():
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.network = nn.Linear(2, 2)

    teacher = FrozenTeacher(Holder())
    state = {k: torch.ones_like(v) for k, v in teacher.state_dict().items()}
    assert list(state) == ["network.weight", "network.bias"]
    teacher.load_state_dict(state)
    assert torch.equal(teacher.network.network.weight, torch.ones(2, 2))


def test_freeze_and_unwrap():
    net = bn_net()
    assert freeze(net) is net
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    wrapped = nn.DataParallel(FrozenTeacher(net))
    assert unwrap_network(wrapped) is net
    assert unwrap_network(net) is net
    with pytest.raises(TypeError, match="nn.Module"):
        FrozenTeacher("net")
    with pytest.raises(TypeError, match="nn.Module"):
        freeze(None)
