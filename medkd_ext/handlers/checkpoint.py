"""Saving a network's state dict atomically from a trainer or an evaluator."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ignite.engine import Engine, Events
from torch import nn

from medkd_ext.networks.checkpoint import save_state_dict

__all__ = ["StateDictSaver"]

logger = logging.getLogger(__name__)


class StateDictSaver:
    """Writes ``network``'s state dict to ``path`` atomically (temporary file, then rename).

    Attached to a trainer, the network is saved when training completes, so a run that fails never overwrites an
    existing checkpoint. With ``best_metric=True``, attach it to the validation evaluator: the network is saved
    each time the evaluator's key metric improves (``engine.state.best_metric``), as MONAI's ``CheckpointSaver``
    with ``save_key_metric`` does, but as a plain state dict written atomically.

    Args:
        network: the network to save.
        path: the checkpoint file (its folder is created).
        best_metric: save on key-metric improvement instead of at completion.
    """

    def __init__(self, network: nn.Module, path: str | os.PathLike, best_metric: bool = False) -> None:
        self.network = network
        self.path = Path(path)
        self.best_metric = best_metric
        self._last_best_epoch: int | None = None

    def attach(self, engine: Engine) -> None:
        if self.best_metric:
            engine.add_event_handler(Events.COMPLETED, self._save_if_best)
        else:
            engine.add_event_handler(Events.COMPLETED, self._save)

    def _save(self, engine: Engine) -> None:
        save_state_dict(self.network, self.path)
        logger.info("saved %s", self.path)

    def _save_if_best(self, engine: Engine) -> None:
        best_epoch = getattr(engine.state, "best_metric_epoch", None)
        if best_epoch is None or best_epoch < 0:
            raise ValueError("StateDictSaver(best_metric=True) needs an evaluator with a key_val_metric.")
        # a MONAI evaluator records the trainer's epoch of its best metric; save when that changes
        if best_epoch != self._last_best_epoch and best_epoch == engine.state.epoch:
            self._last_best_epoch = best_epoch
            self._save(engine)
