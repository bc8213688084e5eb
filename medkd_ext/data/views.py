"""A fixed number of augmented views per training case, replayed from seeds, for a teacher-output cache.

:class:`TeacherCacheDataset` wraps a MONAI ``Dataset`` / ``CacheDataset`` whose transform is
``Compose(deterministic + random)``. Case ``i`` has ``V`` views; view ``v`` is the case's random transforms run with the
random state of every MONAI ``Randomizable`` in the transform (nested ones such as ``RandCropByPosNegLabeld.cropper``
included) set from a seed derived from ``(seed, i, v)`` only, so the same view is the same image in every run, before
and after a resume. Each epoch a case draws one of its views from ``(seed, epoch, i)`` only. Every item carries
``case_index``, ``view`` and ``crop_index`` (the position in the list a multi-sample transform such as
``RandCropByPosNegLabeld(num_samples=n)`` returns; 0 otherwise), so a trainer knows which (case, view, crop) each batch
element is (``medkd_ext.engines.TeacherOutputCache``).
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import Randomizable, Transform

__all__ = [
    "CASE_KEY",
    "CROP_KEY",
    "VIEW_KEY",
    "TeacherCacheDataset",
    "data_fingerprint",
    "draw_view",
    "randomizables",
    "seed_randomizables",
    "transform_signature",
    "view_seed",
]

logger = logging.getLogger(__name__)

CASE_KEY = "case_index"
"""Item key of the index of the case in the wrapped dataset."""
VIEW_KEY = "view"
"""Item key of the augmented view, in ``[0, views)``."""
CROP_KEY = "crop_index"
"""Item key of the position of an item in the list a multi-sample transform returns (0 for a single item)."""

# Tags that keep the seed streams of the views' transforms and of the per-epoch draws apart.
_VIEW_STREAM = 0x5649_4557  # "VIEW"
_DRAW_STREAM = 0x4452_4157  # "DRAW"
_MASK64 = (1 << 64) - 1
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _entropy(*values: int) -> list[int]:
    return [int(v) & _MASK64 for v in values]


def view_seed(seed: int, case: int, view: int) -> int:
    """The seed of the random transforms of view ``view`` of case ``case``: a function of ``(seed, case, view)`` only.

    Args:
        seed: the run's seed (the config's ``seed``).
        case: index of the case in the dataset.
        view: index of the view.

    Returns:
        an integer in ``[0, 2**32)``.
    """
    return int(np.random.SeedSequence(_entropy(_VIEW_STREAM, seed, case, view)).generate_state(1)[0])


def draw_view(seed: int, epoch: int, case: int, views: int) -> int:
    """The view case ``case`` draws in ``epoch``: a function of ``(seed, epoch, case)`` only (and ``views``).

    The epochs go in cycles of ``views``: in each cycle a case sees each of its views once, in an order drawn afresh
    for every cycle from ``(seed, case, cycle)``. So the first ``views`` epochs compute every view once and the later
    ones read them, and a run resumed at any epoch draws what an uninterrupted run draws.

    Args:
        seed: the run's seed.
        epoch: the engine's epoch number (ignite counts from 1; 0 counts as 1).
        case: index of the case.
        views: number of views ``V >= 1``.
    """
    index = max(int(epoch) - 1, 0)
    cycle, position = divmod(index, int(views))
    order = np.random.default_rng(np.random.SeedSequence(_entropy(_DRAW_STREAM, seed, case, cycle))).permutation(views)
    return int(order[position])


def randomizables(transform: Any) -> list[Randomizable]:
    """Every MONAI ``Randomizable`` in ``transform``, in a fixed order (depth first, attributes in definition order).

    ``Compose`` members and the transforms a transform holds in its attributes (``RandCropByPosNegLabeld.cropper``,
    ``RandAffined.rand_affine`` ...) are included: each draws from a ``RandomState`` of its own.
    """
    found: list[Randomizable] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(obj, Randomizable):
            found.append(obj)
        for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
            for item in value if isinstance(value, (list, tuple)) else (value,):
                if isinstance(item, (Transform, Randomizable)):
                    visit(item)

    visit(transform)
    return found


def seed_randomizables(objects: Sequence[Randomizable], seed: int) -> None:
    """Set the random state of each of ``objects`` (as :func:`randomizables` lists them) from one ``seed``.

    A parent is seeded before its children, so a parent that seeds its children from its own state
    (``Compose``, ``RandCropByPosNegLabeld``) is then overridden by each child's own seed.
    """
    seeds = np.random.SeedSequence(int(seed) & _MASK64).generate_state(len(objects)) if objects else []
    for obj, value in zip(objects, seeds):
        obj.set_random_state(seed=int(value))


def _update_stable(digest: Any, value: Any, depth: int = 0) -> None:
    """Feed a stable description of ``value`` into ``digest`` (no memory addresses, tensors by their bytes)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu() if isinstance(value, torch.Tensor) else torch.as_tensor(np.array(value))
        array = array.as_subclass(torch.Tensor).contiguous()
        digest.update(f"array{tuple(array.shape)}{array.dtype}:".encode())
        digest.update(array.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(value, Mapping):
        digest.update(b"{")
        for key in sorted(value, key=str):
            digest.update(f"{key!s}:".encode())
            _update_stable(digest, value[key], depth + 1)
        digest.update(b"}")
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _update_stable(digest, item, depth + 1)
        digest.update(b"]")
    elif isinstance(value, str):
        digest.update(json.dumps(value).encode())
        if os.path.isfile(value):  # a file rewritten under the same name is other data
            stat = os.stat(value)
            digest.update(f"<{stat.st_size},{stat.st_mtime_ns}>".encode())
    else:
        digest.update(_ADDRESS.sub("", repr(value)).encode())


def data_fingerprint(data: Sequence[Any]) -> str:
    """SHA-256 of a data list: its items (keys, values, tensors by their bytes) and the size and modification time of
    every file an item names, so that a changed list or a rewritten image gives another fingerprint."""
    digest = hashlib.sha256()
    _update_stable(digest, list(data))
    return digest.hexdigest()


def transform_signature(transform: Any, max_depth: int = 4) -> str:
    """A stable text describing ``transform``: classes and public attributes, recursively (``Compose`` members and the
    transforms held in attributes), without memory addresses and random states.

    MONAI transforms have no ``repr`` of their settings (it shows the address), so this is what tells two transform
    chains apart. Private attributes (``_do_transform`` and other per-call state) are left out; take the signature
    of a chain before it is used, as :class:`TeacherCacheDataset` does.
    """

    def describe(obj: Any, depth: int, seen: set[int]) -> str:
        if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, np.dtype, enum.Enum)):
            return repr(obj)
        if isinstance(obj, (torch.Tensor, np.ndarray)):
            digest = hashlib.sha256()
            _update_stable(digest, obj)
            return f"array:{digest.hexdigest()[:16]}"
        if isinstance(obj, (list, tuple)):
            return "[" + ", ".join(describe(v, depth + 1, seen) for v in obj) + "]"
        if isinstance(obj, Mapping):
            return "{" + ", ".join(f"{k!s}: {describe(obj[k], depth + 1, seen)}" for k in sorted(obj, key=str)) + "}"
        if isinstance(obj, (np.random.RandomState, np.random.Generator, torch.Generator, type(threading.Lock()))):
            return type(obj).__name__
        if isinstance(obj, type) or inspect.isroutine(obj):
            return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}"
        name = f"{type(obj).__module__}.{type(obj).__qualname__}"
        if hasattr(obj, "__dict__") and depth < max_depth and id(obj) not in seen:
            seen = seen | {id(obj)}
            fields = [
                f"{k}={describe(v, depth + 1, seen)}"
                for k, v in vars(obj).items()
                if not k.startswith("_") and k != "R"
            ]
            return f"{name}({', '.join(fields)})"
        return _ADDRESS.sub("", repr(obj)) if type(obj).__repr__ is not object.__repr__ else name

    return describe(transform, 0, set())


