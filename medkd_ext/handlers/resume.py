"""Resuming an interrupted training stage: the full training state saved at each epoch end, loaded by ``--resume``.

:class:`TrainingState` is one handler every bundle attaches to every training stage (``train#handlers``). At each
epoch end it writes, atomically (:func:`medkd_ext.networks.atomic_save`), everything the next epochs depend on:

- the trainer's epoch and iteration;
- the state dicts of the trainer's network, optimizer, AMP gradient scaler, loss function and learnable loss terms,
  domain discriminator, of the LR scheduler of any handler that holds one (``LrScheduleHandler``) and of every
  ``medkd_ext`` handler with a state of its own, on the trainer or on its validator
  (:class:`~medkd_ext.handlers.SmoothAveragingHandler`, :class:`~medkd_ext.handlers.BestStateDictSaver`), of the
  ignite handler a MONAI handler wraps (``EarlyStopHandler``'s counter and best score), and the validator's best
  metric;
- the random states: torch (CPU and every CUDA device), numpy, Python's ``random`` and each random transform of the
  trainer's data loaders (MONAI ``Randomizable``: its own ``RandomState``), so the epochs after a resume draw the same
  batches, augmentations and stochastic loss weights as an uninterrupted run;
- the raw config of the stage (the ids it ran with), to refuse a resume under other settings.

Everything is stored as tensors, numbers, strings, lists and dicts, so ``torch.load(..., weights_only=True)`` reads it
(numpy's RNG state as a tensor and plain numbers, not a pickled object).

With ``resume`` true the state is loaded when the trainer starts (``Events.STARTED``, as MONAI's ``CheckpointLoader``
does) and training continues after the last completed epoch. Without it a stage starts fresh, as it always did, and
says that it found an earlier state and how to continue from it. The state file of a stage is :func:`state_path` of
its checkpoint (``models/model.pt`` -> ``models/state/model.pt``). It is removed when the trainer completes (its last
epoch, or stopped early), after the stage's other handlers wrote their files, so that only an interrupted stage
leaves one: a stage run alone through its overlay is not taken for an interrupted one by a later ``train.json`` run.
:func:`medkd_ext.engines.run_stages` then records the stage's completion and outputs.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.transforms import Randomizable, Transform
from torch import nn

from medkd_ext.data.views import randomizables
from medkd_ext.distributed import is_main_process
from medkd_ext.networks.checkpoint import atomic_save
from medkd_ext.networks.frozen import unwrap_network

__all__ = ["RUN_ONLY_IDS", "TrainingState", "config_differences", "state_path"]

logger = logging.getLogger(__name__)

STATE_FORMAT = 1

RUN_ONLY_IDS = ("resume", "num_threads", "num_workers", "prefetch_batches", "device", "teacher_cache_max_memory_mb")
"""Top-level ids that change how a run executes but not what it computes: they may differ between an interrupted run
and the run that resumes it (``--resume true`` itself, the CPU threads, the loader workers, the device, the memory
the teacher-output cache may take)."""


def state_path(ckpt_file: str | os.PathLike) -> Path:
    """The training state of the stage that writes ``ckpt_file``: ``models/model.pt`` -> ``models/state/model.pt``."""
    ckpt_file = Path(ckpt_file)
    return ckpt_file.parent / "state" / ckpt_file.name


def _comparable(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` as JSON values, without :data:`RUN_ONLY_IDS`."""
    plain = json.loads(json.dumps(dict(config), default=str, sort_keys=True))
    return {key: value for key, value in plain.items() if key not in RUN_ONLY_IDS}


def _differences(saved: Any, current: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}#{key}" if prefix else str(key)
            if key not in saved:
                yield f"{name} (not in the saved run)"
            elif key not in current:
                yield f"{name} (only in the saved run)"
            else:
                yield from _differences(saved[key], current[key], name)
    elif saved != current:
        yield f"{prefix}: saved {json.dumps(saved)[:80]}, now {json.dumps(current)[:80]}"


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The ids whose raw values differ between two raw configs (:data:`RUN_ONLY_IDS` left out), as ``"id: saved ...,
    now ..."`` strings, nested ids written ``a#b``."""
    return list(_differences(_comparable(saved), _comparable(current)))


