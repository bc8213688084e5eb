"""``MultiHeadTrainer``: one shared backbone trained on several datasets at once, a head per dataset, the datasets'
losses accumulated before each update (the multi-head baseline of the joint-teacher bundle; Ceausescu et al.)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import torch
from monai.engines import SupervisedTrainer
from monai.utils.enums import CommonKeys as Keys
from torch import nn

from medkd_ext.engines.utils import LoaderCycle, optimisation_step

__all__ = ["MultiHeadTrainer", "DatasetRounds"]


class DatasetRounds:
    """One batch of every loader per round: ``[(0, b_0), (1, b_1), ..., (D-1, b_{D-1})]``.

    A pass is ``len(loaders[0])`` rounds (the first loader, the target dataset, sets the epoch's length, as the
    dataset-specific and distilled models' epochs are passes over the target); every other loader is cycled within
    the pass (restarted, reshuffled, when it runs out) and starts a new pass with the next one. Every loader's pass
    starts, in order, before the first batch is drawn (where a shuffling ``DataLoader`` draws its seeds).
    """

    def __init__(self, loaders: Sequence[Iterable]) -> None:
        if not loaders:
            raise ValueError("DatasetRounds: give at least one loader.")
        self.loaders = list(loaders)
        self.rounds = len(self.loaders[0])  # type: ignore[arg-type]
        if self.rounds == 0:
            raise ValueError("DatasetRounds: the first loader (the target dataset) is empty.")

    def __len__(self) -> int:
        return self.rounds

    def __iter__(self) -> Iterator[list[tuple[int, Any]]]:
        cycles = [LoaderCycle(loader, f"DatasetRounds: loader {d}") for d, loader in enumerate(self.loaders)]
        for cycle in cycles:
            cycle.restart()
        for _ in range(self.rounds):
            yield [(d, next(cycle)) for d, cycle in enumerate(cycles)]


class MultiHeadTrainer(SupervisedTrainer):
    """Trains a network with one head per dataset (``network(x, head=d)``), the multi-head baseline of Ceausescu et
    al.: "mini-batches from the different datasets are sampled in turn, and the corresponding losses are accumulated
    so that each dataset contributes equally before the shared backbone is updated".

    Each iteration takes one batch of every dataset (:class:`DatasetRounds`), computes each batch's loss through its
    dataset's head, sums them and makes one optimisation step. An epoch is a pass over the first loader (the target):
    as many updates and target batches as the dataset-specific model's epoch.

    Args:
        device: device of the network.
        max_epochs: epochs; an epoch is one :class:`DatasetRounds` pass.
        train_data_loaders: one loader per dataset, in the order of the network's heads, the target first.
        network: e.g. ``medkd_ext.networks.MultiHeadSegNet``.
        optimizer: optimizer over the network's parameters.
        loss_function: segmentation loss.
        kwargs: other ``SupervisedTrainer`` arguments.

    ``engine.state.output`` holds ``image``, ``label`` and ``pred`` of the target batch (head 0), ``loss`` (the sum)
    and each dataset's loss as a term ``loss_<d>``. MONAI's ``IterationEvents`` (``FORWARD_COMPLETED``,
    ``LOSS_COMPLETED``, ``BACKWARD_COMPLETED``, ``MODEL_COMPLETED``) are fired once per iteration, as
    ``SupervisedTrainer`` fires them.
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
            train_data_loader=DatasetRounds(train_data_loaders),
            network=network,
            optimizer=optimizer,
            loss_function=loss_function,
            **kwargs,
        )

    def _iteration(self, engine: MultiHeadTrainer, batchdata: list[tuple[int, dict]]) -> dict:
        """One step on a batch of every dataset, each through its head, the losses summed."""
        batches = []
        for head, batch in batchdata:
            inputs, targets = engine.prepare_batch(batch, engine.state.device, engine.non_blocking,
                                                   **engine.to_kwargs)[:2]
            batches.append((head, inputs, targets))
        _, first_inputs, first_targets = batches[0]
        engine.state.output = {Keys.IMAGE: first_inputs, Keys.LABEL: first_targets}

        def _forward() -> list[torch.Tensor]:
            preds = [engine.network(inputs, head=head) for head, inputs, _ in batches]
            engine.state.output[Keys.PRED] = preds[0]
            return preds

        def _loss(preds: list[torch.Tensor]) -> None:
            losses = [engine.loss_function(pred, targets).mean() for pred, (_, _, targets) in zip(preds, batches)]
            engine.state.output[Keys.LOSS] = torch.stack(losses).sum()
            for (head, _, _), value in zip(batches, losses):
                engine.state.output[f"loss_{head}"] = value.detach()

        engine.network.train()
        optimisation_step(engine, _forward, _loss)
        return engine.state.output
