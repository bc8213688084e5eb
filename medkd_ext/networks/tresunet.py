"""TResUNet: the Transformer ResU-Net of Tomar et al. ("TransResU-Net"), in 2D and 3D, from MONAI's ResNet blocks.

A ResNet-50 encoder (stem and the bottleneck-block stages ``layer1 .. layer3`` of
:class:`monai.networks.nets.resnet.ResNetBottleneck`), a bridge of transformer self-attention over the bottleneck
tokens in parallel with dilated convolutions, a residual decoder with skip connections back to full resolution and a
1x1 convolution head. The layout follows the authors' reference implementation (``nikhilroxtomar/TransResUNet``):
bridge widths of a quarter of the last stage's channels, decoder widths 256/128/64/32 at base width 64, the input
image as the last skip, dilations 1/3/6/9, two transformer layers with eight heads.
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from monai.networks.blocks import Convolution, UpSample
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets.resnet import ResNetBottleneck
from torch import nn
from torch.nn import functional as F

from medkd_ext.networks.segunet import check_spatial_size
from medkd_ext.utils import check_positive_int, check_positive_ints, is_positive_int

__all__ = ["TResUNet"]

_MAX_SHOWN = 5


class _ResidualBlock(nn.Module):
    """``act(norm(conv3(act(norm(conv3(x))))) + norm(conv1(x)))``, the decoder block of the reference code."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, norm: str | tuple, act: str | tuple):
        super().__init__()
        self.conv = nn.Sequential(
            Convolution(spatial_dims, in_channels, out_channels, kernel_size=3, norm=norm, act=act, adn_ordering="NA"),
            Convolution(spatial_dims, out_channels, out_channels, kernel_size=3, norm=norm, act=None, adn_ordering="N"),
        )
        self.shortcut = Convolution(
            spatial_dims, in_channels, out_channels, kernel_size=1, norm=norm, act=None, adn_ordering="N"
        )
        self.act = get_act_layer(act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x) + self.shortcut(x))


class _DecoderBlock(nn.Module):
    """Upsampling by 2 (bi/trilinear), concatenation with the skip, two residual blocks."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        skip_channels: int,
        out_channels: int,
        norm: str | tuple,
        act: str | tuple,
    ) -> None:
        super().__init__()
        self.up = UpSample(
            spatial_dims, scale_factor=2, mode="nontrainable", pre_conv=None, interp_mode="linear", align_corners=False
        )
        self.res1 = _ResidualBlock(spatial_dims, in_channels + skip_channels, out_channels, norm, act)
        self.res2 = _ResidualBlock(spatial_dims, out_channels, out_channels, norm, act)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.res2(self.res1(torch.cat([self.up(x), skip], dim=1)))


class _SelfAttentionLayer(nn.Module):
    """Post-norm transformer encoder layer over tokens ``(B, N, dim)``, as ``nn.TransformerEncoderLayer``.

    Written with ``scaled_dot_product_attention`` so that the computation (and a traced graph) is the same with and
    without gradients: ``nn.TransformerEncoderLayer`` switches to a fused kernel under ``torch.no_grad()`` in eval
    mode, which makes ``torch.jit.trace``'s consistency check fail when the trace is taken with gradients enabled.
    Same parameters as ``nn.TransformerEncoderLayer(dim, num_heads, mlp_dim, dropout)`` (ReLU feed-forward).
    """

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.attention_dropout = dropout
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.drop1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(mlp_dim, dim))
        self.drop2 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, dim = tokens.shape[0], tokens.shape[1], tokens.shape[2]
        qkv = self.qkv(tokens).reshape(batch, length, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        dropout = self.attention_dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], dropout_p=dropout)
        attended = attended.transpose(1, 2).reshape(batch, length, dim)
        tokens = self.norm1(tokens + self.drop1(self.proj(attended)))
        return self.norm2(tokens + self.drop2(self.mlp(tokens)))


class _TransformerBranch(nn.Module):
    """1x1 projection, convolutional positional encoding, self-attention layers over the voxels as tokens, 3x3 conv.

    The positional encoding is a depthwise 3x3(x3) convolution added to the features before flattening (a
    position-encoding generator), so it works for any input size; the reference code has none.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        dim: int,
        num_heads: int,
        num_layers: int,
        dropout: float,
        norm: str | tuple,
        act: str | tuple,
    ) -> None:
        super().__init__()
        self.proj = Convolution(spatial_dims, in_channels, dim, kernel_size=1, norm=norm, act=act, adn_ordering="NA")
        self.pos_embed = Conv[Conv.CONV, spatial_dims](dim, dim, kernel_size=3, padding=1, groups=dim)
        self.layers = nn.ModuleList(
            [
                _SelfAttentionLayer(dim, num_heads, mlp_dim=8 * dim, dropout=dropout)
                for _ in range(num_layers)
            ]
        )
        self.out = Convolution(spatial_dims, dim, dim, kernel_size=3, norm=norm, act=act, adn_ordering="NA")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        x = x + self.pos_embed(x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, N, dim), N = number of bottleneck voxels
        for layer in self.layers:
            tokens = layer(tokens)
        return self.out(tokens.transpose(1, 2).reshape(x.shape))


