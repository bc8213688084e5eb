from __future__ import annotations

import warnings

import pytest
import torch
from monai.networks.nets import resnet50

from medkd_ext.networks import FeatureTaps, TResUNet


def tiny(spatial_dims: int = 2, in_channels: int = 1, **kwargs) -> TResUNet:
    torch.manual_seed(0)
    args = {"base_width": 4, "layers": (1, 1, 1), "num_heads": 2, "transformer_layers": 1}
    args.update(kwargs)
    return TResUNet(spatial_dims, in_channels, 2, **args)


def count(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.fixture(scope="module")
def resnet50_file(tmp_path_factory):
    """A ResNet-50 state dict with torchvision's key names and shapes (MONAI's 2D resnet50 uses the same), saved
    without ``layer4`` to keep the test fast; ``fc`` stays as a key the loader must ignore."""
    torch.manual_seed(1)
    net = resnet50(spatial_dims=2, n_input_channels=3, shortcut_type="B", bias_downsample=False, num_classes=10)
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("layer4.")}
    for value in state.values():
        if value.is_floating_point():
            value.normal_()  # distinct values everywhere (BN statistics too)
    path = tmp_path_factory.mktemp("weights") / "resnet50.pt"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("spatial_dims, size", [(2, (32, 16)), (3, (16, 16, 32))])
def test_output_has_input_spatial_size(spatial_dims, size):
    net = tiny(spatial_dims)
    y = net(torch.randn(2, 1, *size))
    assert y.shape == (2, 2, *size)
    assert net.divisor == 16


