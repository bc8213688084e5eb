"""Schedules applied during training: curriculum ramps, per-epoch decays and the DANN lambda."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

from ignite.engine import Engine, Events
from torch import nn

from medkd_ext.losses.adversarial import GradientReversal, dann_lambda

__all__ = ["RampHandler", "DecayHandler", "DANNLambdaHandler", "ramp_value", "decay_value"]


def ramp_value(
    epoch: float, warmup: int, ramp: int, max_value: float = 1.0, mode: str = "linear", start_value: float = 0.0
) -> float:
    """Curriculum value for the epoch of index ``epoch`` (0-based: the number of epochs completed before it).

    ``0`` for the first ``warmup`` epochs, then a rise from ``start_value`` to ``max_value`` over the next ``ramp``
    epochs, linear or along a half cosine: epoch ``warmup + i`` gets
    ``start_value + (max_value - start_value) * f(min(1, i / ramp))`` with ``f(x) = x`` or ``(1 - cos(pi x)) / 2``,
    i.e. ``c(t) = min(1, max(0, (t - warmup) / ramp))`` scaled: the first epoch after the warm-up is at
    ``start_value`` and ``max_value`` holds from epoch ``warmup + ramp`` on. ``ramp=0`` jumps to ``max_value``.
    """
    if mode not in ("linear", "cosine"):
        raise ValueError(f"ramp mode must be 'linear' or 'cosine', got {mode!r}.")
    if warmup < 0 or ramp < 0:
        raise ValueError(f"ramp: warmup and ramp must be >= 0, got warmup={warmup}, ramp={ramp}.")
    if epoch < warmup:
        return 0.0
    if ramp == 0:
        return float(max_value)
    progress = min(1.0, (epoch - warmup) / ramp)
    if mode == "cosine":
        progress = 0.5 * (1.0 - math.cos(math.pi * progress))
    return float(start_value + (max_value - start_value) * progress)


def decay_value(epoch: float, start: float, decay: float, floor: float) -> float:
    """``max(floor, start * decay ** epoch)``: a per-epoch multiplicative decay to a floor (e.g. a temperature)."""
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}.")
    return float(max(floor, start * decay**epoch))


def _set_path(obj: Any, attribute: str, value: float) -> None:
    *parents, name = attribute.split(".")
    for part in parents:
        obj = getattr(obj, part)
    setattr(obj, name, value)


def _has_path(obj: Any, attribute: str) -> bool:
    for part in attribute.split("."):
        if not hasattr(obj, part):
            return False
        obj = getattr(obj, part)
    return True


def _set(engine: Engine, target: Any, terms: Sequence[str] | None, attribute: str, value: float) -> None:
    if terms is None:
        _set_path(target, attribute, value)
        return
    engine_terms = getattr(engine, "loss_terms", None)
    for term in terms:
        if engine_terms is None or term not in engine_terms:
            available = list(engine_terms) if engine_terms is not None else []
            raise ValueError(f"schedule: the engine has no loss term '{term}'; its terms are {available}.")
        _set_path(engine_terms[term], attribute, value)


class _EpochSchedule(ABC):
    """Sets an attribute of a target (or of a trainer's loss term) from a function of the epoch."""

    def __init__(self, target: Any, term: str | Sequence[str] | None, attribute: str) -> None:
        if (target is None) == (term is None):
            raise ValueError("schedule: give exactly one of `target` (an object) and `term` (a loss term name).")
        if target is not None and not _has_path(target, attribute):
            raise ValueError(f"schedule: {type(target).__name__} has no attribute '{attribute}' to schedule.")
        self.target = target
        self.term = [term] if isinstance(term, str) else (list(term) if term is not None else None)
        self.attribute = attribute
        self.value: float | None = None

    @abstractmethod
    def value_at(self, epoch: int) -> float:
        """Value of the schedule after ``epoch`` completed epochs."""

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)
        engine.add_event_handler(Events.EPOCH_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        # at EPOCH_STARTED, state.epoch counts the epoch being started: completed epochs = epoch - 1
        self.value = self.value_at(max(engine.state.epoch - 1, 0))
        _set(engine, self.target, self.term, self.attribute, self.value)


class RampHandler(_EpochSchedule):
    """Curriculum ramp of a loss weight or any attribute, set at the start of every epoch.

    Value: 0 during ``warmup`` epochs, then from ``start_value`` to ``max_value`` over ``ramp`` epochs (linear or
    cosine), see :func:`ramp_value`. Apply it to ``DistillationTrainer`` loss terms by name (``term="feat"`` or a
    list of names, ``attribute="weight"`` or ``"scale"``; a dotted path such as ``"loss.temperature"`` reaches into
    the term's loss) or to any object's attribute (``target=@loss, attribute="weight"``).

    Args:
        warmup: epochs at 0.
        ramp: epochs of the rise.
        max_value: final value.
        mode: ``"linear"`` or ``"cosine"``.
        term: name (or list of names) of loss terms of the engine this handler is attached to.
        target: object whose ``attribute`` is set (when ``term`` is not given).
        attribute: attribute name; ``"weight"`` by default.
        start_value: value at the first epoch after the warm-up (``max_value`` is reached ``ramp`` epochs later).
    """

    def __init__(
        self,
        warmup: int,
        ramp: int,
        max_value: float = 1.0,
        mode: str = "linear",
        term: str | Sequence[str] | None = None,
        target: Any = None,
        attribute: str = "weight",
        start_value: float = 0.0,
    ) -> None:
        super().__init__(target, term, attribute)
        ramp_value(0, warmup, ramp, max_value, mode, start_value)  # validates the arguments
        self.warmup, self.ramp, self.max_value, self.mode, self.start_value = warmup, ramp, max_value, mode, start_value

    def value_at(self, epoch: int) -> float:
        return ramp_value(epoch, self.warmup, self.ramp, self.max_value, self.mode, self.start_value)


class DecayHandler(_EpochSchedule):
    """Per-epoch multiplicative decay to a floor, ``max(floor, start * decay ** epoch)``, set each epoch start.

    Used for annealing a distillation temperature (``target=@con_loss, attribute="temperature"``, or
    ``term="con", attribute="loss.temperature"`` for a trainer's loss term).
    """

    def __init__(
        self,
        start: float,
        decay: float,
        floor: float,
        term: str | Sequence[str] | None = None,
        target: Any = None,
        attribute: str = "temperature",
    ) -> None:
        super().__init__(target, term, attribute)
        decay_value(0, start, decay, floor)  # validates the arguments
        self.start, self.decay, self.floor = start, decay, floor

    def value_at(self, epoch: int) -> float:
        return decay_value(epoch, self.start, self.decay, self.floor)


class DANNLambdaHandler:
    """Sets the ``lambda_`` of gradient-reversal layers from training progress before every iteration.

    ``lambda = dann_lambda(p, gamma)`` with ``p = (iteration - 1) / (max_epochs * epoch_length)``.

    Args:
        module: a ``GradientReversal`` or any module containing some (all of them are set).
        gamma: steepness of the schedule (10 in DANN).
    """

    def __init__(self, module: nn.Module, gamma: float = 10.0) -> None:
        layers = [m for m in module.modules() if isinstance(m, GradientReversal)]
        if not layers:
            raise ValueError(
                f"DANNLambdaHandler: {type(module).__name__} contains no GradientReversal layer to schedule."
            )
        dann_lambda(0.0, gamma)  # validates gamma
        self.layers = layers
        self.gamma = gamma
        self.value = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_STARTED, self)

    def __call__(self, engine: Engine) -> None:
        total = engine.state.max_epochs * engine.state.epoch_length
        progress = min(1.0, max(0.0, (engine.state.iteration - 1) / max(total, 1)))
        self.value = dann_lambda(progress, self.gamma)
        for layer in self.layers:
            layer.lambda_ = self.value
