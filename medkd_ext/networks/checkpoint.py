"""Checkpoints as plain state dicts of tensors: atomic writes, safe reads, clear errors.

``save_state_dict`` writes a temporary file in the target folder and renames it over the target, so a failed run
never leaves a partial file nor destroys the previous checkpoint. ``load_state_dict`` reads with
``torch.load(..., weights_only=True)`` and checks the keys and shapes against the network before loading, so a
missing teacher or a checkpoint of another architecture is reported with the file and what to do.

Keys are stored relative to the unwrapped network: ``DataParallel``/``DistributedDataParallel`` (``"module."``) and
:class:`~medkd_ext.networks.FrozenTeacher` (``"network."``) prefixes are removed on saving and on loading, so a
checkpoint written from any wrapper loads into any other.

A record beside a checkpoint (``models/model.pt`` -> ``models/model.json``, :func:`record_path`) may hold the
file's SHA-256 (``"sha256"``, written by :func:`medkd_ext.engines.save_settings` once the stage that trains it has
finished); :func:`read_state_dict` checks it, so a weight file replaced, truncated or changed after training is refused
with its name instead of being loaded.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medkd_ext.distributed import is_main_process
from medkd_ext.networks.frozen import unwrap_network
from medkd_ext.runtime import file_sha256

__all__ = [
    "apply_state_dict",
    "atomic_save",
    "file_sha256",
    "load_state_dict",
    "read_state_dict",
    "record_path",
    "save_state_dict",
]

_WRAPPER_PREFIXES = ("module.", "network.")
_MAX_SHOWN = 5


def _strip_wrapper_prefixes(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Remove ``module.``/``network.`` prefixes shared by all keys; return the dict and the removed prefix."""
    removed = ""
    items = dict(state_dict)
    changed = True
    while changed and items:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(key.startswith(prefix) for key in items):
                items = {key[len(prefix) :]: value for key, value in items.items()}
                removed += prefix
                changed = True
    return items, removed


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


def save_state_dict(network_or_state_dict: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike) -> Path:
    """Write a network's parameters and buffers to ``path`` atomically, as a plain ``{key: tensor}`` dict.

    The dict is written to a temporary file in the same folder, flushed to disk and renamed over ``path``
    (``os.replace``), so ``path`` holds either the previous or the new checkpoint, never a partial one. Missing
    parent folders are created. Wrapper prefixes (``"module."``, ``"network."``) are removed.

    Args:
        network_or_state_dict: a network (possibly wrapped in ``DataParallel``, ``DistributedDataParallel`` or
            :class:`~medkd_ext.networks.FrozenTeacher`) or a state dict.
        path: the checkpoint file, conventionally ``models/<name>.pt``.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        TypeError: the argument is neither a module nor a mapping of string keys to tensors.
    """
    if isinstance(network_or_state_dict, nn.Module):
        state_dict = unwrap_network(network_or_state_dict).state_dict()
    elif isinstance(network_or_state_dict, Mapping):
        state_dict = network_or_state_dict
    else:
        raise TypeError(
            "save_state_dict: network_or_state_dict must be a torch.nn.Module or a state dict, "
            f"got {type(network_or_state_dict).__name__}."
        )
    for key, value in state_dict.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise TypeError(
                "save_state_dict: a checkpoint holds only str -> tensor entries, "
                f"got {key!r} -> {type(value).__name__}."
            )
    plain, _ = _strip_wrapper_prefixes(state_dict)
    plain = {key: value.detach() for key, value in plain.items()}

    return atomic_save(plain, path)


