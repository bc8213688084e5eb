"""``MultiHeadTrainer``: one shared backbone trained on several datasets, a head per dataset (the multi-head
baseline of the joint-teacher bundle; Ceausescu et al.)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from medkd_ext.engines.utils import LoaderCycle, optimisation_step

__all__ = ["MultiHeadTrainer", "RoundRobin"]


class RoundRobin:
    """Alternates the batches of several loaders: ``(0, b), (1, b), ..., (D-1, b), (0, b), ...``.

    One pass gives every loader ``max(len(loader))`` batches (shorter loaders are restarted), so each dataset
    contributes equally whatever its size.
    """

    def __init__(self, loaders: Sequence[Iterable]) -> None:
        if not loaders:
            raise ValueError("RoundRobin: give at least one loader.")
        self.loaders = list(loaders)
        self.rounds = max(len(loader) for loader in self.loaders)  # type: ignore[arg-type]
        if self.rounds == 0:
            raise ValueError("RoundRobin: every loader is empty.")

    def __len__(self) -> int:
        return self.rounds * len(self.loaders)

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        cycles = [LoaderCycle(loader, f"RoundRobin: loader {d}") for d, loader in enumerate(self.loaders)]
        for cycle in cycles:  # every loader starts its pass here, in order, before the first batch is drawn
            cycle.restart()
        for _ in range(self.rounds):
            for d, cycle in enumerate(cycles):
                yield d, next(cycle)


class MultiHeadTrainer(SupervisedTrainer):
    """Trains a network with one head per dataset (``network(x, head=d)``) on alternating dataset batches.

    Args:
        device: device of the network.
        max_epochs: epochs; an epoch is one :class:`RoundRobin` pass.
        train_data_loaders: one loader per dataset, in the order of the network's heads.
        network: e.g. ``medkd_ext.networks.MultiHeadSegNet``.
        optimizer: optimizer over the network's parameters.
        loss_function: segmentation loss.
        kwargs: other ``SupervisedTrainer`` arguments.

    ``engine.state.output`` holds ``image``, ``label``, ``pred``, ``loss`` and ``head`` (the dataset of the batch).
    MONAI's ``IterationEvents`` (``FORWARD_COMPLETED``, ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``,
    ``MODEL_COMPLETED``) are fired as ``SupervisedTrainer`` fires them.
    """

    def __init__(
        self,
        device: str | torch.device,
        max_epochs: int,
        train_data_loaders: Sequence[Iterable],
        network: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_function: Callable,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            device=device,
            max_epochs=max_epochs,
            train_data_loader=RoundRobin(train_data_loaders),
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )

    def _iteration(self, engine: MultiHeadTrainer, batchdata: tuple[int, dict]) -> dict:
        """One step on the batch of dataset ``d`` through head ``d``."""
        head, batch = batchdata
        inputs, targets = engine.prepare_batch(batch, engine.state.device, engine.non_blocking, **engine.to_kwargs)[:2]
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets, "head": head}

        def _forward() -> torch.Tensor:
            pred = engine.network(inputs, head=head)
            engine.state.output[Keys.PRED] = pred
            return pred

        def _loss(pred: torch.Tensor) -> None:
            engine.state.output[Keys.LOSS] = engine.loss_function(pred, targets).mean()

        engine.network.train()
        optimisation_step(engine, _forward, _loss)
        return engine.state.output
