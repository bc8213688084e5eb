"""Domain-adversarial training pieces: the gradient-reversal layer and the DANN lambda schedule.

Ganin & Lempitsky, "Unsupervised Domain Adaptation by Backpropagation" (ICML 2015), used by the
joint-teacher bundle's stage 1 (Ceausescu et al.): the domain discriminator sits behind a
``GradientReversal`` whose ``lambda_`` follows ``dann_lambda(progress)``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["GradientReversal", "dann_lambda", "grad_reverse"]


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """DANN schedule ``lambda = 2 / (1 + exp(-gamma * progress)) - 1``.

    Args:
        progress: training progress ``p`` in ``[0, 1]`` (iterations done / total iterations).
        gamma: steepness, 10 in Ganin & Lempitsky.

    Returns:
        ``lambda`` in ``[0, 1)``; 0 at ``p = 0``, 0.98661 at ``p = 0.5`` with ``gamma = 10``.
    """
    if not 0.0 <= progress <= 1.0:
        raise ValueError(f"dann_lambda: progress must be in [0, 1], got {progress}.")
    if gamma <= 0:
        raise ValueError(f"dann_lambda: gamma must be positive, got {gamma}.")
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


class _GradientReversalFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return -ctx.lambda_ * grad_output, None


def grad_reverse(x: torch.Tensor, lambda_: float = 1.0) -> torch.Tensor:
    """Functional gradient reversal: identity forward, ``-lambda_ * grad`` backward."""
    return _GradientReversalFunction.apply(x, float(lambda_))


class GradientReversal(nn.Module):
    """Gradient-reversal layer: identity in the forward pass, gradient multiplied by ``-lambda_`` backward.

    ``lambda_`` is a plain attribute so that a handler (``medkd_ext.handlers.DANNLambdaHandler``) can set it
    from training progress every iteration.

    Args:
        lambda_: initial reversal strength, non-negative.
    """

    def __init__(self, lambda_: float = 1.0) -> None:
        super().__init__()
        if lambda_ < 0:
            raise ValueError(f"GradientReversal: lambda_ must be non-negative, got {lambda_}.")
        self.lambda_ = float(lambda_)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.lambda_)

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}"
