"""``BSSDistillationTrainer``: distillation with boundary supporting samples, Heo, Lee, Yun and Choi, "Knowledge
Distillation with Adversarial Samples Supporting Decision Boundary" (AAAI 2019), as run by the KD study of Sarfraz
et al., "Knowledge distillation beyond model compression" (Table I: T = 4, attack size 32, 10 attack steps,
max eps 16)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Integral
from typing import TYPE_CHECKING, Any

import torch
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from medkd_ext.engines.distillation import PRED, DistillationTrainer, LossTerm
from medkd_ext.engines.stages import as_flag
from medkd_ext.losses.bss import BoundarySupportingSamples
from medkd_ext.losses.response import KDLoss

if TYPE_CHECKING:
    from medkd_ext.engines.teacher_cache import TeacherOutputCache

__all__ = ["BSS_SAMPLES", "BSS_TERM", "BSSDistillationTrainer", "bss_weight_scale", "heo_kd_weight"]

BSS_TERM = "bss"
"""Name of the boundary-supporting-sample term in ``trainer.loss_terms`` and ``engine.state.output``."""
BSS_SAMPLES = "bss_samples"
"""``engine.state.output`` key of the number of boundary supporting samples of the iteration."""


def bss_weight_scale(epoch: int, max_epochs: int, decay_end: float = 0.75) -> float:
    """Heo et al.'s schedule of the BSS term, as a factor of its initial weight ``beta_init``: a linear decay from 1
    to 0 at ``decay_end`` of the training, ``max(0, 1 - epoch / (decay_end * max_epochs))`` with ``epoch`` the number
    of epochs completed (0 during the first epoch).

    The authors' code (``beta = 2 * max(0, 1 - 4/3 * epoch / max_epoch)``) evaluates it at the 1-based epoch, one
    epoch later: the same for the paper's 200 epochs up to ``1 / max_epochs``, but a run of a single epoch (the demo)
    would then never use the term.
    """
    if not 0 < decay_end <= 1:
        raise ValueError(f"bss_weight_scale: decay_end must be in (0, 1], got {decay_end!r}.")
    if max_epochs < 1:
        raise ValueError(f"bss_weight_scale: max_epochs must be >= 1, got {max_epochs!r}.")
    return max(0.0, 1.0 - float(epoch) / (float(decay_end) * float(max_epochs)))


def heo_kd_weight(epoch: int, max_epochs: int, start: float, end: float) -> float:
    """Heo et al.'s weight of the KD term on the whole batch, linear from ``start`` to ``end`` over the training:
    ``end + (start - end) * max(0, 1 - epoch / max_epochs)`` with ``epoch`` the number of epochs completed (the
    authors' code: ``alpha = 1 + 3 * (1 - epoch / max_epoch)`` at the 1-based epoch, i.e. start 4, end 1, on the soft
    cross-entropy without ``T^2``)."""
    if max_epochs < 1:
        raise ValueError(f"heo_kd_weight: max_epochs must be >= 1, got {max_epochs!r}.")
    return float(end) + (float(start) - float(end)) * max(0.0, 1.0 - float(epoch) / float(max_epochs))


def _is_multi_label(loss: Any) -> bool:
    return isinstance(loss, nn.BCEWithLogitsLoss) or bool(getattr(loss, "multi_label", False))


class BSSDistillationTrainer(DistillationTrainer):
    """:class:`~medkd_ext.engines.DistillationTrainer` plus the boundary-supporting-sample term of Heo et al.

    Every iteration evaluates the given ``loss_terms`` as ``DistillationTrainer`` does (typically ``"ce"`` and a
    Hinton ``"kd"`` term) and one more term, ``"bss"``: the base samples of the batch (correct for the teacher, at most
    ``attack_size``, chosen by teacher-student disagreement) are moved by the attack onto the teacher's decision
    boundary toward a target class (:class:`~medkd_ext.losses.BoundarySupportingSamples`), and the term is
    ``bss_loss(student(x_bss), teacher(x_bss))``, Hinton's KD on those samples (``KDLoss(T)``, averaged over them).
    The objective is therefore Heo et al.'s ``L = L_cls + alpha(n) L_KD + beta(n) L_BS``.

    Weights. The term's ``weight`` is ``beta_init``; its ``scale`` is set before every iteration to
    :func:`bss_weight_scale` (linear decay to 0 at ``bss_decay_end = 0.75`` of the training, as in the paper), and the
    attack is skipped once the scale is 0. Heo et al.'s ``beta_init = 2`` and ``alpha: 4 -> 1`` weigh the soft
    cross-entropy *without* ``T^2``; :class:`~medkd_ext.losses.KDLoss` carries ``T^2`` (DESIGN), so the same balance
    is ``bss_weight = 2 / T^2`` (the default) and ``kd_weight_schedule = (4 / T^2, 1 / T^2)``. ``kd_weight_schedule``
    (``None``: leave the KD term's weight alone, e.g. the study's ``alpha = 0.9``) sets the ``weight`` of the
    ``kd_term`` before every iteration to :func:`heo_kd_weight`.

    ``engine.state.output`` holds what ``DistillationTrainer`` returns, the unweighted ``"bss"`` term and
    ``"bss_samples"``, the number of boundary supporting samples of the iteration (the term is 0 when there are
    none). The student's forward pass on the boundary samples is a second forward pass in training mode (BatchNorm
    statistics see those samples too, as in the authors' code).

    BSS is defined for multi-class classification: ``multi_label=True``, a multi-label loss term
    (``BCEWithLogitsLoss``, a loss with ``multi_label=True``) or multi-hot labels raise ``ValueError``.

    Args:
        device, max_epochs, train_data_loader, network, optimizer, teachers, loss_terms, loss_function,
            teacher_cache: as :class:`~medkd_ext.engines.DistillationTrainer`; ``loss_terms`` must not contain a
            term named ``"bss"``.
        boundary_samples: the base-sample selection and attack settings; default
            ``BoundarySupportingSamples()`` (attack size 32, 10 steps, max eps 16/255, the KD study's Table I).
        bss_loss: loss of the term; default ``KDLoss(4.0)`` (T = 4, Table I).
        bss_weight: ``beta_init``; default ``2 / T^2`` with ``T`` the temperature of ``bss_loss``.
        bss_decay_end: fraction of the training at which the term reaches 0; ``None`` leaves its ``scale`` to the
            config (e.g. a ``RampHandler`` on term ``"bss"``).
        bss_teacher: name or index of the teacher attacked; ``None`` means the only teacher.
        kd_term: name of the KD term whose weight ``kd_weight_schedule`` sets.
        kd_weight_schedule: ``(start, end)`` of the KD weight (:func:`heo_kd_weight`), or ``None``.
        multi_label: the bundle's ``multi_label``; ``True`` raises ``ValueError``.
        kwargs: every other ``SupervisedTrainer`` argument.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loader: Iterable,
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        teachers: nn.Module | Sequence[nn.Module] | Mapping[str, nn.Module],
        loss_terms: Sequence[LossTerm | Mapping[str, Any]],
        boundary_samples: BoundarySupportingSamples | None = None,
        bss_loss: Callable[..., torch.Tensor] | None = None,
        bss_weight: float | None = None,
        bss_decay_end: float | None = 0.75,
        bss_teacher: int | str | None = None,
        kd_term: str = "kd",
        kd_weight_schedule: Sequence[float] | None = None,
        multi_label: bool = False,
        loss_function: Callable | None = None,
        teacher_cache: TeacherOutputCache | None = None,
        **kwargs: Any,
    ) -> None:
        owner = "BSSDistillationTrainer"
        terms = [t if isinstance(t, LossTerm) else LossTerm(**t) for t in loss_terms]
        if as_flag(multi_label, "multi_label"):
            raise ValueError(
                f"{owner}: BSS (boundary supporting samples, Heo et al.) is defined for multi-class classification "
                "only; multi_label=true is not supported: choose another method for multi-label data."
            )
        bss_loss = KDLoss(4.0) if bss_loss is None else bss_loss
        for what, loss in [("bss_loss", bss_loss)] + [(f"loss term '{t.name}'", t.loss) for t in terms]:
            if _is_multi_label(loss):
                raise ValueError(
                    f"{owner}: {what} is a multi-label loss ({type(loss).__name__}); BSS (boundary supporting samples, "
                    "Heo et al.) is defined for multi-class classification only."
                )
        if any(t.name in (BSS_TERM, BSS_SAMPLES) for t in terms):
            raise ValueError(f"{owner}: the loss term names '{BSS_TERM}' and '{BSS_SAMPLES}' are reserved for BSS.")
        if boundary_samples is None:
            boundary_samples = BoundarySupportingSamples()
        if not isinstance(boundary_samples, BoundarySupportingSamples):
            raise TypeError(
                f"{owner}: boundary_samples must be a BoundarySupportingSamples, got {type(boundary_samples).__name__}."
            )
        if bss_weight is None:
            temperature = getattr(bss_loss, "temperature", None)
            if temperature is None:
                raise ValueError(f"{owner}: give bss_weight; bss_loss has no temperature to derive 2 / T^2 from.")
            bss_weight = 2.0 / float(temperature) ** 2
        if isinstance(bss_weight, bool) or not isinstance(bss_weight, (int, float)) or bss_weight < 0:
            raise ValueError(f"{owner}: bss_weight must be a non-negative number, got {bss_weight!r}.")
        if bss_decay_end is not None and not 0 < bss_decay_end <= 1:
            raise ValueError(f"{owner}: bss_decay_end must be in (0, 1] or None, got {bss_decay_end!r}.")
        if kd_weight_schedule is not None:
            if len(kd_weight_schedule) != 2:
                raise ValueError(f"{owner}: kd_weight_schedule must be (start, end), got {kd_weight_schedule!r}.")
            if kd_term not in {t.name for t in terms}:
                raise ValueError(
                    f"{owner}: kd_weight_schedule is given but there is no loss term '{kd_term}'; the terms are "
                    f"{[t.name for t in terms]} (set kd_term)."
                )
        named = self._named_teachers(teachers)
        if bss_teacher is None:
            if len(named) != 1:
                raise ValueError(
                    f"{owner}: there are {len(named)} teachers {list(named)}; set bss_teacher to the one to attack."
                )
            bss_teacher = next(iter(named))
        elif isinstance(bss_teacher, Integral) and not isinstance(bss_teacher, bool):
            if not 0 <= int(bss_teacher) < len(named):
                raise ValueError(
                    f"{owner}: bss_teacher={bss_teacher} is not a teacher index; teachers are {list(named)}."
                )
            bss_teacher = list(named)[int(bss_teacher)]
        elif str(bss_teacher) not in named:
            raise ValueError(f"{owner}: bss_teacher {bss_teacher!r} is not a teacher; teachers are {list(named)}.")
        bss_term = LossTerm(BSS_TERM, bss_loss, weight=float(bss_weight), teachers=str(bss_teacher))
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=train_data_loader,
            network=network,
            optimizer=optimizer,
            teachers=named,
            loss_terms=[*terms, bss_term],
            loss_function=loss_function,
            teacher_cache=teacher_cache,
            **kwargs,
        )
        self.boundary_samples = boundary_samples
        self.bss_teacher = str(bss_teacher)
        self.bss_decay_end = None if bss_decay_end is None else float(bss_decay_end)
        self.kd_term = kd_term
        self.kd_weight_schedule = None if kd_weight_schedule is None else tuple(float(v) for v in kd_weight_schedule)

    def _apply_schedules(self) -> None:
        # during an iteration, state.epoch is the 1-based epoch being run: completed epochs = epoch - 1
        epoch, max_epochs = max(self.state.epoch - 1, 0), self.state.max_epochs
        if self.bss_decay_end is not None:
            self.loss_terms[BSS_TERM].scale = bss_weight_scale(epoch, max_epochs, self.bss_decay_end)
        if self.kd_weight_schedule is not None:
            self.loss_terms[self.kd_term].weight = heo_kd_weight(epoch, max_epochs, *self.kd_weight_schedule)

    def _iteration(self, engine: BSSDistillationTrainer, batchdata: dict[str, torch.Tensor]) -> dict:
        """One distillation step with the boundary-supporting-sample term (weights set by the schedules first)."""
        engine._apply_schedules()
        return super()._iteration(engine, batchdata)

    def _term_value(self, term: LossTerm, student: dict[str, Any], teachers: dict[str, dict[str, Any]], label):
        if term.name != BSS_TERM:
            return super()._term_value(term, student, teachers, label)
        return self._boundary_term(term, student[PRED], teachers[self.bss_teacher][PRED], label)

    def _boundary_term(
        self, term: LossTerm, student_logits: torch.Tensor, teacher_logits: torch.Tensor, label: Any
    ) -> torch.Tensor:
        zero = student_logits.new_zeros(())
        if float(term.weight) * float(term.scale) == 0.0:
            self.state.output[BSS_SAMPLES] = zero.detach()
            return zero
        labels = _class_indices(label, student_logits)
        inputs = self.state.output[Keys.IMAGE]
        teacher = self.teachers[self.bss_teacher]
        samples, index, _ = self.boundary_samples(
            teacher, inputs, labels, teacher_logits.detach(), student_logits.detach()
        )
        self.state.output[BSS_SAMPLES] = torch.tensor(float(index.numel()), device=student_logits.device)
        if index.numel() == 0:
            return zero
        teacher_on_samples = self.inferer(samples, teacher)
        student_on_samples = self.inferer(samples, self.network)
        return term.loss(student_on_samples, teacher_on_samples)


