"""Domain discriminator behind a gradient-reversal layer (DANN, Ganin & Lempitsky 2015).

Used by the joint-teacher bundle's first stage (Ceausescu et al.): features of source and target images go through
:class:`DomainDiscriminator`; the reversed gradient makes the feature extractor domain-invariant.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.layers.factories import Pool
from torch import nn

from medkd_ext.losses.adversarial import GradientReversal
from medkd_ext.utils import check_positive_int, check_positive_ints

__all__ = ["DomainDiscriminator"]


class DomainDiscriminator(nn.Module):
    """Domain classifier for 2D/3D feature maps: gradient reversal, strided conv blocks, global pooling, linear.

    ``x -> GradientReversal(lambda) -> [conv 3, stride 2 -> norm -> dropout -> LeakyReLU(0.2)] x N
    -> global average pool -> linear -> logits``.

    The forward pass is the identity through the reversal layer; in the backward pass the gradient reaching the
    features is multiplied by ``-lambda``, while the discriminator's own parameters get ordinary gradients. ``.grl``
    is the :class:`~medkd_ext.losses.adversarial.GradientReversal` module, so a handler can set ``.grl.lambda_`` from
    :func:`~medkd_ext.losses.adversarial.dann_lambda` every iteration.

    Args:
        in_channels: channels ``C`` of the feature maps.
        spatial_dims: 1, 2 or 3.
        hidden_channels: output channels of the strided conv blocks, one block per entry. Each block halves the
            spatial size (rounding up), and any spatial size >= 1 is accepted.
        num_domains: number of logits; 1 (default) for source-vs-target with ``BCEWithLogitsLoss``, ``K`` for
            ``K`` domains with ``CrossEntropyLoss``.
        grl_lambda: initial reversal strength ``lambda >= 0``.
        dropout: dropout probability in each block, in ``[0, 1)``.
        norm: MONAI normalisation name/tuple for the blocks (``"batch"``, ``"instance"``,
            ``("group", {"num_groups": 8})``) or ``None``. Batch norm in training needs more than one value per
            channel: a batch of at least 2 when the pooled maps are 1 voxel.

    Shapes:
        input ``(B, C, *spatial)`` with ``len(spatial) == spatial_dims``; output ``(B, num_domains)`` logits.
    """

    def __init__(
        self,
        in_channels: int,
        spatial_dims: int,
        hidden_channels: Sequence[int] = (64, 32),
        num_domains: int = 1,
        grl_lambda: float = 1.0,
        dropout: float = 0.0,
        norm: str | tuple | None = "batch",
    ) -> None:
        super().__init__()
        check_positive_int(in_channels, "DomainDiscriminator", "in_channels")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"DomainDiscriminator: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        hidden = check_positive_ints(hidden_channels, "DomainDiscriminator", "hidden_channels")
        check_positive_int(num_domains, "DomainDiscriminator", "num_domains")
        if grl_lambda < 0:
            raise ValueError(f"DomainDiscriminator: grl_lambda must be non-negative, got {grl_lambda}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"DomainDiscriminator: dropout must be in [0, 1), got {dropout}.")

        self.spatial_dims = spatial_dims
        self.norm = norm
        self.grl = GradientReversal(grl_lambda)
        blocks = []
        channels = in_channels
        for out_channels in hidden:
            blocks.append(
                Convolution(
                    spatial_dims,
                    channels,
                    out_channels,
                    strides=2,
                    kernel_size=3,
                    act=("leakyrelu", {"negative_slope": 0.2}),
                    norm=norm,
                    dropout=dropout if dropout > 0 else None,
                    bias=norm is None,
                )
            )
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.flatten = nn.Flatten(1)
        self.out = nn.Linear(channels, num_domains)

    def output_size(self, spatial_size: Sequence[int]) -> list[int]:
        """The spatial size after the strided blocks (each halves a size, rounding up) of an input map's size."""
        sizes = [int(n) for n in spatial_size]
        for _ in self.blocks:
            sizes = [(n + 1) // 2 for n in sizes]
        return sizes

    def accepts(self, spatial_size: Sequence[int]) -> bool:
        """Whether a map of ``spatial_size`` can be trained on: instance normalisation needs more than one voxel
        after the strided blocks (batch normalisation only a batch of two or more, which the trainer gives)."""
        name = self.norm[0] if isinstance(self.norm, tuple) else self.norm
        if not (isinstance(name, str) and name.lower() == "instance"):
            return True
        return math.prod(self.output_size(spatial_size)) > 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Domain logits ``(B, num_domains)`` of feature maps ``(B, C, *spatial)``."""
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(
                f"DomainDiscriminator: expected a (B, C, {', '.join('*' * self.spatial_dims)}) input for "
                f"spatial_dims={self.spatial_dims}, got shape {tuple(x.shape)}."
            )
        x = self.grl(x)
        x = self.blocks(x)
        return self.out(self.flatten(self.pool(x)))