def _owner(handler: Any) -> Any:
    """The object behind an ignite event handler: a bound method's instance, a filtered event's wrapped handler."""
    parent = getattr(handler, "_parent", None)  # ignite wraps handlers of filtered events (every=k) in a closure
    if parent is not None:
        handler = parent() if callable(parent) else parent
    return getattr(handler, "__self__", handler)


def _handler_owners(engine: Engine) -> list[Any]:
    owners: list[Any] = []
    seen: set[int] = set()
    for handlers in engine._event_handlers.values():
        for handler, _, _ in handlers:
            owner = _owner(handler)
            if owner is engine or id(owner) in seen:
                continue
            seen.add(id(owner))
            owners.append(owner)
    return owners


def _has_state(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _loaders(engine: Engine) -> list[Any]:
    """The trainer's data loaders: ``data_loader``, a domain-adversarial ``target_data_loader`` and the loaders that
    a round-robin loader (``loaders``) goes through."""
    pending = [getattr(engine, name, None) for name in ("data_loader", "target_data_loader")]
    loaders: list[Any] = []
    while pending:
        loader = pending.pop(0)
        if loader is None or any(loader is known for known in loaders):
            continue
        loaders.append(loader)
        pending.extend(getattr(loader, "loaders", None) or [])
    return loaders


def _numpy_state(state: tuple) -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = state
    return {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _numpy_tuple(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return (state["name"], keys, int(state["pos"]), int(state["has_gauss"]), float(state["cached_gaussian"]))


def _python_state(state: tuple) -> dict[str, Any]:
    version, internal, gauss = state
    return {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss}


def _python_tuple(state: Mapping[str, Any]) -> tuple:
    return (int(state["version"]), tuple(int(v) for v in state["internal"].tolist()), state["gauss"])


class TrainingState:
    """Attach to a trainer: save its full state at each epoch end; with ``resume``, continue from the saved state.

    Add it once to the base workflow's ``train#handlers`` (every stage inherits it)::

        {"_target_": "medkd_ext.handlers.TrainingState", "path": "$medkd_ext.handlers.state_path(@stage_ckpt)",
         "resume": "@resume", "stage": "@stage_name", "config": "$medkd_ext.engines.current_config()"}

    The state is saved after every other epoch-end handler (validation, LR scheduling, averaging): the saving handler
    is registered when the trainer starts, after all handlers given to the trainer were attached, and so is the one
    that removes the state when the trainer completes.

    Args:
        path: the state file (:func:`state_path` of the stage's checkpoint); written atomically.
        resume: continue from ``path`` when it exists (``true``/``false``, also as command-line strings); without a
            state file the stage starts from its first epoch and says so.
        stage: the stage's name, for messages.
        config: the raw config of the stage (:func:`medkd_ext.engines.current_config`), recorded in the state; a
            resume under other ids (except :data:`RUN_ONLY_IDS`) is refused, naming them.
        objects: further name -> object with ``state_dict``/``load_state_dict`` to save, beyond those found on the
            trainer and its handlers.

    Raises:
        ValueError: from the trainer's start, when the state cannot be read or was saved by a run with other settings,
            another number of iterations per epoch or other random transforms (naming the file and what differs).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        resume: bool | str = False,
        stage: str = "training",
        config: Mapping[str, Any] | None = None,
        objects: Mapping[str, Any] | None = None,
    ) -> None:
        from medkd_ext.engines.stages import as_flag  # engines import handlers: import here, not at module level

        self.path = Path(path)
        self.resume = as_flag(resume, "resume")
        self.stage = str(stage)
        self.config = _comparable(config) if config is not None else None
        self.objects = dict(objects or {})
        for name, obj in self.objects.items():
            if not _has_state(obj):
                raise TypeError(f"TrainingState: objects['{name}'] ({type(obj).__name__}) has no state_dict.")
        self.resumed_from: int | None = None

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._started)

    # what is saved ----------------------------------------------------------------------------------------------
    def _stateful(self, engine: Engine) -> dict[str, Any]:
        """name -> object whose ``state_dict`` is saved, in an order fixed by the config."""
        found: dict[str, Any] = {}
        for name in ("network", "optimizer", "scaler", "loss_function", "discriminator"):
            obj = getattr(engine, name, None)
            if name == "network" and obj is not None:
                obj = unwrap_network(obj)  # DistributedDataParallel under torchrun: the network's own keys
            if obj is not None and _has_state(obj):
                found[name] = obj
        for term_name, term in (getattr(engine, "loss_terms", None) or {}).items():
            loss = getattr(term, "loss", None)
            if isinstance(loss, nn.Module):
                found[f"loss_term.{term_name}"] = loss

        visited = {id(engine)}
        owners_seen: set[int] = set()

        def from_handlers(prefix: str, source: Engine) -> None:
            counts: dict[str, int] = {}
            for owner in _handler_owners(source):
                if id(owner) in owners_seen:
                    continue
                owners_seen.add(id(owner))
                attributes = getattr(owner, "__dict__", {})  # instance attributes only (ignite metrics make up others)
                scheduler = attributes.get("lr_scheduler")
                validator = attributes.get("validator")
                if isinstance(validator, Engine) and id(validator) in visited:
                    validator = None  # a handler on the trainer and on its validator (ValidationProtocol): once
                inner = attributes.get("_handler")  # MONAI's EarlyStopHandler wraps ignite's EarlyStopping
                ours = type(owner).__module__.startswith("medkd_ext.") and not isinstance(owner, TrainingState)
                if not (_has_state(scheduler) or (ours and _has_state(owner)) or isinstance(validator, Engine)
                        or _has_state(inner)):
                    continue
                kind = type(owner).__name__
                counts[kind] = counts.get(kind, 0) + 1
                name = f"{prefix}{kind}.{counts[kind]}"
                if _has_state(scheduler):
                    found[name + ".lr_scheduler"] = scheduler
                if ours and _has_state(owner):
                    found[name] = owner
                elif _has_state(inner):
                    found[name + "._handler"] = inner
                if isinstance(validator, Engine):
                    visited.add(id(validator))
                    from_handlers(f"{name}.validator.", validator)

        from_handlers("handler", engine)
        for name, obj in self.objects.items():
            found[f"object.{name}"] = obj
        return found

    @staticmethod
    def _validators(engine: Engine) -> list[Engine]:
        found: list[Engine] = []
        for owner in _handler_owners(engine):
            validator = getattr(owner, "__dict__", {}).get("validator")
            if isinstance(validator, Engine) and not any(validator is v for v in found):
                found.append(validator)
        return found

    @staticmethod
    def _transforms(engine: Engine) -> list[Randomizable]:
        found: list[Randomizable] = []
        seen: set[int] = set()
        for loader in _loaders(engine):
            dataset = getattr(loader, "dataset", None)
            transform = getattr(dataset, "transform", None)
            roots = [d for d in (dataset,) if isinstance(d, Randomizable)]
            roots += [t for t in (transform,) if isinstance(t, (Transform, Randomizable))]
            for root in roots:
                for obj in randomizables(root):
                    if id(obj) not in seen:
                        seen.add(id(obj))
                        found.append(obj)
        return found

    def _state(self, engine: Engine) -> dict[str, Any]:
        rng: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _numpy_state(np.random.get_state()),
            "python": _python_state(random.getstate()),
            "transforms": [_numpy_state(t.R.get_state()) for t in self._transforms(engine)],
        }
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": STATE_FORMAT,
            "stage": self.stage,
            "epoch": int(engine.state.epoch),
            "iteration": int(engine.state.iteration),
            "epoch_length": int(engine.state.epoch_length or 0),
            "max_epochs": int(engine.state.max_epochs or 0),
            "config": json.dumps(self.config) if self.config is not None else "",
            "objects": {name: obj.state_dict() for name, obj in self._stateful(engine).items()},
            "validators": [
                {"best_metric": float(getattr(v.state, "best_metric", -1)),
                 "best_metric_epoch": int(getattr(v.state, "best_metric_epoch", -1))}
                for v in self._validators(engine)
            ],
            "rng": rng,
        }

    # events -----------------------------------------------------------------------------------------------------
    def _started(self, engine: Engine) -> None:
        if not engine.has_event_handler(self._epoch_completed, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)
        if not engine.has_event_handler(self._completed, Events.COMPLETED):
            # registered now, after every handler given to the trainer: the stage's checkpoints and reports are
            # written before its state goes
            engine.add_event_handler(Events.COMPLETED, self._completed)
        if not self.path.is_file():
            if self.resume:
                logger.info("stage '%s': no saved state in %s; training starts from the first epoch.", self.stage,
                            self.path)
            return
        saved = self._read()
        if not self.resume:
            logger.warning(
                "stage '%s': found the state of an earlier run in %s (epoch %d of %d); this run starts over and "
                "replaces it at its first epoch end. To continue from epoch %d instead, run the same command with "
                "--resume true.", self.stage, self.path, saved["epoch"], saved["max_epochs"], saved["epoch"])
            return
        self._load(engine, saved)

    def _epoch_completed(self, engine: Engine) -> None:
        atomic_save(self._state(engine), self.path)  # rank 0 only under torchrun; every rank loads it

    def _completed(self, engine: Engine) -> None:
        """The trainer finished (its last epoch, or stopped early): a later run has nothing to continue, and a
        stage run alone through its overlay is not taken for an interrupted one by the next ``train.json`` run."""
        if is_main_process() and self.path.is_file():
            self.path.unlink()
            logger.info("stage '%s' finished: its training state %s removed.", self.stage, self.path)

    # loading ----------------------------------------------------------------------------------------------------
    def _read(self) -> dict[str, Any]:
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"stage '{self.stage}': the saved training state {self.path} cannot be read ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); delete it to train this stage from its first "
                "epoch."
            ) from error
        if not isinstance(saved, dict) or saved.get("format") != STATE_FORMAT:
            raise ValueError(
                f"stage '{self.stage}': {self.path} is not a training state of this version of medkd; delete it to "
                "train this stage from its first epoch."
            )
        return saved

    def _refuse(self, what: str) -> None:
        raise ValueError(
            f"stage '{self.stage}': cannot resume from {self.path}: {what}. Run with the ids the interrupted run had, "
            "or without --resume true to train this stage from its first epoch."
        )

    def _load(self, engine: Engine, saved: dict[str, Any]) -> None:
        if self.config is not None and saved["config"]:
            differences = config_differences(json.loads(saved["config"]), self.config)
            if differences:
                shown = "; ".join(differences[:6]) + (f"; ... ({len(differences) - 6} more)" if len(differences) > 6
                                                       else "")
                self._refuse(f"it was saved by a run with other settings ({shown})")
        if saved["epoch_length"] != int(engine.state.epoch_length or 0):
            self._refuse(f"it was saved with {saved['epoch_length']} iterations per epoch, this run has "
                         f"{engine.state.epoch_length} (other data or batch size)")
        objects = self._stateful(engine)
        if sorted(objects) != sorted(saved["objects"]):
            self._refuse(f"it holds the state of {sorted(saved['objects'])}, this run has {sorted(objects)}")
        transforms = self._transforms(engine)
        if len(transforms) != len(saved["rng"]["transforms"]):
            self._refuse(f"it holds {len(saved['rng']['transforms'])} random transform states, this run has "
                         f"{len(transforms)}")
        for name, obj in objects.items():
            obj.load_state_dict(saved["objects"][name])
        for validator, best in zip(self._validators(engine), saved["validators"], strict=False):
            validator.state.best_metric = best["best_metric"]
            validator.state.best_metric_epoch = best["best_metric_epoch"]
        for transform, state in zip(transforms, saved["rng"]["transforms"], strict=True):
            transform.R.set_state(_numpy_tuple(state))
        torch.set_rng_state(saved["rng"]["torch"])
        if "cuda" in saved["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["rng"]["cuda"])
        np.random.set_state(_numpy_tuple(saved["rng"]["numpy"]))
        random.setstate(_python_tuple(saved["rng"]["python"]))
        engine.state.epoch = int(saved["epoch"])
        engine.state.iteration = int(saved["iteration"])
        self.resumed_from = int(saved["epoch"])
        logger.info("stage '%s': resuming after epoch %d of %d from %s.", self.stage, saved["epoch"],
                    engine.state.max_epochs, self.path)