def atomic_save(obj: object, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically: a temporary file in the same folder, flushed to disk, then renamed
    over ``path`` (``os.replace``), so ``path`` holds the previous or the new content, never a partial file, even when
    the process is killed while writing. Missing parent folders are created; the file gets the mode a plain ``open()``
    would give it. Under torchrun only rank 0 writes (:func:`medkd_ext.distributed.is_main_process`); the other ranks
    hold the same weights and return at once.

    Returns:
        ``path`` as a ``Path``.
    """
    path = Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _FILE_MODE)  # mkstemp creates 0600; give the mode a plain open() would (umask applied)
        os.replace(tmp_name, path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.remove(tmp_name)
        raise
    return path


def record_path(ckpt_file: str | os.PathLike) -> Path:
    """The record beside a checkpoint (its settings and SHA-256): ``models/model.pt`` -> ``models/model.json``."""
    return Path(ckpt_file).with_suffix(".json")


def _check_sha256(path: Path, hint: str) -> None:
    """Refuse ``path`` if the record beside it holds a SHA-256 that its bytes no longer have."""
    record = record_path(path)
    if record == path or not record.is_file():
        return
    try:
        expected = json.loads(record.read_text(encoding="utf-8")).get("sha256")
    except (ValueError, AttributeError):
        return  # not a record of ours: nothing to check against (settings readers report a broken record)
    if not isinstance(expected, str):
        return
    actual = file_sha256(path)
    if actual != expected:
        raise ValueError(
            f"Checkpoint '{path}' is not the file that was trained: its SHA-256 is {actual[:12]}..., the one "
            f"recorded in '{record}' when it was written is {expected[:12]}.... It was replaced, truncated or changed "
            f"afterwards (or a later training run stopped before recording its own). Restore the file or train it "
            f"again{hint}."
        )


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_SHOWN])
    return shown + (f", ... ({len(items) - _MAX_SHOWN} more)" if len(items) > _MAX_SHOWN else "")


def load_state_dict(
    network: nn.Module,
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    strict: bool = True,
    stage_hint: str | None = None,
    key: str | None = None,
) -> nn.Module:
    """Load a checkpoint written by :func:`save_state_dict` (or any state dict file) into ``network``.

    The file is read with ``torch.load(path, map_location=device, weights_only=True)``. If it holds a dict of state
    dicts (``{"model": ..., "optimizer": ...}``, as MONAI's ``CheckpointSaver`` writes), ``key`` selects one.
    Wrapper prefixes are removed from the checkpoint's and the network's keys before they are compared, so
    checkpoints of wrapped and bare networks are interchangeable. Keys and shapes are checked before anything is
    copied; parameters keep their device (``device`` only says where the file's tensors are mapped).

    Args:
        network: the network to fill, possibly wrapped.
        path: the checkpoint file.
        device: ``map_location`` for ``torch.load``; ``None`` keeps the saved devices.
        strict: every key of the network must be in the checkpoint and vice versa; with ``False`` missing and
            unexpected keys are ignored, but shapes must match and at least one key must be shared.
        stage_hint: what produces this file, e.g. ``"written by stage 'teacher_0': run configs/train.json"``
            (:func:`medkd_ext.engines.stage_hint`); added to the error messages.
        key: entry of the checkpoint dict holding the state dict.

    Returns:
        ``network``, for chaining.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is not a readable weights-only checkpoint, ``key`` is wrong or missing, or the
            checkpoint does not fit the network (missing/unexpected keys, shape mismatches).
    """
    if not isinstance(network, nn.Module):
        raise TypeError(f"load_state_dict: network must be a torch.nn.Module, got {type(network).__name__}.")
    checkpoint = read_state_dict(path, device=device, stage_hint=stage_hint, key=key)
    return apply_state_dict(network, checkpoint, source=path, strict=strict, stage_hint=stage_hint)


def read_state_dict(
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    stage_hint: str | None = None,
    key: str | None = None,
) -> dict[str, torch.Tensor]:
    """Read a state dict of tensors from ``path`` (weights only), with the errors of :func:`load_state_dict`."""
    path = Path(path)
    hint = f" ({stage_hint})" if stage_hint else ""
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint '{path}' not found{hint}."
            if stage_hint
            else f"Checkpoint '{path}' not found; check the path or train the network that writes it first."
        )
    _check_sha256(path, hint)
    try:
        checkpoint = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(
            f"Checkpoint '{path}' could not be read as a weights-only PyTorch state dict ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}); delete it and write it again{hint}."
        ) from error

    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"Checkpoint '{path}' holds a {type(checkpoint).__name__}, not a state dict{hint}.")
    if key is not None:
        if key not in checkpoint:
            raise ValueError(
                f"Checkpoint '{path}' has no entry key={key!r}; "
                f"its entries are {_examples(sorted(map(str, checkpoint)))}."
            )
        checkpoint = checkpoint[key]
        if not isinstance(checkpoint, Mapping):
            raise ValueError(f"Checkpoint '{path}' entry {key!r} is a {type(checkpoint).__name__}, not a state dict.")
    non_tensors = sorted(str(k) for k, v in checkpoint.items() if not isinstance(v, torch.Tensor))
    if non_tensors:
        nested = [k for k in non_tensors if isinstance(checkpoint[k], Mapping)]
        what = f"pass key= one of {_examples(nested)}" if nested else "it is not a state dict of tensors"
        raise ValueError(f"Checkpoint '{path}' has non-tensor entries {_examples(non_tensors)}: {what}.")
    return dict(checkpoint)


def apply_state_dict(
    network: nn.Module,
    checkpoint: Mapping[str, torch.Tensor],
    source: str | os.PathLike = "<state dict>",
    strict: bool = True,
    stage_hint: str | None = None,
) -> nn.Module:
    """Copy ``checkpoint`` into ``network`` after checking keys and shapes (wrapper prefixes ignored).

    ``source`` names the checkpoint in the error messages. See :func:`load_state_dict`.
    """
    path = source
    hint = f" ({stage_hint})" if stage_hint else ""
    target = unwrap_network(network)
    target_state = target.state_dict()
    _, target_prefix = _strip_wrapper_prefixes(target_state)
    stripped, _ = _strip_wrapper_prefixes(checkpoint)
    state = {target_prefix + k: v for k, v in stripped.items()}

    missing = [k for k in target_state if k not in state]
    unexpected = [k for k in state if k not in target_state]
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs network {tuple(target_state[k].shape)}"
        for k, v in state.items()
        if k in target_state and v.shape != target_state[k].shape
    ]
    shared = len(state) - len(unexpected)
    if mismatched or (strict and (missing or unexpected)) or (state and shared == 0) or (target_state and not state):
        problems = []
        if missing:
            problems.append(f"{len(missing)} missing key(s) ({_examples(missing)})")
        if unexpected:
            problems.append(f"{len(unexpected)} unexpected key(s) ({_examples(unexpected)})")
        if mismatched:
            problems.append(f"{len(mismatched)} shape mismatch(es) ({_examples(mismatched)})")
        raise ValueError(
            f"Checkpoint '{path}' does not fit {type(target).__name__}: {'; '.join(problems)}. It was written for "
            "another architecture or configuration: check network_def (spatial_dims, in/out channels, sizes) "
            f"against the run that wrote it, or write it again{hint}."
        )
    target.load_state_dict(state, strict=strict)
    return network
