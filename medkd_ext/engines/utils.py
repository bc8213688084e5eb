"""Pieces shared by the trainers of ``medkd_ext.engines``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from monai.engines import Trainer
from monai.engines.utils import IterationEvents
from monai.utils.enums import CommonKeys as Keys
from torch.utils.data.distributed import DistributedSampler

__all__ = ["LoaderCycle", "optimisation_step"]


def optimisation_step(
    engine: Trainer, forward: Callable[[], Any], loss: Callable[[Any], None], model_completed: bool = True
) -> None:
    """One optimisation step, firing MONAI's iteration events where ``SupervisedTrainer._iteration`` fires them.

    Zero the gradients; run ``result = forward()`` (the network(s); it sets ``engine.state.output["pred"]``) and
    fire ``FORWARD_COMPLETED``; run ``loss(result)`` (it sets ``engine.state.output["loss"]`` and any named term)
    and fire ``LOSS_COMPLETED``; backpropagate ``engine.state.output["loss"]`` and fire ``BACKWARD_COMPLETED``;
    step the optimizer and fire ``MODEL_COMPLETED``. ``forward`` and ``loss`` run under ``torch.autocast`` with a
    gradient scaler when the trainer was built with ``amp=True`` on CUDA, as in ``monai.engines.SupervisedTrainer``.

    Args:
        engine: the trainer (``engine.optimizer``, ``engine.amp``, ``engine.scaler``, ``engine.state.output``).
        forward: runs the forward pass; its return value is given to ``loss``.
        loss: computes the loss from what ``forward`` returned.
        model_completed: fire ``MODEL_COMPLETED`` (on which MONAI decollates ``engine.state.output`` into per-case
            dicts); a trainer that updates several networks in one iteration fires it itself after the last update.
    """

    def compute() -> None:
        result = forward()
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        loss(result)
        engine.fire_event(IterationEvents.LOSS_COMPLETED)

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
    if model_completed:
        engine.fire_event(IterationEvents.MODEL_COMPLETED)


class LoaderCycle:
    """The batches of a loader, endlessly: ``iter(loader)`` is called again each time the loader is exhausted.

    Every restart is a new pass over the loader, so a shuffling ``DataLoader`` reshuffles. The first
    ``iter(loader)`` is called by :meth:`restart`, or by the first ``next()`` if :meth:`restart` was not called:
    call it to start the pass at a chosen moment (where the loader draws its random seeds matters for
    reproducibility).

    Args:
        loader: any re-iterable of batches (a ``DataLoader``, a list).
        name: how the loader is named in the error message, e.g. ``"DatasetRounds: loader 1"``.

    Raises:
        ValueError: from ``next()``, when the loader yields no batch even right after a restart.
    """

    def __init__(self, loader: Iterable, name: str) -> None:
        self.loader = loader
        self.name = name
        self._iterator: Iterator | None = None
        self._passes = 0

    def restart(self, epoch: int | None = None) -> None:
        """Start a new pass over the loader.

        Args:
            epoch: given to the loader's ``DistributedSampler`` (torchrun), which shuffles by seed and epoch; default
                the number of passes started so far.
        """
        sampler = getattr(self.loader, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self._passes if epoch is None else int(epoch))
        self._passes += 1
        self._iterator = iter(self.loader)

    def __iter__(self) -> LoaderCycle:
        return self

    def __next__(self) -> Any:
        if self._iterator is None:
            self.restart()
        try:
            return next(self._iterator)
        except StopIteration:
            self.restart()
            try:
                return next(self._iterator)
            except StopIteration as e:
                raise ValueError(f"{self.name} yields no batch.") from e