class _DilatedBranch(nn.Module):
    """Parallel dilated 3x3(x3) convolutions (ASPP-like), concatenated and fused by a 1x1 convolution."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        dilations: Sequence[int],
        norm: str | tuple,
        act: str | tuple,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [
                Convolution(
                    spatial_dims, in_channels, out_channels, kernel_size=3, dilation=d, norm=norm, act=act,
                    adn_ordering="NA",
                )  # fmt: skip
                for d in dilations
            ]
        )
        self.fuse = Convolution(
            spatial_dims, len(dilations) * out_channels, out_channels, kernel_size=1, norm=norm, act=act,
            adn_ordering="NA",
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([branch(x) for branch in self.branches], dim=1))


class _Bridge(nn.Module):
    """The bottleneck: transformer branch and dilated branch on the deepest encoder features, concatenated."""

    def __init__(self, attention: nn.Module, dilated: nn.Module) -> None:
        super().__init__()
        self.attention = attention
        self.dilated = dilated

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.attention(x), self.dilated(x)], dim=1)


class TResUNet(nn.Module):
    """Transformer ResU-Net (Tomar et al., "TransResU-Net"), 2D and 3D, with the encoder of a ResNet-50.

    With ``b = base_width`` and ``n = len(layers)`` stages (3 as in the paper):

    - ``encoder.0``, the stem: 7x7(x7) convolution stride 2, ``norm``, ``act`` -> ``b`` channels at stride 2
      (sub-modules ``conv1``, ``bn1``, ``relu``);
    - ``encoder.1``: 3x3(x3) max-pool stride 2 (``maxpool``) and ``layers[0]`` bottleneck blocks
      (:class:`~monai.networks.nets.resnet.ResNetBottleneck`, expansion 4) -> ``4b`` channels at stride 4;
    - ``encoder.k`` (``2 <= k <= n``): ``layers[k-1]`` bottleneck blocks, the first with stride 2 ->
      ``4b * 2^(k-1)`` channels at stride ``2^(k+1)``; with the defaults 256, 512 and 1024 channels at strides
      4, 8 and 16, as ResNet-50's ``layer1 .. layer3``;
    - ``bottleneck`` (the bridge): on the output of ``encoder.n``, a transformer branch (1x1 projection to
      ``w = b * 2^(n-1)`` channels, a convolutional positional encoding, ``transformer_layers``
      post-norm transformer encoder layers with ``num_heads`` heads and a feed-forward width ``8w``, 3x3(x3) conv) and
      a dilated branch (one 3x3(x3) convolution per entry of ``dilations`` with ``w`` channels, concatenated, 1x1
      conv to ``w``) run in parallel and are concatenated: ``2w`` channels (512 at base 64) at the coarsest stride;
    - ``decoder.j`` (``j = 0 .. n``): upsampling by 2 (bi/trilinear), concatenation with the output of
      ``encoder.{n-1-j}`` (the input image for the last block) and two residual blocks (two 3x3(x3) conv-norm with
      an activation between, a 1x1 conv-norm shortcut, activation after the sum), with ``b * 2^(n-1-j)`` output
      channels (256, 128, 64, 32 at base 64; at least 1);
    - ``head``: 1x1 convolution to ``out_channels`` logits (the paper's sigmoid belongs to the loss and the
      post-processing).

    Attention budget: self-attention runs over the bottleneck voxels only, at stride ``divisor = 2^(n+1)`` (16 with
    three stages, as in the paper), i.e. ``prod(spatial) / 16^d`` tokens: 256 for a 256x256 image, 27 for a 48^3
    patch, 512 for a 128^3 patch. The attention matrix grows with the square of that number, so keep 3D patches at
    a few hundred tokens (128^3 or smaller on a GPU, 48^3 to 96^3 on a CPU).

    Interface used by the distillation taps, the joint teacher and :class:`~medkd_ext.networks.MultiHeadSegNet`:
    ``feature_layers`` (``["encoder.0", ..., "encoder.{n}", "bottleneck"]``), ``feature_channels``
    (``[64, 256, 512, 1024, 512]`` at base 64), ``feature_strides`` (``[2, 4, 8, 16, 16]``), ``divisor``,
    ``decoder_channels`` (channels entering ``head``) and ``out_channels``.

    Parameter counts: 2D, in_channels=3, out_channels=1 (the paper's polyp setting): 27,599,585; 3D,
    in_channels=1, out_channels=2: 67,005,890; 3D, in_channels=1, out_channels=2 with ``base_width=8``: 1,056,090,
    with ``base_width=16``: 4,203,506 (``norm="batch"``; an affine-free ``"instance"`` norm has slightly fewer).

    Pretrained weights: ImageNet weights cannot be downloaded here. ``pretrained=True`` needs ``pretrained_path``,
    a local torchvision-style ResNet-50 state dict (``conv1.weight``, ``bn1.*``, ``layer1.0.conv1.weight``, ...;
    ``fc.*`` and deeper stages are ignored), loaded into the encoder of a 2D network with ``base_width=64``,
    ``norm="batch"`` and ``layers`` a prefix of ``(3, 4, 6, 3)``. For ``in_channels != 3`` the stem kernel is
    summed over the RGB channels and divided evenly over the input channels. See :meth:`load_resnet_weights`.

    The network is traceable (``torch.jit.trace``) and scriptable (``torch.jit.script``).

    Args:
        spatial_dims: number of spatial dimensions of the input (2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels (classes; logits).
        base_width: channels of the stem; the stages have ``base_width * 2^k`` planes (x4 after expansion). 64 is
            ResNet-50; 8 to 16 makes a light 3D network.
        layers: bottleneck blocks per stage, 1 to 4 stages; ``(3, 4, 6)`` is ResNet-50 up to ``layer3``.
        num_heads: attention heads; must divide the bridge width ``base_width * 2^(len(layers) - 1)``.
        transformer_layers: number of transformer encoder layers in the bridge.
        dilations: dilation rates of the parallel convolutions of the bridge.
        transformer_dropout: dropout inside the transformer layers, in ``[0, 1)``.
        norm: normalisation type and arguments, as in MONAI (``"batch"`` as ResNet; ``"instance"`` for batches of
            one or two 3D patches).
        act: activation type and arguments, as in MONAI.
        pretrained: load ResNet-50 weights into the encoder from ``pretrained_path``.
        pretrained_path: a local torchvision-style ResNet-50 state dict file; only with ``pretrained=True``.

    Shapes:
        input ``(B, in_channels, *spatial)`` with every spatial size a multiple of ``divisor``; output
        ``(B, out_channels, *spatial)``.

    Raises:
        ValueError: a bad argument (named in the message), ``pretrained=True`` without ``pretrained_path``, a state
            dict that does not fit; at forward time, an input whose spatial size is not a multiple of ``divisor``.
        FileNotFoundError: ``pretrained_path`` does not exist.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        base_width: int = 64,
        layers: Sequence[int] = (3, 4, 6),
        num_heads: int = 8,
        transformer_layers: int = 2,
        dilations: Sequence[int] = (1, 3, 6, 9),
        transformer_dropout: float = 0.1,
        norm: str | tuple = "batch",
        act: str | tuple = ("relu", {"inplace": True}),
        pretrained: bool = False,
        pretrained_path: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"TResUNet: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("base_width", base_width),
            ("num_heads", num_heads),
            ("transformer_layers", transformer_layers),
        ):
            check_positive_int(value, "TResUNet", name)
        layers = tuple(layers)
        if not 1 <= len(layers) <= 4 or not all(is_positive_int(v) for v in layers):
            raise ValueError(
                f"TResUNet: layers must give 1 to 4 positive block counts (ResNet-50: (3, 4, 6) up to layer3), "
                f"got {layers!r}."
            )
        dilations = check_positive_ints(dilations, "TResUNet", "dilations")
        if not 0.0 <= float(transformer_dropout) < 1.0:
            raise ValueError(f"TResUNet: transformer_dropout must be in [0, 1), got {transformer_dropout!r}.")
        num_stages = len(layers)
        bridge_width = base_width * 2 ** (num_stages - 1)
        if bridge_width % num_heads != 0:
            raise ValueError(
                f"TResUNet: num_heads={num_heads} must divide the bridge width base_width * 2^(len(layers) - 1) = "
                f"{bridge_width}; choose num_heads among the divisors of {bridge_width} or change base_width."
            )
        if pretrained and pretrained_path is None:
            raise ValueError(
                "TResUNet: pretrained=True, but ImageNet weights cannot be downloaded here. Pass pretrained_path, the "
                "path of a local torchvision-style ResNet-50 state dict (e.g. saved with "
                "torch.save(torchvision.models.resnet50(weights='IMAGENET1K_V1').state_dict(), 'resnet50.pt') on a "
                "machine with internet access), or use pretrained=False."
            )
        if not pretrained and pretrained_path is not None:
            raise ValueError(
                f"TResUNet: pretrained_path={str(pretrained_path)!r} is given but pretrained=False; set "
                "pretrained=True to load it, or drop pretrained_path."
            )
        if pretrained and spatial_dims != 2:
            raise ValueError(
                "TResUNet: pretrained=True loads 2D ImageNet ResNet-50 weights, which do not fit spatial_dims=3; "
                "train the 3D network from scratch (pretrained=False) or load a 3D checkpoint of this network with "
                "medkd_ext.networks.load_state_dict."
            )

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.base_width = base_width
        self.layers = layers

        conv_type = Conv[Conv.CONV, spatial_dims]
        stem = nn.Sequential(
            OrderedDict(
                conv1=conv_type(in_channels, base_width, kernel_size=7, stride=2, padding=3, bias=False),
                bn1=get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=base_width),
                relu=get_act_layer(act),
            )
        )
        encoder: list[nn.Module] = [stem]
        in_planes = base_width
        for k, blocks in enumerate(layers):
            planes = base_width * 2**k
            stride = 1 if k == 0 else 2
            stage: OrderedDict[str, nn.Module] = OrderedDict()
            if k == 0:
                stage["maxpool"] = Pool[Pool.MAX, spatial_dims](kernel_size=3, stride=2, padding=1)
            for i in range(blocks):
                downsample = None
                if i == 0 and (stride != 1 or in_planes != planes * ResNetBottleneck.expansion):
                    downsample = nn.Sequential(
                        conv_type(in_planes, planes * ResNetBottleneck.expansion, kernel_size=1, stride=stride,
                                  bias=False),
                        get_norm_layer(name=norm, spatial_dims=spatial_dims,
                                       channels=planes * ResNetBottleneck.expansion),
                    )  # fmt: skip
                stage[str(i)] = ResNetBottleneck(
                    in_planes, planes, spatial_dims=spatial_dims, stride=stride if i == 0 else 1,
                    downsample=downsample, act=act, norm=norm,
                )  # fmt: skip
                in_planes = planes * ResNetBottleneck.expansion
            encoder.append(nn.Sequential(stage))
        self.encoder = nn.ModuleList(encoder)

        self.bottleneck = _Bridge(
            _TransformerBranch(
                spatial_dims, in_planes, bridge_width, num_heads, transformer_layers, float(transformer_dropout),
                norm, act,
            ),
            _DilatedBranch(spatial_dims, in_planes, bridge_width, dilations, norm, act),
        )  # fmt: skip

        level_channels = [base_width] + [base_width * 4 * 2**k for k in range(num_stages)]
        skip_channels = [in_channels] + level_channels[:-1]  # the input image, encoder.0 .. encoder.{n-1}
        decoder = []
        channels = 2 * bridge_width
        for j in range(num_stages + 1):
            out = max(1, (base_width * 2 ** (num_stages - 1)) >> j)
            decoder.append(_DecoderBlock(spatial_dims, channels, skip_channels[num_stages - j], out, norm, act))
            channels = out
        self.decoder = nn.ModuleList(decoder)
        self.head = conv_type(channels, out_channels, kernel_size=1)

        self.divisor = 2 ** (num_stages + 1)
        self.decoder_channels = channels
        self.feature_layers = [f"encoder.{k}" for k in range(num_stages + 1)] + ["bottleneck"]
        self.feature_channels = level_channels + [2 * bridge_width]
        self.feature_strides = [2 ** (k + 1) for k in range(num_stages + 1)] + [self.divisor]

        if pretrained:
            self.load_resnet_weights(pretrained_path)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for an input ``(B, in_channels, *spatial)``."""
        if not torch.jit.is_tracing():
            check_spatial_size(x, self.spatial_dims, self.divisor, "TResUNet")
        skips: list[torch.Tensor] = [x]
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        x = self.bottleneck(x)
        num_skips = len(skips)
        for j, block in enumerate(self.decoder):
            x = block(x, skips[num_skips - 2 - j])  # skips[-1] is the bridge's input, not a skip
        return self.head(x)

    @torch.jit.unused
    def load_resnet_weights(self, path: str | os.PathLike) -> None:
        """Load a local torchvision-style ResNet-50 state dict into the encoder (2D only).

        ``conv1.*``/``bn1.*`` go to ``encoder.0``, ``layer{k}.*`` to ``encoder.{k}`` for the stages this network has;
        ``fc.*`` and deeper stages are ignored. A checkpoint nested under ``"state_dict"`` or ``"model"`` and keys
        prefixed with ``"module."`` are accepted. With ``in_channels != 3``, the stem kernel is summed over its three
        input channels and divided evenly over ``in_channels`` (a grey image copied to RGB gives the same response).
        Every encoder tensor must be provided and fit; the bridge, decoder and head keep their initialisation.

        Args:
            path: the state dict file, read with ``torch.load(..., weights_only=True)``.

        Raises:
            FileNotFoundError: ``path`` does not exist.
            ValueError: the file cannot be read, is not a state dict, or does not fit the encoder (the message lists
                the missing, unexpected or mis-shaped keys).
        """
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"TResUNet: pretrained_path {str(file)!r} does not exist; give the path of a local torchvision-style "
                "ResNet-50 state dict."
            )
        if self.spatial_dims != 2:
            raise ValueError("TResUNet: ResNet-50 ImageNet weights are 2D and fit only spatial_dims=2.")
        try:
            loaded = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"TResUNet: cannot read pretrained_path {str(file)!r} as a state dict of tensors ({error})."
            ) from error
        for nest in ("state_dict", "model"):
            if isinstance(loaded, Mapping) and isinstance(loaded.get(nest), Mapping):
                loaded = loaded[nest]
        if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
            raise ValueError(f"TResUNet: {str(file)!r} does not hold a state dict ({{key: tensor}}).")

        own = {k: v for k, v in self.state_dict().items() if k.startswith("encoder.")}
        mapped: dict[str, torch.Tensor] = {}
        for key, value in loaded.items():
            key = key.removeprefix("module.")
            stage = re.match(r"layer(\d+)\.(.*)", key)
            if key.startswith(("conv1.", "bn1.")):
                mapped[f"encoder.0.{key}"] = value
            elif stage and 1 <= int(stage.group(1)) <= len(self.layers):
                mapped[f"encoder.{stage.group(1)}.{stage.group(2)}"] = value
        stem_key = "encoder.0.conv1.weight"
        stem = mapped.get(stem_key)
        if stem is not None and stem.dim() == 4 and stem.shape[1] == 3 and self.in_channels != 3:
            summed = stem.sum(dim=1, keepdim=True)
            mapped[stem_key] = summed.repeat(1, self.in_channels, 1, 1) / self.in_channels

        missing = sorted(set(own) - set(mapped))
        unexpected = sorted(set(mapped) - set(own))
        mis_shaped = sorted(k for k in set(own) & set(mapped) if own[k].shape != mapped[k].shape)
        if missing or unexpected or mis_shaped:
            problems = []
            if missing:
                problems.append(f"{len(missing)} encoder tensors missing (e.g. {missing[:_MAX_SHOWN]})")
            if unexpected:
                problems.append(f"{len(unexpected)} tensors without a place (e.g. {unexpected[:_MAX_SHOWN]})")
            if mis_shaped:
                shown = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in mis_shaped[:_MAX_SHOWN]]
                problems.append(f"{len(mis_shaped)} shapes differ (file vs network: {shown})")
            raise ValueError(
                f"TResUNet: {str(file)!r} does not fit the encoder: {'; '.join(problems)}. It must be a torchvision "
                f"ResNet-50 state dict, and the network needs base_width=64, norm='batch' and layers a prefix of "
                f"(3, 4, 6, 3) (got base_width={self.base_width}, layers={self.layers})."
            )
        with torch.no_grad():
            for key, value in mapped.items():
                own[key].copy_(value)
