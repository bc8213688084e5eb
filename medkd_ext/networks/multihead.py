"""MultiHeadSegNet: the multi-head baseline, one shared segmentation backbone and one 1x1 head per dataset."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from torch import nn

from medkd_ext.utils import is_positive_int

__all__ = ["MultiHeadSegNet"]

_INTERFACE = ("feature_layers", "feature_channels", "feature_strides", "divisor")


def _decoder_channels(backbone: nn.Module) -> int:
    channels = getattr(backbone, "decoder_channels", None)
    if channels is None:
        channels = getattr(backbone.head, "in_channels", None)
    if not is_positive_int(channels):
        raise ValueError(
            f"MultiHeadSegNet: cannot tell the channels entering the head of {type(backbone).__name__}; give it an "
            "int attribute decoder_channels (as SegUNet and TResUNet have) or a convolution as head."
        )
    return channels


class MultiHeadSegNet(nn.Module):
    """Multi-head multi-dataset baseline (Ceausescu et al., Sec. 4.3): a shared backbone, one head per dataset.

    The backbone is any segmentation network with the interface of :class:`~medkd_ext.networks.SegUNet` and
    :class:`~medkd_ext.networks.TResUNet`: a ``head`` module (the last layer) and the attributes ``feature_layers``,
    ``feature_channels``, ``feature_strides`` and ``divisor``. Its ``head`` is replaced by ``nn.Identity`` in place
    (the given module is modified; build a fresh network for it), so ``backbone(x)`` returns the last decoder
    features, and ``heads[k]`` is a new 1x1 convolution giving the logits of dataset ``k``. The channels entering
    the head are read from the backbone's ``decoder_channels`` attribute, else from ``head.in_channels`` (a
    convolution head).

    The backbone's interface is re-exposed with the prefix ``"backbone."`` (``feature_layers`` such as
    ``"backbone.encoder.0"``), so feature taps and the joint teacher work on this network too. The number of
    dimensions is taken from the backbone's ``spatial_dims`` attribute, else from the dimensions of its head's
    convolution.

    Training alternates batches of the datasets, each through its own head (``forward(x, head=k)``); a head's loss
    reaches only that head and the shared backbone.

    Args:
        backbone: the shared network (encoder, bottleneck, decoder and a ``head`` to drop).
        num_heads: number of datasets (heads), at least 1.
        head_channels: output channels of every head (an int) or of each head (a sequence of ``num_heads`` ints);
            by default the backbone's ``out_channels`` attribute.

    Shapes:
        input ``(B, in_channels, *spatial)`` with every spatial size a multiple of ``divisor``; output of head ``k``
        ``(B, head_channels[k], *spatial)``.

    Raises:
        TypeError: ``backbone`` is not an ``nn.Module``.
        ValueError: the backbone lacks the interface, a bad ``num_heads``/``head_channels``; at forward time, a head
            index outside ``[0, num_heads)``.
    """

    def __init__(self, backbone: nn.Module, num_heads: int, head_channels: int | Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"MultiHeadSegNet: backbone must be a torch.nn.Module, got {type(backbone).__name__}.")
        missing = [name for name in ("head", *_INTERFACE) if not hasattr(backbone, name)]
        if missing:
            raise ValueError(
                f"MultiHeadSegNet: backbone {type(backbone).__name__} lacks {missing}; use a network with the "
                "segmentation interface (head, feature_layers, feature_channels, feature_strides, divisor), such as "
                "SegUNet or TResUNet."
            )
        if not is_positive_int(num_heads):
            raise ValueError(
                f"MultiHeadSegNet: num_heads must be a positive int (one head per dataset), got {num_heads!r}."
            )
        if head_channels is None:
            head_channels = getattr(backbone, "out_channels", None)
            if head_channels is None:
                raise ValueError(
                    f"MultiHeadSegNet: backbone {type(backbone).__name__} has no out_channels attribute; give "
                    "head_channels."
                )
        per_head = [head_channels] * num_heads if isinstance(head_channels, int) else list(head_channels)
        if len(per_head) != num_heads or not all(is_positive_int(c) for c in per_head):
            raise ValueError(
                f"MultiHeadSegNet: head_channels must be a positive int or {num_heads} positive ints (one per head), "
                f"got {head_channels!r}."
            )
        in_channels = _decoder_channels(backbone)
        spatial_dims = getattr(backbone, "spatial_dims", None)
        if spatial_dims is None:
            weight = getattr(backbone.head, "weight", None)
            spatial_dims = weight.dim() - 2 if isinstance(weight, torch.Tensor) else None
        if spatial_dims not in (1, 2, 3):
            raise ValueError(
                f"MultiHeadSegNet: cannot tell the spatial dims of {type(backbone).__name__} (got {spatial_dims!r}); "
                "give it a spatial_dims attribute."
            )

        backbone.head = nn.Identity()
        self.backbone = backbone
        self.heads = nn.ModuleList(
            [Conv[Conv.CONV, spatial_dims](in_channels, channels, kernel_size=1) for channels in per_head]
        )
        self.num_heads = num_heads
        self.head_channels = per_head
        self.spatial_dims = spatial_dims
        self.decoder_channels = in_channels
        self.divisor = int(backbone.divisor)
        self.feature_layers = [f"backbone.{name}" for name in backbone.feature_layers]
        self.feature_channels = list(backbone.feature_channels)
        self.feature_strides = list(backbone.feature_strides)

    def forward(self, x: torch.Tensor, head: int = 0) -> torch.Tensor:
        """Logits of dataset ``head``: ``(B, head_channels[head], *spatial)``."""
        if not 0 <= head < self.num_heads:
            raise ValueError(
                f"MultiHeadSegNet: head must be in [0, {self.num_heads}) (one per dataset), got {head}."
            )
        features = self.backbone(x)
        out = features
        for k, module in enumerate(self.heads):
            if k == head:
                out = module(features)
        return out