@pytest.mark.parametrize("spatial_dims, layers", [(2, (1, 1, 1)), (3, (1, 1, 1)), (2, (1, 1)), (2, (1, 1, 1, 1))])
def test_feature_taps_record_the_declared_levels(spatial_dims, layers):
    net = tiny(spatial_dims, layers=layers)
    n = len(layers)
    assert net.feature_layers == [f"encoder.{k}" for k in range(n + 1)] + ["bottleneck"]
    assert net.feature_strides == [2 ** (k + 1) for k in range(n + 1)] + [2 ** (n + 1)]
    assert net.feature_channels == [4] + [16 * 2**k for k in range(n)] + [2 * 4 * 2 ** (n - 1)]
    size = (2 * net.divisor,) * spatial_dims
    x = torch.randn(2, 1, *size)
    with FeatureTaps(net, net.feature_layers) as taps:
        y = net(x)
        feats = taps.features
    assert y.shape == (2, 2, *size)
    for name, c, s in zip(net.feature_layers, net.feature_channels, net.feature_strides):
        assert feats[name].shape == (2, c, *(m // s for m in size)), name


def test_resnet50_widths_and_layout():
    net = TResUNet(2, 3, 1)
    assert net.feature_channels == [64, 256, 512, 1024, 512]
    assert net.feature_strides == [2, 4, 8, 16, 16]
    assert net.decoder_channels == 32
    assert [len(net.encoder[k]) for k in range(4)] == [3, 1 + 3, 4, 6]  # stem; maxpool + 3 blocks; 4; 6
    assert count(net) == 27_599_585 and "27,599,585" in TResUNet.__doc__


def test_parameter_counts_light_3d():
    assert count(TResUNet(3, 1, 2, base_width=8)) == 1_056_090
    assert count(TResUNet(3, 1, 2, base_width=16)) == 4_203_506
    assert "1,056,090" in TResUNet.__doc__ and "4,203,506" in TResUNet.__doc__


@pytest.mark.slow
def test_parameter_count_default_3d():
    assert count(TResUNet(3, 1, 2)) == 67_005_890
    assert "67,005,890" in TResUNet.__doc__


def test_light_3d_demo_patch_and_attention_budget():
    torch.manual_seed(0)
    net = TResUNet(3, 1, 2, base_width=8, norm="instance")
    seen = []
    net.bottleneck.attention.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    x = torch.randn(1, 1, 48, 48, 48)
    y = net(x)
    assert y.shape == (1, 2, 48, 48, 48)
    assert seen == [(1, 27, 32)]  # (48 / 16)^3 tokens of width base_width * 4
    y.mean().backward()
    assert net.encoder[0].conv1.weight.grad is not None
    assert net.bottleneck.attention.pos_embed.weight.grad.abs().sum() > 0


def test_indivisible_input_is_a_clear_error():
    net = tiny(2)
    with pytest.raises(ValueError, match=r"spatial size \[32, 40\] is not divisible by the network's divisor 16"):
        net(torch.randn(1, 1, 32, 40))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_dims": 1}, "spatial_dims must be 2 or 3"),
        ({"layers": ()}, "layers must give 1 to 4"),
        ({"layers": (1, 1, 1, 1, 1)}, "layers must give 1 to 4"),
        ({"num_heads": 3}, "num_heads=3 must divide the bridge width"),
        ({"dilations": ()}, "dilations"),
        ({"base_width": 0}, "base_width must be a positive int"),
        ({"transformer_dropout": -0.1}, "transformer_dropout"),
        ({"pretrained": True}, "ImageNet weights cannot be downloaded here. Pass pretrained_path"),
        ({"pretrained_path": "resnet50.pt"}, "pretrained=False"),
        ({"spatial_dims": 3, "pretrained": True, "pretrained_path": "x.pt"}, "do not fit spatial_dims=3"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"spatial_dims": 2, "in_channels": 1, "out_channels": 1, "base_width": 4, "num_heads": 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TResUNet(**args)


def test_missing_pretrained_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pt"):
        TResUNet(2, 3, 1, layers=(1,), pretrained=True, pretrained_path=tmp_path / "nothere.pt")


def test_pretrained_resnet50_loads_into_the_encoder(resnet50_file):
    path, state = resnet50_file
    net = TResUNet(2, 3, 1, layers=(3, 4), pretrained=True, pretrained_path=path)  # layer3 and fc are ignored
    own = net.state_dict()
    torch.testing.assert_close(own["encoder.0.conv1.weight"], state["conv1.weight"])
    torch.testing.assert_close(own["encoder.0.bn1.running_var"], state["bn1.running_var"])
    torch.testing.assert_close(own["encoder.1.2.conv3.weight"], state["layer1.2.conv3.weight"])
    torch.testing.assert_close(own["encoder.2.0.downsample.1.bias"], state["layer2.0.downsample.1.bias"])
    torch.testing.assert_close(own["encoder.2.3.bn3.running_mean"], state["layer2.3.bn3.running_mean"])
    encoder_keys = [k for k in own if k.startswith("encoder.")]
    assert len(encoder_keys) == len([k for k in state if k.startswith(("conv1.", "bn1.", "layer1.", "layer2."))])


def test_pretrained_grey_input_sums_the_rgb_kernel(resnet50_file, tmp_path):
    _, state = resnet50_file
    nested = tmp_path / "nested.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, nested)
    net = TResUNet(2, 2, 1, layers=(3,), pretrained=True, pretrained_path=nested)
    stem = net.encoder[0].conv1.weight
    assert stem.shape == (64, 2, 7, 7)
    torch.testing.assert_close(stem.sum(dim=1), state["conv1.weight"].sum(dim=1))
    torch.testing.assert_close(stem[:, 0], stem[:, 1])


def test_pretrained_state_dict_of_another_width_is_refused(resnet50_file, tmp_path):
    path, _ = resnet50_file
    with pytest.raises(ValueError, match=r"does not fit the encoder: .*shapes differ .*base_width=64"):
        TResUNet(2, 3, 1, base_width=32, layers=(1,), pretrained=True, pretrained_path=path)
    with pytest.raises(ValueError, match=r"18 encoder tensors missing \(e.g. \['encoder.1.3"):
        TResUNet(2, 3, 1, layers=(4,), pretrained=True, pretrained_path=path)
    with pytest.raises(ValueError, match="tensors without a place"):  # affine-free instance norm: no BN tensors
        TResUNet(2, 3, 1, layers=(1,), norm="instance", pretrained=True, pretrained_path=path)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        TResUNet(2, 3, 1, layers=(1,), pretrained=True, pretrained_path=tmp_path / "junk.pt")


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_torchscript_trace_matches_eager(spatial_dims):
    net = tiny(spatial_dims, in_channels=2).eval()
    x = torch.randn(2, 2, *(16,) * spatial_dims)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(net, x)  # with gradients enabled: the trace check runs the graph again
    with torch.no_grad():
        torch.testing.assert_close(traced(x), net(x), atol=1e-4, rtol=0)
        bigger = torch.randn(1, 2, *(32,) * spatial_dims)
        torch.testing.assert_close(traced(bigger), net(bigger), atol=1e-4, rtol=0)


def test_torchscript_script_matches_eager():
    net = tiny(2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(net)
    x = torch.randn(1, 1, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-4, rtol=0)


def test_self_attention_layer_equals_torch_transformer_encoder_layer():
    from medkd_ext.networks.tresunet import _SelfAttentionLayer

    torch.manual_seed(0)
    reference = torch.nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, dropout=0.1, batch_first=True).eval()
    layer = _SelfAttentionLayer(8, 2, mlp_dim=16, dropout=0.1).eval()
    layer.load_state_dict(
        {
            "qkv.weight": reference.self_attn.in_proj_weight,
            "qkv.bias": reference.self_attn.in_proj_bias,
            "proj.weight": reference.self_attn.out_proj.weight,
            "proj.bias": reference.self_attn.out_proj.bias,
            "norm1.weight": reference.norm1.weight,
            "norm1.bias": reference.norm1.bias,
            "mlp.0.weight": reference.linear1.weight,
            "mlp.0.bias": reference.linear1.bias,
            "mlp.3.weight": reference.linear2.weight,
            "mlp.3.bias": reference.linear2.bias,
            "norm2.weight": reference.norm2.weight,
            "norm2.bias": reference.norm2.bias,
        }
    )
    tokens = torch.randn(3, 5, 8)
    torch.testing.assert_close(layer(tokens), reference(tokens))
    assert sum(p.numel() for p in layer.parameters()) == sum(p.numel() for p in reference.parameters())
