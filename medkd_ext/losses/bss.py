"""Boundary supporting samples (BSS) of Heo, Lee, Yun and Choi, "Knowledge Distillation with Adversarial Samples
Supporting Decision Boundary" (AAAI 2019): which training samples to attack, toward which class, and the attack that
moves them onto the teacher's decision boundary.

The BSS loss itself is Hinton's soft-target loss (:class:`~medkd_ext.losses.KDLoss`) of the student against the
teacher on the samples found here; :class:`medkd_ext.engines.BSSDistillationTrainer` adds it to a distillation
objective, with the paper's weight schedule.

What is implemented, following the paper and the authors' code (``bhheo/BSS_distillation``):

1. **Base samples** (:func:`select_base_samples`): the training samples of the batch that the teacher classifies
   correctly. When there are more than ``attack_size`` of them, those on which teacher and student disagree most on
   the classes other than the true one are kept: the score is ``sum_c (q_c - p_c)^2`` over ``c != y`` with the
   teacher's and the student's softmax ``q``, ``p`` (temperature 1).
2. **Target class** (:func:`sample_target_classes`): per base sample, a class ``k`` other than the teacher's top
   class, drawn with probability proportional to the teacher's softmax probability ``q_k`` (the paper weights the
   BSS loss of each target class by ``q_k``; the code samples one class instead, as here), or the teacher's second
   highest class (``target="second"``).
3. **Attack** (:func:`boundary_supporting_attack`): with the teacher's logits ``z`` and ``f(x) = z_b(x) - z_k(x)``
   (base class ``b``, target ``k``), ``steps`` iterations of
   ``x <- x + eta * (f(x) + 1e-4) * g / ||g||_2``, ``g = d(z_k - z_b)/dx`` (L2 norm per sample over all non-batch
   dims), i.e. a step toward the boundary whose length shrinks with the margin; a sample stops as soon as the
   teacher no longer classifies it as ``b`` (it has reached the boundary). ``eta = step_size = 0.3`` as in the
   authors' code.

**Maximum perturbation** ("max eps = 16" in the KD study's Table I, the ``max_epsilon=16`` argument of the authors'
attack). The authors' code converts it to ``16/255`` of the ``[0, 1]`` pixel range (``5 * 16 / 255`` after their
CIFAR normalisation with standard deviation ~0.2), but its L2 attack never applies the bound; here it is applied, as a
projection after every step onto the ball ``||x - x0|| <= max_epsilon`` in the ``norm`` chosen (default L-infinity,
so ``16/255`` bounds each voxel, the usual meaning of "eps 16" for 8-bit images). ``max_epsilon`` is in the units of
the network's input: ``16/255`` for images scaled to ``[0, 1]``; for z-score normalised inputs divide by the
intensity standard deviation, as the authors' code does. ``max_epsilon=None`` reproduces the unbounded attack of the
authors' code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medkd_ext.losses._utils import check_tensor
from medkd_ext.metrics.attacks import ascent_direction, attack_mode, finish_attack, plain_copy, project_perturbation
from medkd_ext.networks.frozen import unwrap_network
from medkd_ext.utils import check_positive_int

__all__ = [
    "BSS_TARGETS",
    "BoundarySupportingSamples",
    "boundary_supporting_attack",
    "sample_target_classes",
    "select_base_samples",
]

BSS_TARGETS = ("sample", "second")
"""How the target class of each base sample is chosen (:func:`sample_target_classes`)."""

_NORMS = ("linf", "l2")
_MARGIN_OFFSET = 1e-4  # keeps a sample on the boundary moving, as in the authors' code


def _check_logits(logits: object, owner: str, name: str) -> torch.Tensor:
    check_tensor(logits, owner, name)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(
            f"{owner}: {name} must be classification logits (B, C) with C >= 2, got shape {tuple(logits.shape)}; "
            "BSS is defined for multi-class classifiers (not segmentation outputs)."
        )
    return logits


def _check_classes(classes: object, logits: torch.Tensor, owner: str, name: str) -> torch.Tensor:
    if not isinstance(classes, torch.Tensor) or classes.is_floating_point() or classes.is_complex():
        raise TypeError(f"{owner}: {name} must be an integer tensor of class indices (B,), got {classes!r}.")
    if classes.shape != (logits.shape[0],):
        raise ValueError(f"{owner}: {name} must have shape ({logits.shape[0]},), got {tuple(classes.shape)}.")
    if classes.numel() and (classes.min() < 0 or classes.max() >= logits.shape[1]):
        raise ValueError(f"{owner}: {name} holds class indices outside [0, {logits.shape[1]}).")
    return classes


def _check_attack_args(
    owner: str, steps: int, step_size: float, max_epsilon: float | None, norm: str, clamp: object
) -> None:
    """The checks of the boundary attack's settings, shared by :func:`boundary_supporting_attack` and
    :class:`BoundarySupportingSamples`."""
    check_positive_int(steps, owner, "steps")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size > 0:
        raise ValueError(f"{owner}: step_size must be a positive number, got {step_size!r}.")
    if max_epsilon is not None and (
        isinstance(max_epsilon, bool) or not isinstance(max_epsilon, (int, float)) or max_epsilon < 0
    ):
        raise ValueError(f"{owner}: max_epsilon must be a non-negative number or None, got {max_epsilon!r}.")
    if norm not in _NORMS:
        raise ValueError(f"{owner}: norm must be one of {_NORMS}, got {norm!r}.")
    if clamp is not None and (len(clamp) != 2 or not float(clamp[0]) < float(clamp[1])):
        raise ValueError(f"{owner}: clamp must be None or (low, high) with low < high, got {clamp!r}.")


def select_base_samples(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, labels: torch.Tensor, attack_size: int
) -> torch.Tensor:
    """Indices of the base samples of the attack: those the teacher classifies correctly, at most ``attack_size``.

    When more than ``attack_size`` samples qualify, the ones kept have the largest teacher-student disagreement on
    the classes other than the label, ``sum_{c != y} (softmax(t)_c - softmax(s)_c)^2`` (Heo et al., "base sample
    selection").

    Args:
        teacher_logits: ``(B, C)`` teacher logits on the batch.
        student_logits: ``(B, C)`` student logits on the batch.
        labels: ``(B,)`` integer class indices.
        attack_size: the most base samples to keep (32 in the KD study, 64 in Heo et al.).

    Returns:
        ``(N,)`` long indices into the batch, ``N <= attack_size``, ordered by decreasing score when a selection was
        made, else in batch order; empty when the teacher gets no sample right.
    """
    owner = "select_base_samples"
    _check_logits(teacher_logits, owner, "teacher_logits")
    _check_logits(student_logits, owner, "student_logits")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"{owner}: student_logits {tuple(student_logits.shape)} and teacher_logits "
            f"{tuple(teacher_logits.shape)} must have the same shape."
        )
    _check_classes(labels, teacher_logits, owner, "labels")
    check_positive_int(attack_size, owner, "attack_size")
    with torch.no_grad():
        index = torch.nonzero(teacher_logits.argmax(dim=1) == labels).flatten()
        if index.numel() <= attack_size:
            return index
        diff = (F.softmax(teacher_logits[index].float(), 1) - F.softmax(student_logits[index].float(), 1)) ** 2
        score = diff.sum(dim=1) - diff.gather(1, labels[index].unsqueeze(1)).squeeze(1)
        order = torch.sort(score, descending=True, stable=True).indices
        return index[order[:attack_size]]


def sample_target_classes(
    teacher_logits: torch.Tensor, target: str = "sample", generator: torch.Generator | None = None
) -> torch.Tensor:
    """The class each sample is attacked toward: never the teacher's top class.

    Args:
        teacher_logits: ``(N, C)`` teacher logits of the base samples.
        target: ``"sample"`` (Heo et al.): class ``k`` drawn with probability proportional to the teacher's softmax
            probability ``q_k`` among the classes other than the top one; ``"second"``: the teacher's second highest
            class. Rows whose other probabilities all underflow to 0 get the second highest class.
        generator: random generator of the draw (its device is used for it); default the global RNG.

    Returns:
        ``(N,)`` long class indices.
    """
    owner = "sample_target_classes"
    _check_logits(teacher_logits, owner, "teacher_logits")
    if target not in BSS_TARGETS:
        raise ValueError(f"{owner}: target must be one of {BSS_TARGETS}, got {target!r}.")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{owner}: generator must be a torch.Generator or None, got {type(generator).__name__}.")
    with torch.no_grad():
        top2 = teacher_logits.topk(2, dim=1).indices
        second = top2[:, 1]
        if target == "second" or teacher_logits.shape[0] == 0:
            return second
        probs = F.softmax(teacher_logits.float(), dim=1)
        probs.scatter_(1, top2[:, :1], 0.0)
        empty = probs.sum(dim=1) <= 0
        if empty.any():
            probs[empty] = F.one_hot(second[empty], probs.shape[1]).to(probs)
        device = generator.device if generator is not None else probs.device
        drawn = torch.multinomial(probs.to(device), 1, generator=generator).squeeze(1)
        return drawn.to(teacher_logits.device)


def boundary_supporting_attack(
    model: nn.Module,
    x: torch.Tensor,
    base_class: torch.Tensor,
    target_class: torch.Tensor,
    steps: int = 10,
    step_size: float = 0.3,
    max_epsilon: float | None = 16.0 / 255.0,
    norm: str = "linf",
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Move each sample toward the decision boundary between its base class and its target class (Heo et al.).

    ``steps`` iterations of ``x <- x + step_size * (f + 1e-4) * g / ||g||_2`` with ``f = z_b - z_k`` the teacher's
    logit margin and ``g`` the input gradient of ``z_k - z_b``; a sample stops moving once the model no longer
    classifies it as ``b``. After every step the total perturbation is projected onto the ``norm`` ball of radius
    ``max_epsilon`` (``None``: no bound) and the result clamped to ``clamp``. Only the input gradient is taken
    (``torch.autograd.grad``): the model's parameters get no ``.grad``; the model runs in ``eval()`` (a
    :class:`~medkd_ext.networks.FrozenTeacher` is unwrapped, since its forward runs without autograd) and is given
    back in the mode it had.

    Args:
        model: the classifier (the teacher), returning logits ``(B, C)``.
        x: ``(B, C_in, *spatial)`` floating-point inputs, 2D or 3D (or ``(B, D)`` features).
        base_class: ``(B,)`` class each sample starts in (the label, which the teacher predicts).
        target_class: ``(B,)`` class each sample is moved toward; must differ from ``base_class``.
        steps: attack iterations (10 in the KD study and in Heo et al.).
        step_size: ``eta`` (0.3 in the authors' code).
        max_epsilon: radius of the perturbation ball in input units (see the module docstring), or ``None``.
        norm: ``"linf"`` or ``"l2"``: the norm of the ``max_epsilon`` ball (the step is always L2-normalised).
        clamp: valid input range applied after every step, or ``None`` (default; e.g. ``(0, 1)`` for images in
            ``[0, 1]``).

    Returns:
        The boundary supporting samples, detached, same shape, dtype and device as ``x``.
    """
    owner = "boundary_supporting_attack"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{owner}: model must be a torch.nn.Module, got {type(model).__name__}.")
    check_tensor(x, owner, "x")
    _check_attack_args(owner, steps, step_size, max_epsilon, norm, clamp)
    for name, classes in (("base_class", base_class), ("target_class", target_class)):
        if not isinstance(classes, torch.Tensor) or classes.shape != (x.shape[0],) or classes.is_floating_point():
            raise ValueError(f"{owner}: {name} must be an integer tensor of shape ({x.shape[0]},), got {classes!r}.")
    if bool((base_class == target_class).any()):
        raise ValueError(f"{owner}: target_class equals base_class for some samples; the target must be another class.")
    network = unwrap_network(model)
    with attack_mode(network):
        x0 = plain_copy(x)
        x_adv = x0.clone()
        base, target = base_class.to(x0.device).unsqueeze(1), target_class.to(x0.device).unsqueeze(1)
        active = torch.ones(x0.shape[0], dtype=torch.bool, device=x0.device)
        shape = (-1,) + (1,) * (x0.ndim - 1)
        for _ in range(steps):
            x_var = x_adv.detach().requires_grad_(True)
            logits = network(x_var)
            _check_logits(logits, owner, "the model's output")
            active = active & (logits.argmax(dim=1) == base.squeeze(1))
            if not bool(active.any()):
                break
            z_base, z_target = logits.gather(1, base).squeeze(1), logits.gather(1, target).squeeze(1)
            (grad,) = torch.autograd.grad((z_target - z_base).sum(), x_var)
            margin = (z_base - z_target).detach().float()
            length = step_size * (margin + _MARGIN_OFFSET) * active
            x_adv = x_adv + length.view(shape).to(x_adv.dtype) * ascent_direction(grad, "l2")
            if max_epsilon is not None:
                x_adv = x0 + project_perturbation(x_adv - x0, float(max_epsilon), norm)
            if clamp is not None:
                x_adv = x_adv.clamp(clamp[0], clamp[1])
    return finish_attack(x, x_adv, clamp)


class BoundarySupportingSamples:
    """The boundary supporting samples of a batch (Heo et al.): base-sample selection, target classes and attack.

    The settings of the KD study (Sarfraz et al., "Knowledge distillation beyond model compression", Table I) are the
    defaults: ``attack_size=32``, ``steps=10``, ``max_epsilon=16/255`` (see the module docstring for how "max eps 16"
    is read), with the authors' step size 0.3 and target-class sampling.

    Args:
        attack_size: the most base samples attacked per batch.
        steps: attack iterations.
        step_size: ``eta`` of the attack.
        max_epsilon: perturbation bound in input units, or ``None`` (unbounded, as the authors' L2 attack).
        norm: norm of the bound, ``"linf"`` or ``"l2"``.
        clamp: valid input range, or ``None``.
        target: ``"sample"`` or ``"second"`` (:func:`sample_target_classes`).
        generator: random generator of the target-class draw; default the global RNG (``set_determinism`` applies).

    Call it with the teacher, the batch, its labels and both networks' logits on it; it returns
    ``(samples, index, target_class)``: the attacked samples ``(N, C_in, *spatial)``, their ``(N,)`` indices into
    the batch and the ``(N,)`` classes they were moved toward (``N = 0`` when the teacher gets no sample right).
    """

    def __init__(
        self,
        attack_size: int = 32,
        steps: int = 10,
        step_size: float = 0.3,
        max_epsilon: float | None = 16.0 / 255.0,
        norm: str = "linf",
        clamp: tuple[float, float] | None = None,
        target: str = "sample",
        generator: torch.Generator | None = None,
    ) -> None:
        owner = "BoundarySupportingSamples"
        self.attack_size = check_positive_int(attack_size, owner, "attack_size")
        _check_attack_args(owner, steps, step_size, max_epsilon, norm, clamp)
        self.steps = int(steps)
        if clamp is not None:
            clamp = (float(clamp[0]), float(clamp[1]))
        if target not in BSS_TARGETS:
            raise ValueError(f"{owner}: target must be one of {BSS_TARGETS}, got {target!r}.")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"{owner}: generator must be a torch.Generator or None, got {type(generator).__name__}.")
        self.step_size = float(step_size)
        self.max_epsilon = None if max_epsilon is None else float(max_epsilon)
        self.norm = norm
        self.clamp = clamp
        self.target = target
        self.generator = generator

    def __call__(
        self,
        teacher: nn.Module,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        teacher_logits: torch.Tensor,
        student_logits: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = select_base_samples(teacher_logits, student_logits, labels, self.attack_size)
        if index.numel() == 0:
            empty = torch.empty(0, dtype=torch.long, device=labels.device)
            return inputs[:0].detach(), empty, empty
        targets = sample_target_classes(teacher_logits[index], self.target, self.generator)
        samples = boundary_supporting_attack(
            teacher,
            inputs[index],
            labels[index],
            targets,
            steps=self.steps,
            step_size=self.step_size,
            max_epsilon=self.max_epsilon,
            norm=self.norm,
            clamp=self.clamp,
        )
        return samples, index, targets

    def __repr__(self) -> str:
        return (
            f"BoundarySupportingSamples(attack_size={self.attack_size}, steps={self.steps}, "
            f"step_size={self.step_size}, max_epsilon={self.max_epsilon}, norm={self.norm!r}, clamp={self.clamp}, "
            f"target={self.target!r})"
        )
