"""Saving a network's state dict atomically from a trainer or an evaluator; best-on-validation training with
learning-rate reduction on a plateau and early stopping."""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

from ignite.engine import Engine, Events
from torch import nn

from medkd_ext.networks.checkpoint import save_state_dict

__all__ = ["StateDictSaver", "BestStateDictSaver", "ValidationProtocol"]

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

    def state_dict(self) -> dict:
        """The best value so far, for resuming (:class:`~medkd_ext.handlers.TrainingState`)."""
        return {"best": self.best}

    def load_state_dict(self, state: dict) -> None:
        self.best = None if state["best"] is None else float(state["best"])

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


class ValidationProtocol:
    """Attach to a trainer: after each validation, keep the best network, reduce the learning rate on a plateau of
    the validation metric and stop early when it no longer improves.

    The protocol of Ceausescu et al. (joint-teacher bundle): "A learning rate reduction factor ... is applied whenever
    the validation loss does not improve for five consecutive epochs ... Models are trained for up to 300 epochs with
    early stopping based on validation performance", keeping the best model. Give it the trainer's
    ``ValidationHandler``'s evaluator; it listens to the evaluator's ``COMPLETED`` (every ``val_interval`` epochs),
    so patience counts validations.

    - best model: the network is saved (:func:`~medkd_ext.networks.save_state_dict`, atomic) whenever the metric
      beats the best so far (:class:`BestStateDictSaver`); if the training completes without any validation having
      saved it (fewer epochs than ``val_interval``), the final network is saved, with a warning, so that the stage
      always writes its checkpoint;
    - ``lr_scheduler`` (e.g. ``torch.optim.lr_scheduler.ReduceLROnPlateau``, ``mode`` as this handler's) is stepped
      with the metric after each validation;
    - early stopping: after ``early_stop_patience`` validations in a row without improvement the trainer is told to
      terminate (``None`` never stops early).

    Its state (best value, validations without improvement, the scheduler's state) is saved and restored by
    :class:`~medkd_ext.handlers.TrainingState`.

    Args:
        validator: the evaluator the trainer's ``ValidationHandler`` runs.
        network: the trained network.
        path: the checkpoint of the best network (the stage's checkpoint).
        metric_name: entry of the evaluator's ``state.metrics``; ``None`` uses its key metric.
        mode: ``"max"`` (Dice, AUC) or ``"min"`` (a loss).
        lr_scheduler: stepped with the metric after each validation (``step(metric)``), or ``None``.
        early_stop_patience: validations without improvement before stopping, or ``None``.
    """

    def __init__(
        self,
        validator: Engine,
        network: nn.Module,
        path: str | os.PathLike,
        metric_name: str | None = None,
        mode: str = "max",
        lr_scheduler: object | None = None,
        early_stop_patience: int | None = None,
    ) -> None:
        if not isinstance(validator, Engine):
            raise TypeError(f"ValidationProtocol: validator must be an ignite engine, got {type(validator).__name__}.")
        if early_stop_patience is not None and (isinstance(early_stop_patience, bool) or int(early_stop_patience) < 1):
            raise ValueError(
                f"ValidationProtocol: early_stop_patience must be >= 1 or null, got {early_stop_patience!r}."
            )
        self.validator = validator
        self.saver = BestStateDictSaver(network, path, metric_name, mode)
        self.lr_scheduler = lr_scheduler
        self.early_stop_patience = None if early_stop_patience is None else int(early_stop_patience)
        self.bad_validations = 0
        self.trainer: Engine | None = None

    def attach(self, engine: Engine) -> None:
        self.trainer = engine
        self.validator.add_event_handler(Events.COMPLETED, self._validated)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _validated(self, validator: Engine) -> None:
        before = self.saver.best
        self.saver(validator)
        name = self.saver.metric_name or validator.state.key_metric_name
        value = float(validator.state.metrics[name])
        improved = self.saver.best != before
        self.bad_validations = 0 if improved else self.bad_validations + 1
        if self.lr_scheduler is not None and not math.isnan(value):
            self.lr_scheduler.step(value)
        if self.early_stop_patience is not None and self.bad_validations >= self.early_stop_patience:
            logger.info("early stopping: %s has not improved on %.4f for %d validations", name, self.saver.best,
                        self.bad_validations)
            if self.trainer is not None:
                self.trainer.terminate()

    def _completed(self, engine: Engine) -> None:
        if self.saver.best is None:
            logger.warning(
                "no validation saved a best model in %d epochs (validation runs every val_interval epochs; or no "
                "finite metric): the final network is saved to %s", engine.state.epoch, self.saver.path)
            save_state_dict(self.saver.network, self.saver.path)

    def state_dict(self) -> dict:
        """Best value and validations without improvement, to resume (the scheduler is saved on its own)."""
        return {"best": self.saver.best, "bad_validations": self.bad_validations}

    def load_state_dict(self, state: dict) -> None:
        self.saver.load_state_dict({"best": state["best"]})
        self.bad_validations = int(state["bad_validations"])
