"""The settings a trained model was made with, recorded beside its weights and read back by evaluation and inference.

The student stage of every bundle writes ``model.json`` beside ``model.pt`` once it has trained (:func:`save_settings`;
a run that fails before the end leaves an earlier record as it was), and every teacher stage a record beside its
checkpoint, which the stages that load that teacher check (:func:`medkd_ext.engines.load_stage_output`): the ids that
define the network and its input (architecture and widths, channels, classes and their names, spatial dims, image
size or spacing and patch size, intensity handling) and the data it was trained on. ``evaluate.json`` and
``inference.json`` take those ids from the record (:func:`recorded`) instead of the demo defaults, and
:func:`check_recorded` refuses a value given on the command line that disagrees with the record, naming both.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medkd_ext.distributed import is_main_process
from medkd_ext.networks.checkpoint import file_sha256, record_path

__all__ = ["check_recorded", "recorded", "save_settings", "settings_path", "warn_if_reused_otherwise"]

logger = logging.getLogger(__name__)

_NO_DEFAULT = object()


def settings_path(ckpt_file: str | os.PathLike) -> Path:
    """The record beside a checkpoint: ``models/model.pt`` -> ``models/model.json``."""
    return record_path(ckpt_file)


def _plain(value: Any) -> Any:
    """A JSON value: tuples become lists, numpy/torch scalars plain numbers, paths strings."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def save_settings(ckpt_file: str | os.PathLike, *settings: Mapping[str, Any]) -> Path:
    """Write ``settings`` (dicts of id -> resolved value, merged) beside ``ckpt_file``, atomically; return the file.

    The record also holds ``ckpt_file``'s SHA-256 (``"sha256"``) when the file exists, which
    :func:`medkd_ext.networks.load_state_dict` checks at every load: call this once the checkpoint is final. Under
    torchrun only rank 0 writes it.

    Raises:
        TypeError: a value that JSON cannot hold (the message names the id).
    """
    path = settings_path(ckpt_file)
    content = {}
    merged: dict[str, Any] = {}
    for part in settings:
        merged.update(part)
    for key, value in merged.items():
        plain = _plain(value)
        try:
            json.dumps(plain)
        except TypeError as error:
            raise TypeError(f"save_settings: '{key}' = {value!r} cannot be recorded as JSON ({error}).") from error
        content[key] = plain
    if not is_main_process():  # under torchrun rank 0 writes the checkpoint and its record
        return path
    if Path(ckpt_file).is_file():
        content["sha256"] = file_sha256(ckpt_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    logger.info("settings of %s recorded in %s", ckpt_file, path)
    return path


def _read(ckpt_file: str | os.PathLike) -> dict[str, Any] | None:
    path = settings_path(ckpt_file)
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); train the model again to rewrite it.") from error
    if not isinstance(content, dict):
        raise ValueError(f"{path} must hold a JSON object of settings, got {type(content).__name__}.")
    return content


def recorded(ckpt_file: str | os.PathLike, key: str, default: Any = _NO_DEFAULT) -> Any:
    """The value of ``key`` that the model of ``ckpt_file`` was trained with.

    Args:
        ckpt_file: the checkpoint; its record is :func:`settings_path`.
        key: the config id.
        default: returned when there is no record (or it lacks ``key``), e.g. the demo's value in
            ``inference.json``, whose network must resolve before any model is trained (``verify_net_in_out``);
            without a default a missing record is an error.

    Raises:
        FileNotFoundError: no record and no default.
        KeyError: the record lacks ``key`` and there is no default.
    """
    content = _read(ckpt_file)
    if content is None:
        if default is _NO_DEFAULT:
            raise FileNotFoundError(
                f"{settings_path(ckpt_file)} does not exist: the settings of {ckpt_file} are unknown; train it with "
                f"configs/train.json (the student stage records them), or give --{key} and every setting of the model."
            )
        return default
    if key not in content:
        if default is _NO_DEFAULT:
            raise KeyError(f"{settings_path(ckpt_file)} records no '{key}'; give --{key}.")
        return default
    return content[key]


def _differences(content: Mapping[str, Any], values: Mapping[str, Any]) -> list[str]:
    return [
        f"{key}: trained with {content[key]!r}, this run has {_plain(value)!r}"
        for key, value in values.items()
        if key in content and _plain(value) != content[key]
    ]


def warn_if_reused_otherwise(
    ckpt_file: str | os.PathLike, values: Mapping[str, Any], what: str, advice: str
) -> list[str]:
    """Warn that a stage output reused without training (a teacher found in ``ckpt_dir``) was made otherwise.

    A stage with ``reuse_outputs`` is skipped when its checkpoint exists; this says so when the checkpoint's record
    disagrees with this run on ``values`` (e.g. the teacher's training data and initial weights), or holds none of
    them (an earlier version of medkd wrote it). A checkpoint without a record (given by the user) is not questioned.
    It warns instead of refusing: reusing a teacher on purpose is the point of ``reuse_outputs``.

    Args:
        ckpt_file: the reused checkpoint.
        values: id -> this run's value, as the stage records it.
        what: the model, for the message (``"the teacher"``).
        advice: how to train it again, ending the message.

    Returns:
        what the warning lists (empty: nothing to say).
    """
    content = _read(ckpt_file)
    if content is None:
        return []
    found = _differences(content, values)
    if not any(key in content for key in values):
        found = [f"its record {settings_path(ckpt_file)} names none of {sorted(values)} (an earlier version wrote it)"]
    if found:
        logger.warning(
            "%s %s exists and is reused without training, but it was made otherwise: %s. %s",
            what, ckpt_file, "; ".join(found), advice,
        )
    return found


def check_recorded(ckpt_file: str | os.PathLike, values: Mapping[str, Any], advice: str | None = None) -> None:
    """Refuse settings that disagree with the record of ``ckpt_file`` (nothing to check when there is none).

    Args:
        ckpt_file: the checkpoint; its record is :func:`settings_path`.
        values: id -> this run's value; ids the record lacks are not checked.
        advice: what the user should do, ending the message; default: leave the ids out (evaluation and inference
            read them from the record) or give the trained values.

    Raises:
        ValueError: naming every id whose value differs, with the recorded value and this run's.
    """
    content = _read(ckpt_file)
    if content is None:
        return
    wrong = _differences(content, values)
    if wrong:
        raise ValueError(
            f"the model {ckpt_file} was trained with other settings ({settings_path(ckpt_file)}): "
            + "; ".join(wrong)
            + ". "
            + (advice or "Leave these ids out (they are read from the record) or give the trained values.")
        )
