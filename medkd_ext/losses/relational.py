"""Relational distillation: the student reproduces the relations between the samples of a batch (similarities,
distances, angles) in the teacher's representation rather than the representation itself."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medkd_ext.losses._utils import check_positive, check_same_batch, check_tensor, off_diagonal
from medkd_ext.utils import global_avg_pool

__all__ = ["RKDAngleLoss", "RKDDistanceLoss", "RKDLoss", "SimilarityKLLoss", "SimilarityPreservingLoss"]


def _check_batch_inputs(loss: str, student: object, teacher: object, min_batch: int) -> None:
    check_tensor(student, loss, "student")
    check_tensor(teacher, loss, "teacher")
    check_same_batch(loss, student, teacher)
    if student.shape[0] < min_batch:
        raise ValueError(
            f"{loss}: relations need a batch of at least {min_batch} samples, got student shape "
            f"{tuple(student.shape)} and teacher shape {tuple(teacher.shape)}."
        )


class SimilarityPreservingLoss(nn.Module):
    """Similarity-preserving distillation of Tung & Mori (ICCV 2019), Sec. 3.

    Each side's features are flattened to ``Q`` of shape ``(B, N)``, ``G = Q Q^T`` (``(B, B)``) has its rows
    L2-normalised, and the loss is ``||G_s - G_t||_F^2 / B^2``. Gradients never reach the teacher.

    Args:
        eps: lower bound of the row norms in the normalisation.

    Shapes:
        student ``(B, *)``, teacher ``(B, *)`` with at least 2 dimensions; only the batch size must match.
        Output: scalar.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = check_positive(eps, "SimilarityPreservingLoss", "eps")

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *) -> (B, B)``: row-normalised Gram matrix of the flattened features."""
        q = x.flatten(1)
        return F.normalize(q @ q.t(), p=2.0, dim=1, eps=self.eps)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_batch_inputs("SimilarityPreservingLoss", student, teacher, min_batch=1)
        with torch.no_grad():
            g_t = self.similarity(teacher)
        b = student.shape[0]
        return (self.similarity(student) - g_t).pow(2).sum() / (b * b)


class RKDDistanceLoss(nn.Module):
    """Distance-wise relational distillation, RKD-D of Park et al., "Relational Knowledge Distillation"
    (CVPR 2019), Sec. 3.2.

    Features ``(B, C, *spatial)`` are global-average-pooled to embeddings ``(B, C)``; embeddings ``(B, D)`` are used
    as they are. For every ordered pair ``i != j`` the distance ``||e_i - e_j||_2`` is divided by the mean distance
    over all such pairs of the same network, and the loss is the smooth-L1 (Huber, ``delta = beta = 1``) error
    between student and teacher normalised distances, averaged over the ``B (B - 1)`` pairs. Invariant to scaling
    and translating either embedding. Gradients never reach the teacher.

    Args:
        eps: lower bound of squared distances and of the mean distance (keeps gradients finite for equal samples).

    Shapes:
        student ``(B, D_s)`` or ``(B, C_s, *spatial)``, teacher ``(B, D_t)`` or ``(B, C_t, *spatial)``, ``B >= 2``;
        only the batch size must match. Output: scalar.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = check_positive(eps, "RKDDistanceLoss", "eps")

    def normalized_distances(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *) -> (B, B - 1)``: pairwise distances (diagonal removed) over their mean."""
        e = global_avg_pool(x)
        diff = e.unsqueeze(1) - e.unsqueeze(0)
        d = off_diagonal(diff.pow(2).sum(-1)).clamp_min(self.eps).sqrt()
        return d / d.mean().clamp_min(self.eps)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_batch_inputs("RKDDistanceLoss", student, teacher, min_batch=2)
        with torch.no_grad():
            d_t = self.normalized_distances(teacher)
        return F.smooth_l1_loss(self.normalized_distances(student), d_t, beta=1.0)


class RKDAngleLoss(nn.Module):
    """Angle-wise relational distillation, RKD-A of Park et al., "Relational Knowledge Distillation" (CVPR 2019),
    Sec. 3.2.

    Features are global-average-pooled to ``(B, C)`` as in :class:`RKDDistanceLoss`. For every triple of distinct
    samples ``(i, j, k)`` the potential is ``cos angle(e_i, e_j, e_k) = <u_ij, u_kj>`` with
    ``u_ij = (e_i - e_j) / ||e_i - e_j||``, and the loss is the smooth-L1 (``delta = beta = 1``) error between
    student and teacher cosines, averaged over the ``B (B - 1) (B - 2)`` ordered triples. Invariant to scaling and
    translating either embedding. Gradients never reach the teacher.

    Args:
        eps: lower bound of the difference-vector norms.

    Shapes:
        student ``(B, D_s)`` or ``(B, C_s, *spatial)``, teacher ``(B, D_t)`` or ``(B, C_t, *spatial)``, ``B >= 3``;
        only the batch size must match. Output: scalar.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = check_positive(eps, "RKDAngleLoss", "eps")

    def angles(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *) -> (B (B - 1) (B - 2),)``: cosines of the angles at ``e_j`` of all distinct triples."""
        e = global_avg_pool(x)
        b = e.shape[0]
        # u[j, i] = unit vector from e_j to e_i; cos[j, i, k] = <u[j, i], u[j, k]>
        u = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2.0, dim=2, eps=self.eps)
        cos = torch.bmm(u, u.transpose(1, 2))
        eye = torch.eye(b, dtype=torch.bool, device=e.device)
        distinct = ~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))
        return cos[distinct]

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_batch_inputs("RKDAngleLoss", student, teacher, min_batch=3)
        with torch.no_grad():
            a_t = self.angles(teacher)
        return F.smooth_l1_loss(self.angles(student), a_t, beta=1.0)


class RKDLoss(nn.Module):
    """Relational knowledge distillation RKD-DA (Park et al., CVPR 2019):
    ``distance_weight * RKDDistanceLoss + angle_weight * RKDAngleLoss`` (the paper's weights 25 and 50).

    Args:
        distance_weight: weight of the distance-wise term, ``>= 0``.
        angle_weight: weight of the angle-wise term, ``>= 0``.

    Shapes:
        as :class:`RKDAngleLoss` (``B >= 3``). Output: scalar.
    """

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0) -> None:
        super().__init__()
        for arg, value in (("distance_weight", distance_weight), ("angle_weight", angle_weight)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"RKDLoss: {arg} must be a non-negative number, got {value!r}.")
        self.distance_weight = float(distance_weight)
        self.angle_weight = float(angle_weight)
        self.distance = RKDDistanceLoss()
        self.angle = RKDAngleLoss()

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_batch_inputs("RKDLoss", student, teacher, min_batch=3)
        return self.distance_weight * self.distance(student, teacher) + self.angle_weight * self.angle(student, teacher)

    def extra_repr(self) -> str:
        return f"distance_weight={self.distance_weight}, angle_weight={self.angle_weight}"


class SimilarityKLLoss(nn.Module):
    """Batch-wise similarity ("contrastive") distillation of the joint-teacher paper (Ceausescu et al., eq. 11).

    Features are global-average-pooled to ``(B, C)`` (embeddings ``(B, D)`` are used as they are) and
    L2-normalised; ``S = Z Z^T / T`` is the cosine-similarity matrix over temperature. With the diagonal
    (self-similarity) removed, each row is turned into a distribution over the other ``B - 1`` samples by a
    softmax, and the loss is ``mean_i KL(P_t[i] || P_s[i])``. Gradients never reach the teacher.

    ``temperature`` is a plain, validated attribute so that a handler can anneal it during training.

    Args:
        temperature: ``T > 0``.
        eps: lower bound of the embedding norms.

    Shapes:
        student ``(B, D_s)`` or ``(B, C_s, *spatial)``, teacher ``(B, D_t)`` or ``(B, C_t, *spatial)``, ``B >= 2``;
        only the batch size must match. Output: scalar.
    """

    def __init__(self, temperature: float, eps: float = 1e-12) -> None:
        super().__init__()
        self.temperature = temperature
        self.eps = check_positive(eps, "SimilarityKLLoss", "eps")

    @property
    def temperature(self) -> float:
        return self._temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._temperature = check_positive(value, "SimilarityKLLoss", "temperature")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, *) -> (B, B - 1)``: off-diagonal cosine similarities over temperature."""
        z = F.normalize(global_avg_pool(x), p=2.0, dim=1, eps=self.eps)
        return off_diagonal(z @ z.t()) / self.temperature

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        _check_batch_inputs("SimilarityKLLoss", student, teacher, min_batch=2)
        with torch.no_grad():
            log_p_t = F.log_softmax(self.logits(teacher), dim=1)
        log_p_s = F.log_softmax(self.logits(student), dim=1)
        return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
