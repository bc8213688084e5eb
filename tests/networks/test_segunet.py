from __future__ import annotations

import warnings

import pytest
import torch

from medkd_ext.networks import FeatureTaps, SegUNet, check_spatial_size


def tiny(spatial_dims: int = 2, **kwargs) -> SegUNet:
    torch.manual_seed(0)
    args = {"channels": (4, 8, 16), "strides": (2, 2)}
    args.update(kwargs)
    return SegUNet(spatial_dims, 1, 3, **args)


@pytest.mark.parametrize("spatial_dims, size", [(2, (16, 24)), (3, (8, 16, 8))])
def test_output_has_input_spatial_size(spatial_dims, size):
    net = tiny(spatial_dims)
    y = net(torch.randn(2, 1, *size))
    assert y.shape == (2, 3, *size)
    assert net.divisor == 4


def test_interface_attributes_default_config():
    net = SegUNet(3, 1, 2)
    assert net.feature_layers == ["encoder.0", "encoder.1", "encoder.2", "bottleneck"]
    assert net.feature_channels == [16, 32, 64, 128]
    assert net.feature_strides == [1, 2, 4, 8]
    assert net.divisor == 8
    assert net.decoder_channels == 16
    assert [name for name, _ in net.named_children()] == ["encoder", "bottleneck", "decoder", "head"]


@pytest.mark.parametrize(
    "spatial_dims, channels, strides, size",
    [(2, (4, 8, 16), (2, 2), (16, 8)), (3, (4, 8, 16, 8), (2, 1, 3), (12, 6, 18)), (2, (4, 8), (2,), (6, 4))],
)
def test_feature_taps_record_the_declared_levels(spatial_dims, channels, strides, size):
    net = tiny(spatial_dims, channels=channels, strides=strides)
    expected_strides = [1]
    for s in strides:
        expected_strides.append(expected_strides[-1] * s)
    assert net.feature_strides == expected_strides
    assert net.feature_channels == list(channels)
    x = torch.randn(2, 1, *size)
    with FeatureTaps(net, net.feature_layers) as taps:
        y = net(x)
        feats = taps.features
    assert y.shape == (2, 3, *size)
    assert list(feats) == net.feature_layers
    for name, c, s in zip(net.feature_layers, net.feature_channels, net.feature_strides):
        assert feats[name].shape == (2, c, *(n // s for n in size)), name
    # the bottleneck is the input of the first decoder block
    torch.testing.assert_close(feats["bottleneck"], net.bottleneck(feats[net.feature_layers[-2]]))


def test_plain_convolutions_when_no_residual_units():
    net = tiny(2, num_res_units=0, dropout=0.1)
    assert not any(type(m).__name__ == "ResidualUnit" for m in net.modules())
    assert net(torch.randn(1, 1, 8, 8)).shape == (1, 3, 8, 8)


def test_indivisible_input_is_a_clear_error():
    net = tiny(3)
    with pytest.raises(ValueError, match=r"spatial size \[8, 10, 8\] is not divisible by the network's divisor 4"):
        net(torch.randn(1, 1, 8, 10, 8))
    with pytest.raises(ValueError, match="3 spatial dims"):
        net(torch.randn(1, 1, 8, 8))


def test_check_spatial_size_accepts_multiples():
    check_spatial_size(torch.zeros(1, 1, 16, 32), 2, 16, "Net")
    with pytest.raises(ValueError, match="Net: input spatial size"):
        check_spatial_size(torch.zeros(1, 1, 16, 30), 2, 16, "Net")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 4}, "spatial_dims must be 1, 2 or 3"),
        ({"channels": (8,), "strides": ()}, "channels must be at least 2"),
        ({"channels": (4, 8, 16), "strides": (2,)}, "strides must have len"),
        ({"channels": (4, 8), "strides": (0,)}, "strides must be positive ints"),
        ({"num_res_units": -1}, "num_res_units"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"out_channels": 0}, "out_channels must be a positive int"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        SegUNet(**args)


def test_parameter_counts_in_docstring():
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    assert count(SegUNet(3, 1, 2)) == 1_173_276
    assert count(SegUNet(2, 1, 2)) == 398_844
    assert "1,173,276" in SegUNet.__doc__ and "398,844" in SegUNet.__doc__


@pytest.mark.parametrize("spatial_dims, size", [(2, (8, 12)), (3, (8, 8, 4))])
def test_torchscript_script_and_trace_match_eager(spatial_dims, size):
    net = tiny(spatial_dims).eval()
    x = torch.randn(2, 1, *size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
        traced = torch.jit.trace(net, x)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(scripted(x), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(traced(x), expected, atol=1e-4, rtol=0)
        other = torch.randn(1, 1, *(2 * n for n in size))
        torch.testing.assert_close(scripted(other), net(other), atol=1e-4, rtol=0)
    with pytest.raises(torch.jit.Error, match="not divisible by the network's divisor 4"):
        scripted(torch.randn(1, 1, *(n + 1 for n in size)))
