"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018), 2D and 3D.

MONAI has no MobileNet; RoS-KD (Jaiswal et al.) uses MobileNet-v2 as one of its five teachers. The network follows
the paper's Table 2: a stride-2 3x3 stem, seven stages of inverted residual blocks (1x1 expansion, ReLU6, 3x3
depth-wise convolution, ReLU6, linear 1x1 projection, identity shortcut when stride is 1 and the channels match),
a 1x1 convolution to 1280 features, global average pooling, dropout and a linear classifier.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

from medkd_ext.utils import check_positive_int

__all__ = ["MobileNetV2", "InvertedResidual", "MOBILENET_V2_SETTING"]

MOBILENET_V2_SETTING: tuple[tuple[int, int, int, int], ...] = (
    # expansion t, output channels c, repeats n, first stride s (Table 2 of the paper)
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _make_divisible(value: float, divisor: int) -> int:
    """Round ``value`` to the nearest multiple of ``divisor`` (at least ``divisor``), never more than 10% lower."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


def _conv_norm_relu6(
    spatial_dims: int, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1
) -> nn.Sequential:
    conv_type = Conv[Conv.CONV, spatial_dims]
    norm_type = Norm[Norm.BATCH, spatial_dims]
    return nn.Sequential(
        conv_type(
            in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, groups=groups, bias=False
        ),
        norm_type(out_channels),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """Inverted residual block with a linear bottleneck.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: output channels.
        stride: stride of the depth-wise convolution (1 or 2).
        expand_ratio: expansion factor ``t`` of the hidden layer.

    Shapes:
        input ``(B, in_channels, *spatial)``; output ``(B, out_channels, *spatial / stride)``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}.")
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(_conv_norm_relu6(spatial_dims, in_channels, hidden, 1))
        layers += [
            _conv_norm_relu6(spatial_dims, hidden, hidden, 3, stride=stride, groups=hidden),
            Conv[Conv.CONV, spatial_dims](hidden, out_channels, 1, bias=False),
            Norm[Norm.BATCH, spatial_dims](out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """MobileNetV2 classifier for 2D images or 3D volumes.

    Args:
        spatial_dims: 2 or 3.
        in_channels: input channels.
        out_channels: number of classes (logits).
        width_mult: multiplier of every layer's channels (the paper's width multiplier; 1.0 is the standard net).
        dropout_prob: dropout before the classifier.
        inverted_residual_setting: rows ``(t, c, n, s)``: expansion, channels, repeats, first stride; default the
            paper's Table 2 (:data:`MOBILENET_V2_SETTING`).
        round_nearest: channels are rounded to multiples of this number.

    Shapes:
        input ``(B, in_channels, *spatial)`` (each spatial size at least 32 keeps every stride meaningful; smaller
        inputs still work); output ``(B, out_channels)`` logits.

    Module names: ``features.0`` (stem), ``features.1`` ... ``features.17`` (blocks), ``features.18`` (1x1 conv to
    the last channels), ``classifier``; tap ``features.<i>`` for intermediate features.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        width_mult: float = 1.0,
        dropout_prob: float = 0.2,
        inverted_residual_setting: Sequence[Sequence[int]] | None = None,
        round_nearest: int = 8,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"MobileNetV2: spatial_dims must be 2 or 3, got {spatial_dims!r}.")
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels)):
            check_positive_int(value, "MobileNetV2", name)
        if not isinstance(width_mult, (int, float)) or isinstance(width_mult, bool) or width_mult <= 0:
            raise ValueError(f"MobileNetV2: width_mult must be a positive number, got {width_mult!r}.")
        if not 0.0 <= float(dropout_prob) < 1.0:
            raise ValueError(f"MobileNetV2: dropout_prob must be in [0, 1), got {dropout_prob!r}.")
        check_positive_int(round_nearest, "MobileNetV2", "round_nearest")
        setting = MOBILENET_V2_SETTING if inverted_residual_setting is None else inverted_residual_setting
        setting = [tuple(row) for row in setting]
        if not setting or any(len(row) != 4 or any(int(v) < 1 for v in row) for row in setting):
            raise ValueError(
                "MobileNetV2: inverted_residual_setting must be a non-empty list of rows (t, c, n, s) of positive "
                f"integers, got {inverted_residual_setting!r}."
            )

        input_channels = _make_divisible(32 * width_mult, round_nearest)
        self.last_channels = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        layers: list[nn.Module] = [_conv_norm_relu6(spatial_dims, in_channels, input_channels, 3, stride=2)]
        for t, c, n, s in setting:
            channels = _make_divisible(c * width_mult, round_nearest)
            for i in range(int(n)):
                layers.append(InvertedResidual(spatial_dims, input_channels, channels, int(s) if i == 0 else 1, int(t)))
                input_channels = channels
        layers.append(_conv_norm_relu6(spatial_dims, input_channels, self.last_channels, 1))
        self.features = nn.Sequential(*layers)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.classifier = nn.Sequential(nn.Dropout(float(dropout_prob)), nn.Linear(self.last_channels, out_channels))

        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
