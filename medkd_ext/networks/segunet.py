"""SegUNet: a MONAI-style residual UNet whose encoder levels, bottleneck and decoder are separate, named modules.

MONAI's :class:`~monai.networks.nets.UNet` nests its levels in ``SkipConnection`` blocks, so the encoder output of
level 2 is ``model.1.submodule.1.submodule.0``. This network is built from the same blocks
(:class:`~monai.networks.blocks.ResidualUnit`, :class:`~monai.networks.blocks.Convolution`, transposed
convolutions) but keeps them in ``encoder.0 .. encoder.{L-1}``, ``bottleneck``, ``decoder.*`` and ``head``, so the
distillation taps and the joint teacher address every level by a short, stable name.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Conv
from torch import nn

from medkd_ext.utils import check_positive_int, is_positive_int

__all__ = ["SegUNet", "check_spatial_size"]


def check_spatial_size(x: torch.Tensor, spatial_dims: int, divisor: int, name: str) -> None:
    """Raise a ``ValueError`` unless ``x`` is ``(B, C, *spatial)`` with every spatial size a multiple of ``divisor``.

    Scriptable with TorchScript (the error then surfaces as ``torch.jit.Error`` quoting the same message).

    Args:
        x: the network input.
        spatial_dims: the number of spatial dimensions the network was built for.
        divisor: the network's total downsampling factor.
        name: the network's class name, for the message.
    """
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"{name}: input must be (B, C, *spatial) with {spatial_dims} spatial dims, got shape {list(x.shape)}."
        )
    spatial = list(x.shape[2:])
    for size in spatial:
        if size % divisor != 0:
            raise ValueError(
                f"{name}: input spatial size {spatial} is not divisible by the network's divisor {divisor}; "
                f"pad or crop every spatial size to a multiple of {divisor} (e.g. monai.transforms.DivisiblePadd "
                f"with k={divisor}, or a sliding-window roi_size that is a multiple of {divisor})."
            )


class _UpBlock(nn.Module):
    """Transposed convolution to the skip's resolution and channels, concatenation with the skip, convolution."""

    def __init__(self, up: nn.Module, conv: nn.Module) -> None:
        super().__init__()
        self.up = up
        self.conv = conv

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([self.up(x), skip], dim=1))


