"""Pieces shared by the trainers of ``medkd_ext.engines``."""

from __future__ import annotations

from collections.abc import Callable

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys

__all__ = ["optimisation_step"]


def optimisation_step(engine: Trainer, compute: Callable[[], None]) -> None:
    """Zero the gradients, run ``compute`` (which sets ``engine.state.output["loss"]``), backpropagate and step.

    Under ``torch.autocast`` with a gradient scaler when the trainer was built with ``amp=True`` on CUDA, as
    ``monai.engines.SupervisedTrainer`` does; fires MONAI's ``BACKWARD_COMPLETED`` and ``MODEL_COMPLETED``.
    """
    engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
    if engine.amp and engine.scaler is not None:
        with torch.autocast("cuda", **engine.amp_kwargs):
            compute()
        engine.scaler.scale(engine.state.output[Keys.LOSS]).backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.scaler.step(engine.optimizer)
        engine.scaler.update()
    else:
        compute()
        engine.state.output[Keys.LOSS].backward()
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        engine.optimizer.step()
    engine.fire_event(IterationEvents.MODEL_COMPLETED)
