"""Response-based distillation: soft-target KD from one teacher (Hinton) or from several (RoS-KD)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medkd_ext.losses._utils import check_positive, check_same_shape, check_sequence, check_tensor

__all__ = ["KDLoss", "MultiTeacherKDLoss"]


def _soft_kl(student: torch.Tensor, teacher_prob: torch.Tensor, temperature: float) -> torch.Tensor:
    """``KL(teacher_prob || softmax(student / T))`` summed over dim 1, averaged over batch and spatial positions."""
    log_p = F.log_softmax(student / temperature, dim=1)
    kl = torch.xlogy(teacher_prob, teacher_prob) - teacher_prob * log_p
    return kl.sum(dim=1).mean()


def _bernoulli_kl(student: torch.Tensor, teacher_prob: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-class ``KL(Bern(q) || Bern(sigmoid(student / T)))`` averaged over classes (dim 1), batch and spatial
    positions: the reduction of ``BCEWithLogitsLoss``, the supervised term it is weighed against (``alpha``), so that
    the balance of the two terms does not change with the number of classes."""
    z = student / temperature
    # log(p) = logsigmoid(z), log(1 - p) = logsigmoid(-z): stable for large |z|
    kl = (
        torch.xlogy(teacher_prob, teacher_prob)
        + torch.xlogy(1.0 - teacher_prob, 1.0 - teacher_prob)
        - teacher_prob * F.logsigmoid(z)
        - (1.0 - teacher_prob) * F.logsigmoid(-z)
    )
    return kl.mean()


class KDLoss(nn.Module):
    """Soft-target knowledge distillation of Hinton et al., "Distilling the Knowledge in a Neural Network" (2015).

    ``T^2 * KL(softmax(t / T) || softmax(s / T))`` with the class dimension 1, summed over classes and averaged
    over the batch and all spatial positions (the softened softmax is eq. 1 of the paper; the ``T^2`` factor keeps
    the gradient scale independent of ``T``). With ``multi_label=True`` each class is an independent Bernoulli
    variable: ``T^2 * mean_c KL(Bern(sigmoid(t_c / T)) || Bern(sigmoid(s_c / T)))``, averaged over the batch and
    spatial positions too: the classes are averaged as ``BCEWithLogitsLoss`` averages them (a multi-label extension; the
    papers define only the softmax loss), so a weight between this term and BCE means the same for any number of
    classes, as it does between the softmax KL and cross-entropy.

    Gradients never reach the teacher input, which is a pure target.

    Args:
        temperature: softening temperature ``T > 0``.
        multi_label: per-class sigmoid/Bernoulli instead of softmax over classes.

    Shapes:
        student, teacher: logits ``(B, C)`` or ``(B, C, *spatial)``, equal shapes. Output: scalar.
    """

    def __init__(self, temperature: float = 4.0, multi_label: bool = False) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "KDLoss", "temperature")
        self.multi_label = bool(multi_label)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        check_tensor(student, "KDLoss", "student")
        check_tensor(teacher, "KDLoss", "teacher")
        check_same_shape("KDLoss", student, teacher)
        t = self.temperature
        with torch.no_grad():
            q = torch.sigmoid(teacher / t) if self.multi_label else F.softmax(teacher / t, dim=1)
        kl = _bernoulli_kl(student, q, t) if self.multi_label else _soft_kl(student, q, t)
        return kl * t * t

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, multi_label={self.multi_label}"


