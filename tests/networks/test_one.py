from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet, ResNet
from torch import nn

from medkd_ext.networks import DenseNet40
from medkd_ext.networks.one import ONENetwork


def _resnet(dims: int = 2, **kwargs) -> ResNet:
    return ResNet(
        block="basic",
        layers=(1, 1, 1, 1),
        block_inplanes=(4, 8, 8, 16),
        spatial_dims=dims,
        n_input_channels=1,
        num_classes=3,
        **kwargs,
    )


def _densenet(dims: int = 2) -> DenseNet:
    return DenseNet(
        spatial_dims=dims, in_channels=1, out_channels=3, init_features=8, growth_rate=4, block_config=(2, 2, 2)
    )


def _densenet40() -> DenseNet40:
    return DenseNet40(
        spatial_dims=2,
        in_channels=1,
        out_channels=3,
        init_features=8,
        growth_rate=4,
        block_config=(2, 2),
        mid_channels=(8, 16),
        pool_size=2,
    )


CASES = {
    "resnet2d": (lambda: _resnet(2), (4, 1, 32, 32)),
    "resnet3d": (lambda: _resnet(3), (2, 1, 16, 16, 16)),
    "densenet2d": (lambda: _densenet(2), (4, 1, 32, 32)),
    "densenet3d": (lambda: _densenet(3), (2, 1, 16, 16, 16)),
    "densenet40": (_densenet40, (4, 1, 32, 32)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_gate_sums_to_one_and_the_ensemble_is_the_gated_sum(case):
    build, shape = CASES[case]
    torch.manual_seed(0)
    one = ONENetwork(build())
    out = one(torch.randn(shape), output="all")
    gate, branches, ensemble = out["gate"], out["branches"], out["ensemble"]
    assert len(branches) == 3 and gate.shape == (shape[0], 3) and ensemble.shape == (shape[0], 3)
    assert (gate >= 0).all()
    torch.testing.assert_close(gate.sum(1), torch.ones(shape[0]))
    torch.testing.assert_close(ensemble, sum(gate[:, i : i + 1] * branches[i] for i in range(3)))
    # the branches were re-initialised: they differ
    assert not torch.allclose(branches[0], branches[1])


@pytest.mark.parametrize("case", ["resnet2d", "densenet40"])
def test_branch_output_and_branch_network_match(case):
    build, shape = CASES[case]
    torch.manual_seed(1)
    backbone = build()
    keys = set(backbone.state_dict())
    one = ONENetwork(backbone, output="branch").eval()
    x = torch.randn(shape)
    with torch.no_grad():
        ensemble = one(x, output="ensemble")
        assert torch.equal(ensemble, one(x, output="all")["ensemble"])
        for i in range(one.num_branches):
            one.branch = i
            plain = one.branch_network(i).eval()
            assert type(plain) is type(backbone) and set(plain.state_dict()) == keys
            torch.testing.assert_close(one(x), plain(x))
            torch.testing.assert_close(one(x), one(x, output="all")["branches"][i])
    assert one.branch_network(0) is not backbone


def test_trunk_is_shared_with_the_backbone_and_branches_are_copies():
    backbone = _resnet()
    one = ONENetwork(backbone, split="layer3")
    assert one.trunk.layer2 is backbone.layer2 and one.branches[0].layer3 is backbone.layer3
    assert one.branches[1].layer3 is not backbone.layer3
    assert [name for name, _ in one.branches[0].named_children()] == ["layer3", "layer4", "avgpool", "flatten", "fc"]
    n_trunk = sum(p.numel() for p in one.trunk.parameters())
    n_branch = sum(p.numel() for p in one.branches[0].parameters())
    n_gate = sum(p.numel() for p in one.gate.parameters())
    assert sum(p.numel() for p in one.parameters()) == n_trunk + 3 * n_branch + n_gate
    assert sum(p.numel() for p in backbone.parameters()) == n_trunk + n_branch
    # the gate sees the trunk's channels (layer2 of this ResNet: 8)
    assert one.gate.fc.in_features == 8


def test_reinit_can_be_turned_off_for_pretrained_backbones():
    torch.manual_seed(2)
    one = ONENetwork(_densenet(), split="features.denseblock2", reinit_branches=False).eval()
    out = one(torch.randn(2, 1, 32, 32), output="all")
    torch.testing.assert_close(out["branches"][0], out["branches"][2])
    names = [name for name, _ in one.branches[0].named_children()]
    assert names == [
        "features_denseblock2",
        "features_transition2",
        "features_denseblock3",
        "features_norm5",
        "class_layers",
    ]


def test_state_dict_round_trip_and_single_sample_training_batch():
    torch.manual_seed(3)
    one = ONENetwork(_resnet(), num_branches=2, output="ensemble")
    one.train()
    one(torch.randn(1, 1, 32, 32))  # a last batch of one sample does not break the gate's BatchNorm
    one(torch.randn(4, 1, 32, 32))
    other = ONENetwork(_resnet(), num_branches=2, output="ensemble")
    other.load_state_dict(one.state_dict())
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(other.eval()(x), one.eval()(x))
    assert all(k.split(".")[0] in {"trunk", "branches", "gate"} for k in one.state_dict())


def test_gradients_reach_trunk_gate_and_every_branch():
    torch.manual_seed(4)
    one = ONENetwork(_densenet40())
    out = one(torch.randn(3, 1, 32, 32), output="all")
    (out["ensemble"].sum() + sum(b.sum() for b in out["branches"])).backward()
    for part in (one.trunk, one.gate, *one.branches):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_bad_inputs_give_clear_errors():
    with pytest.raises(TypeError, match="supported backbones are MONAI ResNet"):
        ONENetwork(nn.Sequential(nn.Conv2d(1, 3, 3), nn.Flatten()))
    with pytest.raises(ValueError, match=r"splits at one of \['layer1'"):
        ONENetwork(_resnet(), split="fc")
    with pytest.raises(ValueError, match="features.denseblock3"):
        ONENetwork(_densenet(), split="denseblock7")
    with pytest.raises(ValueError, match="num_branches must be at least 2"):
        ONENetwork(_resnet(), num_branches=1)
    with pytest.raises(ValueError, match="output must be one of"):
        ONENetwork(_resnet(), output="mean")
    with pytest.raises(ValueError, match="branch must be an index"):
        ONENetwork(_resnet(), branch=3)
    with pytest.raises(ValueError, match="no classifier"):
        ONENetwork(_resnet(feed_forward=False))
    one = ONENetwork(_resnet())
    with pytest.raises(ValueError, match="output must be one of"):
        one(torch.randn(2, 1, 32, 32), output="best")
    with pytest.raises(ValueError, match="branch must be an index"):
        one.branch_network(5)
