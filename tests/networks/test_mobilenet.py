from __future__ import annotations

import pytest
import torch

from medkd_ext.networks import FeatureTaps, MobileNetV2
from medkd_ext.networks.mobilenet import InvertedResidual


@pytest.mark.parametrize("spatial_dims,shape", [(2, (2, 1, 32, 32)), (3, (2, 2, 16, 16, 16))])
def test_output_shape_and_gradients_2d_3d(spatial_dims, shape):
    net = MobileNetV2(spatial_dims, in_channels=shape[1], out_channels=5, width_mult=0.25)
    x = torch.rand(*shape)
    out = net(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_standard_network_matches_the_paper_size_and_width_scales_it():
    # MobileNetV2 1.0 with 1000 ImageNet classes has 3.50M parameters (Sandler et al., Table 3; torchvision: 3,504,872)
    net = MobileNetV2(2, in_channels=3, out_channels=1000)
    assert sum(p.numel() for p in net.parameters()) == 3_504_872
    assert len(net.features) == 19  # stem, 17 inverted residual blocks, last 1x1 conv
    small = MobileNetV2(2, in_channels=3, out_channels=1000, width_mult=0.5)
    assert sum(p.numel() for p in small.parameters()) < 0.6 * 3_504_872


def test_inverted_residual_shortcut_only_when_shapes_match():
    keep = InvertedResidual(2, 8, 8, stride=1, expand_ratio=6)
    down = InvertedResidual(2, 8, 16, stride=2, expand_ratio=6)
    assert keep.use_residual and not down.use_residual
    x = torch.rand(1, 8, 8, 8)
    assert keep(x).shape == x.shape and down(x).shape == (1, 16, 4, 4)
    # the projection is linear (no ReLU6 after it), so outputs can be negative
    with torch.no_grad():
        assert (down(torch.randn(4, 8, 8, 8)) < 0).any()


def test_features_can_be_tapped_and_network_is_scriptable():
    net = MobileNetV2(2, 1, 3, width_mult=0.5).eval()
    x = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        out = net(x)
        scripted = torch.jit.script(net)
        assert torch.allclose(scripted(x), out, atol=1e-5)
        taps = FeatureTaps(net, ["features.7"])
        net(x)
    assert taps.features["features.7"].shape == (1, 32, 2, 2)  # first block of the 64-channel stage, stride 16


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"spatial_dims": 1}, "spatial_dims"),
        ({"in_channels": 0}, "in_channels"),
        ({"out_channels": 2.5}, "out_channels"),
        ({"width_mult": 0}, "width_mult"),
        ({"dropout_prob": 1.0}, "dropout_prob"),
        ({"inverted_residual_setting": [(1, 16, 1)]}, "inverted_residual_setting"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        MobileNetV2(**args)