class SegUNet(nn.Module):
    """Residual UNet (MONAI's :class:`~monai.networks.nets.UNet` blocks) with explicitly named levels, 1D/2D/3D.

    With ``channels = (c_0, ..., c_L)`` and ``strides = (s_0, ..., s_{L-1})``:

    - ``encoder.0``: ``in_channels -> c_0`` at full resolution (stride 1);
    - ``encoder.i`` (``1 <= i < L``): ``c_{i-1} -> c_i`` with stride ``s_{i-1}``, so its output is at
      ``prod(strides[:i])``;
    - ``bottleneck``: ``c_{L-1} -> c_L`` with stride ``s_{L-1}``, at the coarsest stride ``prod(strides)``;
    - ``decoder.j`` (``j = 0 .. L-1``, coarse to fine, level ``i = L-1-j``): a transposed convolution
      ``c_{i+1} -> c_i`` with stride ``s_i`` (conv, norm, dropout, act), concatenation with the output of
      ``encoder.i`` and a residual unit ``2 c_i -> c_i``;
    - ``head``: a 1x1 convolution ``c_0 -> out_channels`` giving logits (sigmoid/softmax belong to the loss or the
      post-processing).

    Each encoder level, the bottleneck and each decoder convolution is a :class:`~monai.networks.blocks.ResidualUnit`
    with ``num_res_units`` sub-units (a plain :class:`~monai.networks.blocks.Convolution` when ``num_res_units=0``),
    kernel 3, normalisation/dropout/activation in MONAI's ``"NDA"`` order.

    Interface used by the distillation taps, the joint teacher and :class:`~medkd_ext.networks.MultiHeadSegNet`:
    ``feature_layers`` (``["encoder.0", ..., "encoder.{L-1}", "bottleneck"]``), ``feature_channels``
    (``channels``), ``feature_strides`` (``[1, s_0, s_0 s_1, ..., prod(strides)]``), ``divisor``
    (``prod(strides)``), ``decoder_channels`` (``c_0``, the channels entering ``head``) and ``out_channels``.

    Parameter counts (in_channels=1, out_channels=2, other arguments default): 3D 1,173,276 (1.17 M);
    2D 398,844.

    The network is scriptable (``torch.jit.script``) and traceable.

    Args:
        spatial_dims: number of spatial dimensions of the input (1, 2 or 3).
        in_channels: number of input channels.
        out_channels: number of output channels (classes; logits).
        channels: channels of ``encoder.0 .. encoder.{L-1}`` and of the bottleneck (at least 2 entries).
        strides: downsampling stride of ``encoder.1 .. encoder.{L-1}`` and of the bottleneck;
            ``len(strides) == len(channels) - 1``, positive ints.
        num_res_units: convolutions per residual unit; 0 gives plain convolutions.
        norm: normalisation type and arguments, as in MONAI (``"instance"``, ``"batch"``, ``("group", {...})``).
        act: activation type and arguments, as in MONAI.
        dropout: dropout rate in ``[0, 1)`` after each convolution's normalisation.

    Shapes:
        input ``(B, in_channels, *spatial)`` with every spatial size a multiple of ``divisor``; output
        ``(B, out_channels, *spatial)``.

    Raises:
        ValueError: a bad argument (named in the message); at forward time, an input whose spatial size is not a
            multiple of ``divisor`` or whose number of dimensions is wrong.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (16, 32, 64, 128),
        strides: Sequence[int] = (2, 2, 2),
        num_res_units: int = 1,
        norm: str | tuple = "instance",
        act: str | tuple = "PRELU",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"SegUNet: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        for arg, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            check_positive_int(value, "SegUNet", arg)
        channels = tuple(channels)
        strides = tuple(strides)
        if len(channels) < 2 or not all(is_positive_int(c) for c in channels):
            raise ValueError(
                f"SegUNet: channels must be at least 2 positive ints (encoder levels, then the bottleneck), "
                f"got {channels!r}."
            )
        if len(strides) != len(channels) - 1:
            raise ValueError(
                f"SegUNet: strides must have len(channels) - 1 = {len(channels) - 1} entries (one per downsampling "
                f"between consecutive levels), got {strides!r} for channels {channels!r}."
            )
        if not all(is_positive_int(s) for s in strides):
            raise ValueError(f"SegUNet: strides must be positive ints, got {strides!r}.")
        if not isinstance(num_res_units, int) or num_res_units < 0:
            raise ValueError(f"SegUNet: num_res_units must be an int >= 0, got {num_res_units!r}.")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"SegUNet: dropout must be in [0, 1), got {dropout!r}.")

        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.strides = strides
        self.num_res_units = num_res_units
        drop = float(dropout) if dropout else None

        def block(c_in: int, c_out: int, stride: int) -> nn.Module:
            if num_res_units > 0:
                return ResidualUnit(
                    spatial_dims, c_in, c_out, strides=stride, kernel_size=3, subunits=num_res_units,
                    act=act, norm=norm, dropout=drop,
                )  # fmt: skip
            return Convolution(
                spatial_dims, c_in, c_out, strides=stride, kernel_size=3, act=act, norm=norm, dropout=drop
            )

        num_levels = len(channels) - 1
        level_in = (in_channels,) + channels[:-2]
        level_stride = (1,) + strides[:-1]
        self.encoder = nn.ModuleList(
            [block(level_in[i], channels[i], level_stride[i]) for i in range(num_levels)]
        )
        self.bottleneck = block(channels[-2], channels[-1], strides[-1])
        decoder = []
        for i in reversed(range(num_levels)):
            up = Convolution(
                spatial_dims, channels[i + 1], channels[i], strides=strides[i], kernel_size=3,
                act=act, norm=norm, dropout=drop, is_transposed=True,
            )  # fmt: skip
            decoder.append(_UpBlock(up, block(2 * channels[i], channels[i], 1)))
        self.decoder = nn.ModuleList(decoder)
        self.head = Conv[Conv.CONV, spatial_dims](channels[0], out_channels, kernel_size=1)

        strides_so_far = [1]
        for s in strides:
            strides_so_far.append(strides_so_far[-1] * s)
        self.divisor = strides_so_far[-1]
        self.decoder_channels = channels[0]
        self.feature_layers = [f"encoder.{i}" for i in range(num_levels)] + ["bottleneck"]
        self.feature_channels = list(channels)
        self.feature_strides = [strides_so_far[i] for i in range(num_levels)] + [self.divisor]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for an input ``(B, in_channels, *spatial)``."""
        if not torch.jit.is_tracing():
            check_spatial_size(x, self.spatial_dims, self.divisor, "SegUNet")
        skips: list[torch.Tensor] = []
        for level in self.encoder:
            x = level(x)
            skips.append(x)
        x = self.bottleneck(x)
        for j, up_block in enumerate(self.decoder):
            x = up_block(x, skips[len(skips) - 1 - j])
        return self.head(x)
