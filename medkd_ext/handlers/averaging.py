"""Smooth parameter averaging of a network over epochs (RoS-KD eq. 1)."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from medkd_ext.distributed import is_distributed, world_size
from medkd_ext.networks.checkpoint import save_state_dict

__all__ = ["SmoothAveragingHandler", "recompute_batchnorm"]

logger = logging.getLogger(__name__)


def _default_input(batch: Any) -> torch.Tensor:
    if isinstance(batch, dict):
        return batch["image"]
    if isinstance(batch, (list, tuple)):
        return batch[0]
    return batch


@torch.no_grad()
def recompute_batchnorm(
    network: nn.Module,
    loader: Iterable,
    device: str | torch.device | None = None,
    input_fn: Callable[[Any], torch.Tensor] = _default_input,
) -> bool:
    """Recompute the running statistics of every BatchNorm layer of ``network`` on ``loader``.

    As ``torch.optim.swa_utils.update_bn`` does: the statistics are reset, accumulated as a cumulative average
    (``momentum=None``) over one pass of the loader with the network in ``train()`` mode, and the layers'
    momenta and the network's mode are restored afterwards. Parameters are not changed. Under torchrun each rank
    passes over its part of the loader (equal numbers of batches) and the statistics are averaged over the ranks, so
    every rank holds the average over all the batches, as one process passing over the whole loader would.

    Args:
        network: network whose BatchNorm statistics are recomputed in place.
        loader: iterable of batches (MONAI dicts with ``image``, tuples or tensors).
        device: device to run on; defaults to the device of the network's first parameter.
        input_fn: takes the network input from a batch.

    Returns:
        ``True`` when the network has BatchNorm layers and their statistics were recomputed.
    """
    norms = [m for m in network.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return False
    if device is None:
        device = next(network.parameters()).device
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    was_training = network.training
    network.train()
    seen = 0
    for batch in loader:
        network(torch.as_tensor(input_fn(batch)).to(device))
        seen += 1
    for m, momentum in momenta.items():
        m.momentum = momentum
    network.train(was_training)
    if seen == 0:
        raise ValueError("recompute_batchnorm: the loader yielded no batch; BatchNorm statistics are reset.")
    if is_distributed():
        for m in norms:
            for stat in (m.running_mean, m.running_var):
                if stat is not None:
                    dist.all_reduce(stat)
                    stat /= world_size()
            dist.all_reduce(m.num_batches_tracked)
    return True


class SmoothAveragingHandler:
    """Keeps ``M_smooth``, the running average of a network's parameters at epoch ends (RoS-KD eq. 1).

    After ``warmup_epochs`` epochs, at the end of every epoch ``W_smooth = (W_smooth * n + W) / (n + 1)``,
    where ``n`` is the number of epochs averaged so far (the first averaged epoch copies ``W``). Buffers that are
    not BatchNorm statistics are copied from the network. When training completes, the averaged network's
    BatchNorm statistics are recomputed on ``bn_loader`` (the averaged weights never produced the running
    statistics of any single epoch) and, if ``save_path`` is given, its state dict is written atomically.

    Args:
        network: the network being trained (the student).
        warmup_epochs: epochs before averaging starts (RoS-KD: 10).
        bn_loader: loader for the BatchNorm recomputation; ``None`` keeps the averaged running statistics.
        save_path: where to write ``M_smooth``'s state dict when training completes.
        device: device of the BatchNorm pass; defaults to the network's.
        input_fn: takes the network input from a batch of ``bn_loader`` (default: ``batch["image"]``).

    Attributes:
        averaged_network: ``M_smooth`` (a deep copy of ``network``), ``None`` until averaging starts.
        num_averaged: ``n``, the number of epochs averaged.
    """

    def __init__(
        self,
        network: nn.Module,
        warmup_epochs: int = 0,
        bn_loader: Iterable | None = None,
        save_path: str | Path | None = None,
        device: str | torch.device | None = None,
        input_fn: Callable[[Any], torch.Tensor] = _default_input,
    ) -> None:
        if warmup_epochs < 0:
            raise ValueError(f"SmoothAveragingHandler: warmup_epochs must be >= 0, got {warmup_epochs}.")
        self.network = network
        self.warmup_epochs = int(warmup_epochs)
        self.bn_loader = bn_loader
        self.save_path = Path(save_path) if save_path is not None else None
        self.device = device
        self.input_fn = input_fn
        self.averaged_network: nn.Module | None = None
        self.num_averaged = 0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.epoch_completed)
        engine.add_event_handler(Events.COMPLETED, self.completed)

    @torch.no_grad()
    def update(self) -> None:
        """Fold the network's current parameters into ``M_smooth`` (eq. 1)."""
        if self.averaged_network is None:
            self.averaged_network = copy.deepcopy(self.network)
            for p in self.averaged_network.parameters():
                p.requires_grad_(False)
            self.num_averaged = 1
            return
        n = self.num_averaged
        for p_avg, p in zip(self.averaged_network.parameters(), self.network.parameters(), strict=True):
            p_avg.mul_(n).add_(p.detach().to(p_avg.device)).div_(n + 1)  # RoS-KD eq. 1
        for (name, b_avg), b in zip(self.averaged_network.named_buffers(), self.network.buffers(), strict=True):
            if not name.endswith(("running_mean", "running_var", "num_batches_tracked")):
                b_avg.copy_(b)
            elif b_avg.is_floating_point():
                b_avg.mul_(n).add_(b.to(b_avg.device)).div_(n + 1)
        self.num_averaged = n + 1

    def state_dict(self) -> dict:
        """``M_smooth`` and the number of epochs in it, to resume (:class:`~medkd_ext.handlers.TrainingState`)."""
        averaged = self.averaged_network.state_dict() if self.averaged_network is not None else {}
        return {"num_averaged": self.num_averaged, "averaged": averaged}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (``M_smooth`` a copy of ``network`` holding the saved values)."""
        self.num_averaged = int(state["num_averaged"])
        if not state["averaged"]:
            self.averaged_network = None
            return
        self.averaged_network = copy.deepcopy(self.network)
        for p in self.averaged_network.parameters():
            p.requires_grad_(False)
        self.averaged_network.load_state_dict(state["averaged"])

    def epoch_completed(self, engine: Engine) -> None:
        if engine.state.epoch > self.warmup_epochs:
            self.update()

    def completed(self, engine: Engine) -> None:
        if self.averaged_network is None:
            logger.warning(
                "SmoothAveragingHandler: training ended after %d epochs, within the %d warm-up epochs; "
                "M_smooth is the final network.",
                engine.state.epoch,
                self.warmup_epochs,
            )
            self.update()
        if self.bn_loader is not None:
            recompute_batchnorm(self.averaged_network, self.bn_loader, self.device, self.input_fn)
        if self.save_path is not None:
            save_state_dict(self.averaged_network, self.save_path)
            logger.info("SmoothAveragingHandler: saved M_smooth (%d epochs averaged) to %s", self.num_averaged,
                        self.save_path)
