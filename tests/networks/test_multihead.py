from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medkd_ext.networks import FeatureTaps, MultiHeadSegNet, SegUNet, TResUNet


def unet(spatial_dims: int = 2, out_channels: int = 2) -> SegUNet:
    torch.manual_seed(0)
    return SegUNet(spatial_dims, 1, out_channels, channels=(4, 8, 16), strides=(2, 2))


class PlainNet(nn.Module):
    """A network with the interface but no decoder_channels/spatial_dims/out_channels attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.ModuleList([nn.Conv2d(1, 5, 3, padding=1)])
        self.bottleneck = nn.Conv2d(5, 6, 3, padding=1)
        self.head = nn.Conv2d(6, 2, 1)
        self.feature_layers = ["encoder.0", "bottleneck"]
        self.feature_channels = [5, 6]
        self.feature_strides = [1, 1]
        self.divisor = 1

    def forward(self, x):
        return self.head(self.bottleneck(self.encoder[0](x)))


def test_each_head_has_its_own_channels():
    net = MultiHeadSegNet(unet(3), 3, head_channels=(2, 3, 1))
    x = torch.randn(2, 1, 8, 8, 4)
    assert [tuple(net(x, head=k).shape) for k in range(3)] == [(2, 2, 8, 8, 4), (2, 3, 8, 8, 4), (2, 1, 8, 8, 4)]
    assert net(x).shape == (2, 2, 8, 8, 4)
    assert isinstance(net.backbone.head, nn.Identity)
    assert net.head_channels == [2, 3, 1] and net.decoder_channels == 4


def test_a_head_with_the_original_weights_reproduces_the_single_head_network():
    backbone = unet(2)
    x = torch.randn(2, 1, 8, 12)
    expected = backbone(x)
    original_head = copy.deepcopy(backbone.head)
    net = MultiHeadSegNet(backbone, 2)
    net.heads[1].load_state_dict(original_head.state_dict())
    torch.testing.assert_close(net(x, head=1), expected)
    assert not torch.allclose(net(x, head=0), expected)


def test_heads_are_independent():
    net = MultiHeadSegNet(unet(2), 3)
    loss = net(torch.randn(2, 1, 8, 8), head=0).square().mean()
    loss.backward()
    assert net.heads[0].weight.grad is not None and net.heads[0].weight.grad.abs().sum() > 0
    assert all(p.grad is None for k in (1, 2) for p in net.heads[k].parameters())
    assert net.backbone.encoder[0].conv.unit0.conv.weight.grad.abs().sum() > 0


def test_interface_is_reexposed_for_feature_taps():
    net = MultiHeadSegNet(unet(2), 2)
    assert net.feature_layers == ["backbone.encoder.0", "backbone.encoder.1", "backbone.bottleneck"]
    assert net.feature_channels == [4, 8, 16] and net.feature_strides == [1, 2, 4] and net.divisor == 4
    x = torch.randn(1, 1, 16, 8)
    with FeatureTaps(net, net.feature_layers) as taps:
        net(x, head=1)
        feats = taps.features
    for name, c, s in zip(net.feature_layers, net.feature_channels, net.feature_strides):
        assert feats[name].shape == (1, c, 16 // s, 8 // s)


def test_tresunet_backbone():
    torch.manual_seed(0)
    backbone = TResUNet(2, 1, 1, base_width=4, layers=(1, 1), num_heads=2, transformer_layers=1)
    net = MultiHeadSegNet(backbone, 2, head_channels=3)
    assert net.heads[1].in_channels == backbone.decoder_channels == 2
    assert net(torch.randn(1, 1, 16, 16), head=1).shape == (1, 3, 16, 16)
    assert net.feature_layers[-1] == "backbone.bottleneck"


def test_backbone_without_decoder_channels_uses_the_head_convolution():
    net = MultiHeadSegNet(PlainNet(), 2, head_channels=4)
    assert net.decoder_channels == 6 and net.spatial_dims == 2
    assert net(torch.randn(1, 1, 5, 5), head=1).shape == (1, 4, 5, 5)


def test_bad_arguments():
    with pytest.raises(TypeError, match="backbone must be a torch.nn.Module"):
        MultiHeadSegNet("unet", 2)
    with pytest.raises(ValueError, match=r"lacks \['head', 'feature_layers'"):
        MultiHeadSegNet(nn.Conv2d(1, 1, 1), 2)
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        MultiHeadSegNet(unet(), 0)
    with pytest.raises(ValueError, match="head_channels must be a positive int or 2 positive ints"):
        MultiHeadSegNet(unet(), 2, head_channels=(1, 2, 3))
    with pytest.raises(ValueError, match="no out_channels attribute; give head_channels"):
        MultiHeadSegNet(PlainNet(), 2)
    net = MultiHeadSegNet(unet(), 2)
    with pytest.raises(ValueError, match=r"head must be in \[0, 2\)"):
        net(torch.randn(1, 1, 8, 8), head=2)