class TeacherCacheDataset(torch.utils.data.Dataset):
    """``V`` augmented views per case of a MONAI dataset, replayed from seeds, each item labelled with its
    (case, view, crop).

    ``dataset[i]`` is read with the random state of every ``Randomizable`` of ``dataset.transform`` set from
    :func:`view_seed` ``(seed, i, v)``, so view ``v`` of case ``i`` is the same image in every run. For a
    ``CacheDataset`` MONAI applies the cached deterministic prefix and then the random part (``_transform``), so only
    the random part draws from those states; for a ``Dataset`` the whole ``Compose`` runs, whose deterministic part
    draws nothing. ``self[i]`` is the view :func:`draw_view` ``(seed, epoch, i, V)`` of the current :attr:`epoch`,
    which :class:`medkd_ext.engines.TeacherOutputCache` sets at every epoch start (before the loader's iterator, and
    its worker processes, are created; loaders with ``persistent_workers`` would keep the first epoch's value, so
    they are refused there).

    Each item is a new dict with ``case_index``, ``view`` and ``crop_index`` added; a transform that returns a list of
    samples per case (``RandCropByPosNegLabeld(num_samples=n)``) gives a list whose items have ``crop_index``
    ``0..n-1``: the view names the whole list.

    Args:
        dataset: a MONAI ``Dataset`` (``CacheDataset``, ``PersistentDataset`` ...) with a ``transform``.
        views: number of views per case ``V >= 1``.
        seed: the run's seed.
    """

    def __init__(self, dataset: Any, views: int, seed: int = 0) -> None:
        if isinstance(views, bool) or not isinstance(views, (int, np.integer)) or views < 1:
            raise ValueError(f"TeacherCacheDataset: views must be an integer >= 1, got {views!r}.")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"TeacherCacheDataset: seed must be an integer, got {seed!r}.")
        if isinstance(dataset, TeacherCacheDataset):
            raise TypeError("TeacherCacheDataset: the dataset is already a TeacherCacheDataset.")
        self.dataset = dataset
        self.views = int(views)
        self.seed = int(seed)
        self.epoch = 1
        self._randomizables = randomizables(self.transform) if self.transform is not None else []
        self._signature = transform_signature(self.transform)
        self._lock = threading.Lock()  # the transforms' random states are shared: seed-and-run is one step

    def __getstate__(self) -> dict[str, Any]:  # loader workers started by "spawn" receive a pickled copy
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def transform(self) -> Any:
        """The wrapped dataset's transform (``None`` when it has none)."""
        return getattr(self.dataset, "transform", None)

    @property
    def data(self) -> Sequence[Any] | None:
        """The wrapped dataset's data list, if it has one."""
        return getattr(self.dataset, "data", None)

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        """Draw the views of ``epoch`` (the engine's epoch number) from now on."""
        self.epoch = int(epoch)

    def view_of(self, index: int, epoch: int | None = None) -> int:
        """The view case ``index`` draws in ``epoch`` (default the current :attr:`epoch`)."""
        return draw_view(self.seed, self.epoch if epoch is None else epoch, index, self.views)

    def item(self, index: int, view: int) -> dict[str, Any] | list[dict[str, Any]]:
        """View ``view`` of case ``index``, labelled with ``case_index``, ``view`` and ``crop_index``."""
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= view < self.views:
            raise IndexError(f"TeacherCacheDataset: view {view} is not in [0, {self.views}).")
        with self._lock:
            seed_randomizables(self._randomizables, view_seed(self.seed, index, view))
            data = self.dataset[index]
        labels = {CASE_KEY: index, VIEW_KEY: int(view)}
        if isinstance(data, Mapping):
            return {**data, **labels, CROP_KEY: 0}
        if isinstance(data, (list, tuple)) and all(isinstance(d, Mapping) for d in data):
            return [{**d, **labels, CROP_KEY: j} for j, d in enumerate(data)]
        raise TypeError(
            f"TeacherCacheDataset: item {index} is a {type(data).__name__}; the wrapped dataset must give dicts (or "
            "lists of dicts), to which case_index and view are added."
        )

    def __getitem__(self, index: int) -> dict[str, Any] | list[dict[str, Any]]:
        return self.item(index, self.view_of(index))

    def fingerprint(self) -> dict[str, Any]:
        """What the views depend on: the data list, the transforms' signature, ``views`` and ``seed``."""
        data = self.data
        if data is None:
            logger.warning(
                "TeacherCacheDataset: %s has no data list, so a changed data list cannot be detected; its length "
                "stands for it.", type(self.dataset).__name__,
            )
            data_hash = f"len={len(self)}"
        else:
            data_hash = data_fingerprint(data)
        transforms = hashlib.sha256(self._signature.encode()).hexdigest()
        return {"data": data_hash, "transforms": transforms, "views": self.views, "seed": self.seed}
