"""DistributedDataParallel for a trainer of any stage, attached from ``configs/multi_gpu_train.json``."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents
from monai.handlers import TensorBoardStatsHandler
from torch.nn.parallel import DistributedDataParallel

from medkd_ext.distributed import average_gradients, is_distributed, is_main_process
from medkd_ext.networks.frozen import unwrap_network

__all__ = ["DistributedTraining"]


class DistributedTraining:
    """Train a stage on every rank of a ``torchrun`` process group, as DistributedDataParallel does.

    When the trainer starts (after a resumed state is loaded), its ``network`` is wrapped in
    ``DistributedDataParallel``, which broadcasts rank 0's weights and buffers (BatchNorm statistics) to every rank and
    averages the gradients over the ranks in the backward pass; the config's ``network`` stays the plain module, so
    feature taps, checkpoints, smoothing and validation see the network's own names. Trained parameters outside the
    network (a domain discriminator, the adapters of loss terms: whatever else the optimizer holds) have their
    gradients averaged after the backward pass (``BACKWARD_COMPLETED``), so every rank makes the same step. When the
    trainer completes, ``network`` is the plain module again.

    Ranks other than 0 write no TensorBoard events: the ``TensorBoardStatsHandler`` of the trainer and of
    ``validator`` are detached there and their empty event files removed. Checkpoints, training states and reports
    are written by rank 0 only wherever ``medkd_ext`` writes them.

    In a single process (no process group) it does nothing, so the overlay can be merged anywhere.

    Args:
        validator: the stage's evaluator, whose TensorBoard handlers ranks other than 0 detach too.
        find_unused_parameters: DDP's option, for networks with trained parameters that some iterations do not use.
    """

    def __init__(self, validator: Engine | None = None, find_unused_parameters: bool = False) -> None:
        self.validator = validator
        self.find_unused_parameters = bool(find_unused_parameters)
        self._outside: list[torch.nn.Parameter] = []

    def attach(self, engine: Engine) -> None:
        if not is_distributed():
            return
        engine.add_event_handler(Events.STARTED, self._wrap)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self._average_outside)
        engine.add_event_handler(Events.COMPLETED, self._unwrap)
        if not is_main_process():
            for source in (engine, self.validator):
                if isinstance(source, Engine):
                    _detach_tensorboard(source)

    def _wrap(self, engine: Engine) -> None:
        network = engine.network
        if isinstance(network, DistributedDataParallel):
            return
        device = next(network.parameters()).device
        engine.network = DistributedDataParallel(
            network,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=self.find_unused_parameters,
        )
        inside = {id(p) for p in network.parameters()}
        optimizer = getattr(engine, "optimizer", None)
        groups = optimizer.param_groups if optimizer is not None else []
        self._outside = [p for g in groups for p in g["params"] if id(p) not in inside and p.requires_grad]

    def _average_outside(self, engine: Engine) -> None:
        average_gradients(self._outside)

    def _unwrap(self, engine: Engine) -> None:
        engine.network = unwrap_network(engine.network)


def _detach_tensorboard(engine: Engine) -> None:
    """Remove the TensorBoard handlers of ``engine`` (and their event files, empty so far) on this rank."""
    handlers = {}
    for event, entries in list(engine._event_handlers.items()):  # ignite keeps (callable, args, kwargs) per event
        for func, *_ in list(entries):
            owner = getattr(func, "__self__", None)
            if isinstance(owner, TensorBoardStatsHandler):
                engine.remove_event_handler(func, event)
                handlers[id(owner)] = owner
    for handler in handlers.values():
        writer = getattr(handler, "_writer", None)
        if writer is None:
            continue
        log_dir = Path(writer.get_logdir())
        writer.close()
        for path in log_dir.glob(f"events.out.tfevents.*.{os.getpid()}.*"):
            path.unlink(missing_ok=True)
