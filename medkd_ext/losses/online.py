"""Online distillation: the mimicry loss of Deep Mutual Learning and the ensemble-to-branch loss of ONE.

Both are Hinton's soft-target loss (:class:`~medkd_ext.losses.KDLoss`, ``T^2 * KL(target || student)``) applied to
online targets, which are detached (pure targets, as in the authors' code): the peers' predictions for DML, the gated
ensemble's for ONE. The supervised (cross-entropy) parts of both objectives are left to the trainers of
``medkd_ext.engines.online``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medkd_ext.losses._utils import check_sequence, check_tensor
from medkd_ext.losses.response import KDLoss

__all__ = ["EnsembleKDLoss", "MutualLearningLoss"]


class _OnlineKD(nn.Module):
    """Holds a :class:`KDLoss`; ``temperature`` reads and sets its temperature (so a ``DecayHandler`` may anneal it)."""

    def __init__(self, temperature: float, multi_label: bool) -> None:
        super().__init__()
        self.kd = KDLoss(temperature, multi_label=multi_label)

    @property
    def temperature(self) -> float:
        return self.kd.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self.kd.temperature = KDLoss(value).temperature  # validated as KDLoss validates it

    @property
    def multi_label(self) -> bool:
        return self.kd.multi_label

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, multi_label={self.multi_label}"


class MutualLearningLoss(_OnlineKD):
    """Mimicry loss of Deep Mutual Learning, Zhang, Xiang, Hospedales and Lu, "Deep Mutual Learning" (CVPR 2018),
    for a cohort of ``K`` networks, softened by a temperature as in the KD study (T = 4).

    ``T^2 * (1 / (K - 1)) * sum_{l != k} KL(softmax(z_l / T) || softmax(z_k / T))``: the mean over the ``K - 1`` peers
    of :class:`KDLoss` of this student ``z_k`` against peer ``z_l``, each KL summed over classes and averaged over the
    batch and spatial positions. ``T = 1`` is the paper's loss without temperature. The peers are targets: no gradient
    reaches them (the paper updates each network with the others' predictions fixed). With ``multi_label=True`` each
    KL is the per-class Bernoulli KL of :class:`KDLoss`.

    Args:
        temperature: softening temperature ``T > 0``.
        multi_label: per-class sigmoid/Bernoulli instead of softmax over classes.

    Shapes:
        student: logits ``(B, C)`` or ``(B, C, *spatial)``; teacher: the peers' logits, a list or tuple of
        ``K - 1 >= 1`` tensors of the student's shape (one tensor is accepted for a cohort of two). Output: scalar.
    """

    def __init__(self, temperature: float = 4.0, multi_label: bool = False) -> None:
        super().__init__(temperature, multi_label)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
        name = "MutualLearningLoss"
        check_tensor(student, name, "student")
        peers = [teacher] if isinstance(teacher, torch.Tensor) else check_sequence(teacher, name, "teacher")
        if len(peers) == 0:
            raise ValueError(f"{name}: teacher must hold at least one peer's logits, got an empty sequence.")
        return sum(self.kd(student, peer) for peer in peers) / len(peers)


class EnsembleKDLoss(_OnlineKD):
    """Distillation term of ONE, Lan, Zhu and Gong, "Knowledge Distillation by On-the-Fly Native Ensemble"
    (NeurIPS 2018), Sec. 3 (T = 3 in the paper and the KD study).

    ``T^2 * sum_i KL(softmax(z_e / T) || softmax(z_i / T))`` over the ``m`` branches ``z_i``, with the gated ensemble
    ``z_e`` as target (detached: gradients reach the branches only). Each KL is summed over classes and averaged over
    the batch (and spatial positions). The paper's whole objective adds the cross-entropy of every branch and of the
    ensemble (:class:`medkd_ext.engines.ONETrainer`).

    Args:
        temperature: softening temperature ``T > 0``.
        multi_label: per-class sigmoid/Bernoulli instead of softmax over classes.

    Shapes:
        student: the branches' logits, a list or tuple of ``m >= 1`` tensors ``(B, C)`` (or ``(B, C, *spatial)``), or
        one tensor ``(B, m, C)``; teacher: the ensemble's logits ``(B, C)``. Output: scalar.
    """

    def __init__(self, temperature: float = 3.0, multi_label: bool = False) -> None:
        super().__init__(temperature, multi_label)

    def forward(self, student: torch.Tensor | Sequence[torch.Tensor], teacher: torch.Tensor) -> torch.Tensor:
        name = "EnsembleKDLoss"
        check_tensor(teacher, name, "teacher")
        if isinstance(student, torch.Tensor):
            check_tensor(student, name, "student", min_ndim=3)
            branches = list(student.unbind(dim=1))
        else:
            branches = list(check_sequence(student, name, "student"))
        if not branches:
            raise ValueError(f"{name}: student must hold at least one branch's logits, got none.")
        return sum(self.kd(branch, teacher) for branch in branches)
