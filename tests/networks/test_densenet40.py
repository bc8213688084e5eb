from __future__ import annotations

import pytest
import torch
from monai.networks.nets import DenseNet, DenseNet121
from torch import nn

from medkd_ext.networks import DenseNet40, FeatureTaps, FrozenTeacher, densenet_at_layer, module_names, new_planes

PAPER_PARAMS = 1_364_142  # attention-transfer paper, DenseNet-40 trainable parameters (2D, RGB input)


def n_trainable(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def densenet121() -> DenseNet121:
    torch.manual_seed(0)
    return DenseNet121(spatial_dims=2, in_channels=3, out_channels=14).eval()


@pytest.mark.parametrize("out_channels, expected", [(14, 1_364_142), (15, 1_365_167), (5, 1_354_917)])
def test_parameter_count_is_the_papers(out_channels, expected):
    count = n_trainable(DenseNet40(spatial_dims=2, in_channels=3, out_channels=out_channels))
    assert count == expected  # the numbers documented in the docstring
    if out_channels == 14:  # ChestX-ray8: the paper's count exactly (head 512 -> 32 with bias -> 1024 with BN)
        assert count == PAPER_PARAMS


def test_output_shape_2d():
    net = DenseNet40(spatial_dims=2, in_channels=3, out_channels=14).eval()
    with FeatureTaps(net, ["features.denseblock2", "class_layers.pool", "class_layers.conv1",
                           "class_layers.conv2"]) as taps:
        out = net(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 14)
    assert taps["features.denseblock2"].shape == (2, 512, 8, 8)  # 128 + 12 * 32 channels at 1/8 size
    assert taps["class_layers.pool"].shape == (2, 512, 8, 8)
    assert taps["class_layers.conv1"].shape == (2, 32, 8, 8)  # 32 planes at 8x8: the second AT tap
    assert taps["class_layers.conv2"].shape == (2, 1024, 8, 8)
    assert net.class_layers.conv1.bias is not None and not hasattr(net.class_layers, "norm1")
    assert net.class_layers.conv2.bias is None and net.class_layers.norm2.num_features == 1024


def test_output_shape_3d():
    net = DenseNet40(spatial_dims=3, in_channels=1, out_channels=5)
    with FeatureTaps(net, ["class_layers.pool"]) as taps:
        out = net(torch.randn(2, 1, 32, 32, 32))
    assert out.shape == (2, 5)
    assert taps["class_layers.pool"].shape == (2, 512, 8, 8, 8)
    out.sum().backward()
    assert net.features.conv0.weight.grad is not None


def test_is_a_monai_densenet_with_densenet121_names(densenet121):
    net = DenseNet40(spatial_dims=2, in_channels=3, out_channels=14)
    assert isinstance(net, DenseNet)
    names = set(module_names(net))
    for name in ["features.conv0", "features.pool0", "features.denseblock1.denselayer6", "features.transition1",
                 "features.denseblock2.denselayer12", "features.norm5", "class_layers.out"]:
        assert name in names
    assert "features.denseblock3" not in names
    # the stem, block 1, transition 1 and block 2 of a DenseNet-121 checkpoint fit DenseNet-40
    teacher_state = densenet121.state_dict()
    shared = {k: v for k, v in teacher_state.items() if k.startswith(("features.conv0", "features.norm0",
                                                                     "features.denseblock1", "features.transition1",
                                                                     "features.denseblock2"))}
    missing, unexpected = net.load_state_dict(shared, strict=False)
    assert not unexpected
    assert all(k.startswith(("features.norm5", "class_layers")) for k in missing)


def test_at_layer_names(densenet121):
    net = DenseNet40(2, 3, 14)
    assert densenet_at_layer(net) == "features.denseblock2.denselayer11"
    assert densenet_at_layer(densenet121) == "features.denseblock4.denselayer15"
    assert densenet_at_layer(FrozenTeacher(densenet121)) == "features.denseblock4.denselayer15"
    assert densenet_at_layer(net, new_planes_only=True) == "features.denseblock2.denselayer11.layers"
    assert densenet_at_layer(DenseNet40(2, 1, 2, block_config=(2, 3, 4))) == "features.denseblock3.denselayer3"


def test_tapped_layer_is_cat_of_input_and_32_new_planes():
    torch.manual_seed(0)
    net = DenseNet40(2, 3, 14).eval()
    at = densenet_at_layer(net)
    with FeatureTaps(net, ["features.denseblock2.denselayer10", at, densenet_at_layer(net, True)]) as taps:
        net(torch.randn(2, 3, 32, 32))
    before, layer, only_new = taps.features.values()
    assert before.shape == (2, 128 + 10 * 32, 4, 4)
    assert layer.shape == (2, 128 + 11 * 32, 4, 4)
    torch.testing.assert_close(layer[:, : before.shape[1]], before)  # MONAI's _DenseLayer: cat([x, new], 1)
    assert only_new.shape == (2, 32, 4, 4)
    torch.testing.assert_close(new_planes(layer), only_new)
    torch.testing.assert_close(new_planes(layer, growth_rate=32), layer[:, -32:])


def test_teacher_at_layer_gives_32_new_planes(densenet121):
    teacher = FrozenTeacher(densenet121)
    at = densenet_at_layer(teacher)
    with FeatureTaps(teacher, [at]) as taps:
        teacher(torch.randn(1, 3, 64, 64))
    assert taps[at].shape == (1, 512 + 15 * 32, 2, 2)
    assert new_planes(taps[at]).shape == (1, 32, 2, 2)


def test_at_layer_errors():
    with pytest.raises(ValueError, match="denseblock"):
        densenet_at_layer(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        densenet_at_layer(DenseNet40(2, 1, 2, block_config=(2, 1)))
    fake = nn.Module()
    fake.denseblock1 = nn.Sequential(nn.Identity(), nn.Identity())
    assert densenet_at_layer(fake) == "denseblock1.0"
    with pytest.raises(ValueError, match="new_planes"):
        densenet_at_layer(fake, new_planes_only=True)


def test_new_planes_errors():
    with pytest.raises(ValueError, match="growth_rate"):
        new_planes(torch.zeros(1, 8, 2, 2), growth_rate=0)
    with pytest.raises(ValueError, match=r"\(1, 8, 2, 2\)"):
        new_planes(torch.zeros(1, 8, 2, 2), growth_rate=32)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"out_channels": 0}, "out_channels"),
        ({"growth_rate": -1}, "growth_rate"),
        ({"block_config": ()}, "block_config"),
        ({"mid_channels": (64, 0)}, "mid_channels"),
        ({"mid_channels": (64, 32), "mid_norm": (True,)}, "one flag per mid_channels entry"),
        ({"pool_size": 0}, "pool_size"),
        ({"dropout_prob": 1.5}, "dropout_prob"),
        ({"in_channels": True}, r"DenseNet40: in_channels must be a positive int, got True\."),
        ({"block_config": (6, True)}, r"block_config must be a non-empty sequence of positive ints, got \(6, True\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        DenseNet40(**args)


def test_custom_head_widths():
    net = DenseNet40(2, 1, 3, mid_channels=(16,), pool_size=4).eval()
    assert net.class_layers.conv1.out_channels == 16 and not hasattr(net.class_layers, "conv2")
    assert net.class_layers.out.in_features == 16
    assert net(torch.randn(1, 1, 32, 32)).shape == (1, 3)
