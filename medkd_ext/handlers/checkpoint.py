"""Saving a network's state dict atomically from a trainer or an evaluator."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from ignite.engine import Engine, Events
from torch import nn

from medkd_ext.networks.checkpoint import save_state_dict

__all__ = ["StateDictSaver", "BestStateDictSaver"]

logger = logging.getLogger(__name__)


class StateDictSaver:
    """Writes ``network``'s state dict to ``path`` atomically (temporary file, then rename) when training completes.

    A run that fails therefore never overwrites an existing checkpoint. To keep the best model of a validation
    evaluator instead, use :class:`BestStateDictSaver`.

    Args:
        network: the network to save.
        path: the checkpoint file (its folder is created).
    """

    def __init__(self, network: nn.Module, path: str | os.PathLike) -> None:
        self.network = network
        self.path = Path(path)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self._save)

    def _save(self, engine: Engine) -> None:
        save_state_dict(self.network, self.path)
        logger.info("saved %s", self.path)


class BestStateDictSaver:
    """Attach to an evaluator: after each evaluation whose metric beats the best so far, save the network.

    The checkpoint is written with :func:`medkd_ext.networks.save_state_dict` (temporary file, then rename), so a
    run stopped mid-write leaves the previous best intact, unlike MONAI's ``CheckpointSaver``. The file holds the
    network's plain state dict, as ``load_state_dict`` and ``ckpt_export`` read it.

    Args:
        network: the trained network (the one the evaluator runs).
        path: the checkpoint file, e.g. ``models/model.pt``.
        metric_name: entry of ``engine.state.metrics``; ``None`` uses the evaluator's key metric.
        mode: ``"max"`` (AUC, F1) or ``"min"`` (a loss).
    """

    def __init__(
        self, network: nn.Module, path: str | os.PathLike, metric_name: str | None = None, mode: str = "max"
    ) -> None:
        if not isinstance(network, nn.Module):
            raise TypeError(f"BestStateDictSaver: network must be a torch.nn.Module, got {type(network).__name__}.")
        if mode not in ("max", "min"):
            raise ValueError(f"BestStateDictSaver: mode must be 'max' or 'min', got {mode!r}.")
        self.network = network
        self.path = Path(path)
        self.metric_name = metric_name
        self.mode = mode
        self.best: float | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        name = self.metric_name or getattr(engine.state, "key_metric_name", None)
        metrics = engine.state.metrics
        if name is None or name not in metrics:
            raise ValueError(
                f"BestStateDictSaver: metric {name!r} is not among the evaluator's metrics {sorted(metrics)}; "
                "set metric_name or give the evaluator a key_val_metric."
            )
        value = float(metrics[name])
        if math.isnan(value):
            return
        better = self.best is None or (value > self.best if self.mode == "max" else value < self.best)
        if better:
            self.best = value
            save_state_dict(self.network, self.path)
            logger.info("best %s %.4f: model saved to %s", name, value, self.path)
