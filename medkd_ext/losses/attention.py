"""Attention transfer: matching normalised spatial attention of student and teacher feature maps."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medkd_ext.losses._utils import check_positive, check_same_batch, check_tensor, common_spatial_size
from medkd_ext.utils import adaptive_avg_pool

__all__ = ["AttentionTransferLoss"]


class AttentionTransferLoss(nn.Module):
    """Activation-based attention transfer, in two variants.

    ``mode="map"`` (Zagoruyko & Komodakis, "Paying More Attention to Attention", ICLR 2017, eq. 2 as implemented
    in their reference code): the attention map ``a = mean_c |A_c|^p`` of each sample is flattened and
    L2-normalised, and the loss is ``mean_b ||a_s - a_t||_2^2 / N`` with ``N`` the number of spatial positions
    (``H*W``, or ``D*H*W`` in 3D), i.e. the mean of the squared differences. Channel counts may differ.

    ``mode="plane"`` (eq. 1 of the teacher-student attention-transfer paper for medical imaging): every feature
    plane ``Q^j`` (channel ``j``, flattened over space) is L2-normalised as it is, without ``|.|^p``, following
    the equation, and the loss is ``mean_b (1/C) sum_j ||Q_s^j / ||Q_s^j|| - Q_t^j / ||Q_t^j|| ||_2`` (not
    squared). Student and teacher need the same channel count; ``p`` is not used in this mode.

    If the spatial sizes differ, the larger is brought to the smaller by adaptive average pooling (per axis): the
    attention maps in ``"map"`` mode, the feature planes in ``"plane"`` mode. Gradients never reach the teacher.

    Args:
        p: exponent of the attention map in ``"map"`` mode, ``p > 0`` (2 in the paper).
        mode: ``"map"`` or ``"plane"``.
        eps: lower bound of the norm in the L2 normalisation (avoids division by zero for all-zero maps).

    Shapes:
        student ``(B, C_s, *spatial_s)``, teacher ``(B, C_t, *spatial_t)`` with 1, 2 or 3 spatial dimensions
        (``C_s == C_t`` in ``"plane"`` mode). Output: scalar.
    """

    def __init__(self, p: float = 2, mode: str = "map", eps: float = 1e-12) -> None:
        super().__init__()
        self.p = check_positive(p, "AttentionTransferLoss", "p")
        if mode not in ("map", "plane"):
            raise ValueError(f"AttentionTransferLoss: mode must be 'map' or 'plane', got {mode!r}.")
        self.mode = mode
        self.eps = check_positive(eps, "AttentionTransferLoss", "eps")

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, *spatial) -> (B, 1, *spatial)``: ``mean_c |A_c|^p`` (not normalised)."""
        return x.abs().pow(self.p).mean(dim=1, keepdim=True)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        name = "AttentionTransferLoss"
        check_tensor(student, name, "student", min_ndim=3, max_ndim=5)
        check_tensor(teacher, name, "teacher", min_ndim=3, max_ndim=5)
        if student.ndim != teacher.ndim:
            raise ValueError(
                f"{name}: student shape {tuple(student.shape)} and teacher shape {tuple(teacher.shape)} must have "
                "the same number of spatial dimensions."
            )
        check_same_batch(name, student, teacher)
        size = common_spatial_size(student, teacher)
        if self.mode == "map":
            a_s = adaptive_avg_pool(self.attention_map(student), size).flatten(1)
            with torch.no_grad():
                a_t = adaptive_avg_pool(self.attention_map(teacher), size).flatten(1)
                a_t = F.normalize(a_t, p=2.0, dim=1, eps=self.eps)
            a_s = F.normalize(a_s, p=2.0, dim=1, eps=self.eps)
            return (a_s - a_t).pow(2).mean()
        if student.shape[1] != teacher.shape[1]:
            raise ValueError(
                f"{name}: mode='plane' needs equal channel counts, got student shape {tuple(student.shape)} and "
                f"teacher shape {tuple(teacher.shape)}; use mode='map' or tap layers with matching channels."
            )
        q_s = F.normalize(adaptive_avg_pool(student, size).flatten(2), p=2.0, dim=2, eps=self.eps)
        with torch.no_grad():
            q_t = F.normalize(adaptive_avg_pool(teacher, size).flatten(2), p=2.0, dim=2, eps=self.eps)
        return torch.linalg.vector_norm(q_s - q_t, ord=2, dim=2).mean()

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode!r}"
