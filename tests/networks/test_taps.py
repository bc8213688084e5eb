from __future__ import annotations

import pytest
import torch
from torch import nn

from medkd_ext.networks import DenseNet40, FeatureTaps, FrozenTeacher, module_names


class TupleOut(nn.Module):
    def forward(self, x):
        return "not a tensor", x * 3, x


class DictOut(nn.Module):
    def forward(self, x):
        return {"a": x}


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Sequential(nn.Linear(5, 3), nn.Tanh()))


def test_module_names_are_named_modules_without_root():
    net = small_net()
    assert module_names(net) == ["0", "1", "2", "2.0", "2.1"]
    assert module_names(FrozenTeacher(net)) == module_names(net)
    assert module_names(nn.DataParallel(net)) == module_names(net)


def test_features_equal_layer_outputs():
    net = small_net()
    x = torch.randn(2, 4)
    with FeatureTaps(net, ["0", "2.0"]) as taps:
        out = net(x)
        feats = taps.features
    hidden = net[0](x)
    assert list(feats) == ["0", "2.0"]
    torch.testing.assert_close(feats["0"], hidden)
    torch.testing.assert_close(feats["2.0"], net[2][0](torch.relu(hidden)))
    torch.testing.assert_close(out, torch.tanh(feats["2.0"]))


def test_context_manager_removes_hooks_and_keeps_last_features():
    net = small_net()
    x = torch.randn(2, 4)
    with FeatureTaps(net, "2.0") as taps:
        net(x)
    assert not taps.active
    assert not net[2][0]._forward_hooks and not net._forward_pre_hooks
    first = taps["2.0"]
    net(torch.randn(2, 4))
    assert taps["2.0"] is first


def test_long_lived_taps_refresh_every_forward_and_clear():
    net = small_net()
    taps = FeatureTaps(net, ["0"])
    x1, x2 = torch.randn(2, 4), torch.randn(3, 4)
    net(x1)
    torch.testing.assert_close(taps["0"], net[0](x1))
    net(x2)
    assert taps["0"].shape == (3, 5)
    torch.testing.assert_close(taps["0"], net[0](x2))
    taps.clear()
    assert taps.features == {}
    with pytest.raises(KeyError, match="has not run"):
        taps["0"]
    with pytest.raises(KeyError, match="not tapped"):
        taps["1"]
    taps.remove()
    taps.remove()  # idempotent
    net(x1)
    assert taps.features == {}


def test_features_of_a_layer_that_did_not_run_are_not_stale():
    net = small_net()
    taps = FeatureTaps(net, ["2.0"])
    net(torch.randn(2, 4))
    assert "2.0" in taps.features
    net[0](torch.randn(2, 4))  # a sub-module call does not start a new pass of the network
    assert "2.0" in taps.features
    net[2] = nn.Identity()  # the tapped layer no longer runs
    net(torch.randn(2, 4))
    assert taps.features == {}


def test_unknown_layer_names_are_listed_with_near_valid_names():
    net = DenseNet40(2, 1, 3)
    with pytest.raises(ValueError) as info:
        FeatureTaps(net, ["features.denseblock2.denselayer11", "features.denseblock2.denselayer13", "features.bogus"])
    message = str(info.value)
    assert "'features.denseblock2.denselayer13', 'features.bogus'" in message
    assert "'features.denseblock2.denselayer11'," not in message
    assert "features.denseblock2.denselayer12" in message  # a valid name near the wrong one
    assert "features.transition1" in message and "class_layers.out" in message
    assert "module_names" in message
    # hooks of the valid names were not left behind
    assert not any(m._forward_hooks for m in net.modules())


def test_small_network_lists_all_names():
    with pytest.raises(ValueError, match=r"Valid names: 0, 1, 2, 2\.0, 2\.1\."):
        FeatureTaps(small_net(), ["3"])


@pytest.mark.parametrize(
    "layers, error, match",
    [
        ([], ValueError, "empty"),
        ([""], ValueError, "empty"),
        (["0", "0"], ValueError, "more than once"),
        ([0], TypeError, "strings"),
    ],
)
def test_bad_layer_arguments(layers, error, match):
    with pytest.raises(error, match=match):
        FeatureTaps(small_net(), layers)


def test_network_must_be_a_module():
    with pytest.raises(TypeError, match="nn.Module"):
        FeatureTaps(lambda x: x, ["0"])


def test_tuple_output_gives_first_tensor_and_dict_output_is_an_error():
    x = torch.randn(2, 3)
    net = nn.Sequential()
    net.add_module("multi", TupleOut())
    with FeatureTaps(net, ["multi"]) as taps:
        net(x)
        torch.testing.assert_close(taps["multi"], x * 3)
    holder = nn.Module()
    holder.head = DictOut()
    with FeatureTaps(holder, ["head"]), pytest.raises(TypeError, match="returned a dict"):
        holder.head(x)


def test_clone_protects_against_following_inplace_ops():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(inplace=True))
    x = torch.randn(8, 4)
    expected = net[0](x)
    assert (expected < 0).any()
    with FeatureTaps(net, ["0"]) as plain, FeatureTaps(net, ["0"], clone=True) as copied:
        net(x)
        assert (plain["0"] >= 0).all()  # modified by the in-place ReLU
        torch.testing.assert_close(copied["0"], expected)


def test_clone_keeps_gradient_flow_for_students():
    net = small_net()
    x = torch.randn(2, 4)
    with FeatureTaps(net, ["0"], clone=True) as taps:
        net(x)
        taps["0"].sum().backward()
    torch.testing.assert_close(net[0].bias.grad, torch.full((5,), 2.0))


@pytest.mark.parametrize("clone", [False, True])
@pytest.mark.parametrize("name", ["2.0", "network.2.0"])
def test_taps_on_frozen_teacher_give_tensors_usable_in_backward(clone, name):
    teacher = FrozenTeacher(small_net())
    student = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    with FeatureTaps(teacher, [name], clone=clone) as taps:
        teacher(x)
        feat_t = taps[name]
    assert not feat_t.is_inference()
    assert not feat_t.requires_grad
    torch.testing.assert_close(feat_t, teacher.network[2][0](torch.relu(teacher.network[0](x))))
    loss = (student(x) * feat_t).sum()  # mul saves feat_t for backward
    loss.backward()
    assert student.weight.grad is not None


def test_features_read_inside_inference_mode_are_not_copied():
    teacher = FrozenTeacher(small_net())
    with FeatureTaps(teacher, ["0"]) as taps, torch.inference_mode():
        teacher(torch.randn(2, 4))
        assert taps["0"].is_inference()