class MultiTeacherKDLoss(nn.Module):
    """Multi-teacher soft-target distillation with stochastic teacher weights, RoS-KD (Jaiswal et al.), eq. 3-4.

    ``weighting="exponential"`` (RoS-KD): ``T^2 * sum_m w_m KL(q_m || p)`` with ``q_m = softmax(t_m / T)``,
    ``p = softmax(s / T)`` (eq. 3) and ``w = e / sum(e)``, ``e_m ~ Exp(1)`` drawn afresh at every call (eq. 4,
    distillation term; the ``alpha`` weighting against cross-entropy is left to the trainer).
    ``weighting="uniform"`` (the paper's Baseline III): ``T^2 * KL(mean_m q_m || p)``, i.e. ``w_m = 1 / K``
    applied to the teachers' averaged distribution. Each KL is summed over classes and averaged over the batch and
    spatial positions. With ``multi_label=True``, ``q_m = sigmoid(t_m / T)``, ``p = sigmoid(s / T)`` and KL is the
    per-class Bernoulli KL averaged over classes, as ``BCEWithLogitsLoss`` averages them (see :class:`KDLoss`).

    The weights used by the last call are kept in ``last_weights`` (tensor ``(K,)``, on the student's device) for
    logging. Gradients never reach the teacher inputs.

    Args:
        temperature: softening temperature ``T > 0`` (the paper uses 0.5).
        weighting: ``"exponential"`` or ``"uniform"``.
        generator: optional ``torch.Generator`` the exponential draws come from (for reproducible weights);
            by default the global RNG of the generator's device (CPU) is used, so ``set_determinism`` applies.
        multi_label: per-class sigmoid/Bernoulli instead of softmax over classes.

    Shapes:
        student: logits ``(B, C)`` or ``(B, C, *spatial)``; teacher: a list or tuple of ``K >= 1`` tensors of
        the student's shape. Output: scalar.
    """

    def __init__(
        self,
        temperature: float,
        weighting: str = "exponential",
        generator: torch.Generator | None = None,
        multi_label: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = check_positive(temperature, "MultiTeacherKDLoss", "temperature")
        if weighting not in ("exponential", "uniform"):
            raise ValueError(f"MultiTeacherKDLoss: weighting must be 'exponential' or 'uniform', got {weighting!r}.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(
                f"MultiTeacherKDLoss: generator must be a torch.Generator or None, got {type(generator).__name__}."
            )
        self.weighting = weighting
        self.generator = generator
        self.multi_label = bool(multi_label)
        self.last_weights: torch.Tensor | None = None

    def sample_weights(self, num_teachers: int) -> torch.Tensor:
        """Draw normalised teacher weights ``e / sum(e)``, ``e_m ~ Exp(1)``, shape ``(num_teachers,)``, on CPU."""
        device = self.generator.device if self.generator is not None else torch.device("cpu")
        e = torch.empty(num_teachers, dtype=torch.float64, device=device).exponential_(1.0, generator=self.generator)
        return e / e.sum()

    def forward(self, student: torch.Tensor, teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        name = "MultiTeacherKDLoss"
        check_tensor(student, name, "student")
        teachers = check_sequence(teacher, name, "teacher")
        if len(teachers) == 0:
            raise ValueError(f"{name}: teacher must be a non-empty list of teacher logits, got an empty sequence.")
        for i, t_m in enumerate(teachers):
            check_tensor(t_m, name, f"teacher[{i}]")
            check_same_shape(name, student, t_m, what=f"teacher[{i}]")
        k, t = len(teachers), self.temperature
        kl_fn = _bernoulli_kl if self.multi_label else _soft_kl
        with torch.no_grad():
            probs = [torch.sigmoid(t_m / t) if self.multi_label else F.softmax(t_m / t, dim=1) for t_m in teachers]
        if self.weighting == "uniform":
            with torch.no_grad():
                mean_prob = torch.stack(probs).mean(0)
            self.last_weights = torch.full((k,), 1.0 / k, dtype=student.dtype, device=student.device)
            return kl_fn(student, mean_prob, t) * t * t
        weights = self.sample_weights(k).to(device=student.device, dtype=student.dtype)
        self.last_weights = weights
        loss = sum(w * kl_fn(student, q, t) for w, q in zip(weights, probs))
        return loss * t * t

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, weighting={self.weighting!r}, multi_label={self.multi_label}"
