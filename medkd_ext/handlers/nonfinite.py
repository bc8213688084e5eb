"""Stopping a training whose loss is no longer finite, before anything is saved from the broken weights."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from ignite.engine import Engine, Events

from medkd_ext.distributed import gather_objects, is_distributed
from medkd_ext.engines.distillation import loss_terms_output

__all__ = ["NonFiniteLossError", "StopOnNonFiniteLoss"]


class NonFiniteLossError(FloatingPointError):
    """The total loss or a loss term of a training iteration is NaN or infinite (raised by
    :class:`StopOnNonFiniteLoss`)."""


class StopOnNonFiniteLoss:
    """Stop a trainer at the first iteration whose loss, or any named loss term, is NaN or infinite.

    After every iteration (``Events.ITERATION_COMPLETED``) the values of ``engine.state.output`` chosen by
    ``output_transform`` are checked: by default the total ``"loss"`` and every term a trainer of
    ``medkd_ext.engines`` returns by name (:func:`medkd_ext.engines.loss_terms_output`, which reads the output before
    and after MONAI's decollation). A non-finite value raises :class:`NonFiniteLossError` naming each such term with
    its value, the epoch and the iteration, and what to try.

    Raising from ``ITERATION_COMPLETED`` ends the ignite run before ``EPOCH_COMPLETED`` and ``COMPLETED``, so the
    handlers that save at those events (``StateDictSaver``, ``SmoothAveragingHandler``, the validation's
    ``BestStateDictSaver``, the epoch-end training state) write nothing from the broken weights, and the checkpoints
    written before are kept. MONAI's ``StatsHandler`` logs the error and raises it again. Attach this handler first
    among a trainer's handlers, so that no other iteration handler sees the broken iteration.

    Args:
        output_transform: maps ``engine.state.output`` to ``{name: value}`` of the values to check (numbers or
            one-element tensors); default :func:`medkd_ext.engines.loss_terms_output`.

    Example (a bundle's ``train#handlers``)::

        {"_target_": "medkd_ext.handlers.StopOnNonFiniteLoss"}
    """

    def __init__(self, output_transform: Callable[[Any], Mapping[str, Any]] | None = None) -> None:
        output_transform = loss_terms_output if output_transform is None else output_transform
        if not callable(output_transform):
            raise TypeError(
                f"StopOnNonFiniteLoss: output_transform must be callable, got {type(output_transform).__name__}."
            )
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        """Check the loss after every iteration of ``engine``."""
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if engine.state.output is None:
            return
        values = {str(k): float(v) for k, v in self.output_transform(engine.state.output).items()}
        values = dict(sorted(values.items(), key=lambda kv: kv[0] != "loss"))  # the total first, then the terms
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if is_distributed():  # under torchrun every rank stops at the same iteration, none waits for the others
            flags = gather_objects(bool(bad))
            if any(flags) and not bad:
                raise NonFiniteLossError(
                    f"the training loss is not finite on rank {flags.index(True)} at epoch {engine.state.epoch}, "
                    f"iteration {engine.state.iteration}; see that rank's error above."
                )
        if bad:
            raise NonFiniteLossError(self.message(engine, bad, values))

    @staticmethod
    def message(engine: Engine, bad: Mapping[str, float], values: Mapping[str, float]) -> str:
        """The error message: the non-finite terms with their values, where in the run, and what to try."""
        state = engine.state
        where = f"epoch {state.epoch}, iteration {state.iteration}"
        if state.epoch_length:
            where += f" ({(state.iteration - 1) % state.epoch_length + 1} of {state.epoch_length} in the epoch)"
        terms = ", ".join(f"{k} = {v}" for k, v in bad.items())
        finite = [f"{k} = {v:.4g}" for k, v in values.items() if k not in bad]
        others = f"; finite: {', '.join(finite)}" if finite else ""
        return (
            f"the training loss is not finite at {where}: {terms}{others}. The run stopped before saving anything "
            "from these weights; the checkpoints written before (the last good ones) are kept. Try a lower "
            "learning_rate, check the input data for NaN/Inf voxels or labels, or turn mixed precision (AMP) off."
        )