def _class_indices(label: Any, logits: torch.Tensor) -> torch.Tensor:
    """``(B,)`` long class indices from labels ``(B,)`` or ``(B, 1)``; multi-hot labels raise ``ValueError``."""
    if not isinstance(label, torch.Tensor):
        raise TypeError(
            f"BSSDistillationTrainer: labels must be a tensor of class indices, got {type(label).__name__}."
        )
    y = label.as_tensor() if hasattr(label, "as_tensor") else label
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if logits.ndim != 2:
        raise ValueError(
            f"BSSDistillationTrainer: BSS needs classification logits (B, C), the network returns shape "
            f"{tuple(logits.shape)}."
        )
    if y.ndim != 1 or y.shape[0] != logits.shape[0]:
        raise ValueError(
            f"BSSDistillationTrainer: BSS (boundary supporting samples) is defined for multi-class classification "
            f"with labels of class indices (B,) or (B, 1); got labels of shape {tuple(y.shape)} (multi-hot / "
            "multi-label labels are not supported)."
        )
    if y.is_floating_point():
        if not bool((y == y.round()).all()):
            raise ValueError("BSSDistillationTrainer: labels must be integer class indices, got fractional values.")
    y = y.long()
    if y.numel() and (y.min() < 0 or y.max() >= logits.shape[1]):
        raise ValueError(f"BSSDistillationTrainer: labels outside the classes [0, {logits.shape[1]}).")
    return y
