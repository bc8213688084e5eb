"""``TeacherOutputCache``: the frozen teachers of a ``DistillationTrainer`` run once per (case, view), not every epoch.

Distillation's cost is the teachers' forward passes, repeated on every batch of every epoch although the teachers never
change. With a :class:`~medkd_ext.data.TeacherCacheDataset` as the training dataset each case has a fixed number ``V``
of augmented views, replayed from seeds, and each batch element says which (case, view, crop) it is. The cache keeps
every teacher output a loss term reads (the logits ``"pred"`` and the tapped feature maps, of one or several teachers)
per element, the first time a view is drawn, and the trainer reads them from then on:

- **keys**: ``(case_index, view, crop_index)``; a batch is read from the cache when every element is there, else the
  teachers run on the batch and the outputs of its new elements are stored;
- **storage**: decided per loss term at the first batch, from the outputs' sizes: CPU tensors in a dict while the
  total fits ``max_memory_mb``, then memory-mapped files under ``folder`` (``torch.from_file``, shared) while it fits
  ``max_disk_mb`` and the free disk space; a term that fits neither keeps running its teachers. Each decision is
  logged with its size;
- **invalidation**: the cache is keyed by a SHA-256 of the teachers' state-dict bytes, the inferer, the data list
  (and the size and time of every file it names), the transforms' signature, ``V`` and the seed. It is computed when
  every run starts; another key discards what was cached (in memory, and the other keyed folders under ``folder``).
  The files of an unchanged key are reused, so a resumed run reads what the interrupted one computed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from ignite.engine import Events

from medkd_ext.data.views import CASE_KEY, CROP_KEY, VIEW_KEY, TeacherCacheDataset, transform_signature
from medkd_ext.distributed import is_distributed, rank
from medkd_ext.networks.frozen import unwrap_network

if TYPE_CHECKING:
    from medkd_ext.engines.distillation import DistillationTrainer

__all__ = ["TeacherOutputCache", "teacher_fingerprint", "teacher_output_cache", "teacher_views"]

logger = logging.getLogger(__name__)

Slot = tuple[str, str]
"""One stored teacher value: (teacher name, ``"pred"`` or a tapped layer)."""

MEMORY, DISK, TEACHER = "memory", "disk", "teacher"
_MARKER = "teacher_cache.json"
_FORMAT = 1


def teacher_fingerprint(teacher: torch.nn.Module) -> str:
    """SHA-256 of a teacher's state dict: every entry's name, dtype, shape and bytes (wrappers removed first)."""
    digest = hashlib.sha256()
    for name, value in unwrap_network(teacher).state_dict().items():
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def teacher_views(dataset: Any, views: int, seed: int) -> Any:
    """The training dataset of a distilling stage: ``dataset`` wrapped in a
    :class:`~medkd_ext.data.TeacherCacheDataset` of ``views`` views per case, or ``dataset`` itself when ``views`` is
    0 (the teacher cache off); the bundles' ``teacher_cache_views``."""
    if isinstance(views, bool) or not isinstance(views, int) or views < 0:
        raise ValueError(f"teacher_cache_views must be an integer >= 0 (0: no teacher cache), got {views!r}.")
    return dataset if views == 0 else TeacherCacheDataset(dataset, views, seed)


def teacher_output_cache(
    dataset: Any, folder: str | os.PathLike | None, max_memory_mb: float, max_disk_mb: float | None = None
) -> TeacherOutputCache | None:
    """A :class:`TeacherOutputCache` over ``dataset`` when :func:`teacher_views` wrapped it, else ``None``."""
    if not isinstance(dataset, TeacherCacheDataset):
        return None
    return TeacherOutputCache(dataset, folder, max_memory_mb, max_disk_mb)


def _size(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


@dataclass
class _Plan:
    """Where each teacher value is kept, decided at the first batch."""

    shapes: dict[Slot, tuple[tuple[int, ...], torch.dtype]]
    crops: int
    entries: int
    storage: dict[Slot, str] = field(default_factory=dict)
    terms: dict[str, str] = field(default_factory=dict)
    run_teachers: list[str] = field(default_factory=list)

    def slots(self, where: str) -> list[Slot]:
        return [s for s, w in self.storage.items() if w == where]

    def entry_bytes(self, slots: Sequence[Slot]) -> int:
        return sum(_numel(self.shapes[s][0]) * self.shapes[s][1].itemsize for s in slots)


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


class TeacherOutputCache:
    """Teacher outputs per (case, view, crop) for a :class:`~medkd_ext.engines.DistillationTrainer`.

    Give it to the trainer (``DistillationTrainer(..., teacher_cache=cache)``), whose training loader reads
    ``dataset``. The trainer calls :meth:`teacher_values` instead of running its teachers; at every epoch start the
    cache sets ``dataset``'s epoch, so each case draws its view of that epoch (:func:`medkd_ext.data.draw_view`). See
    the module docstring for keys, storage and invalidation. ``stats`` counts the batches computed by the teachers and
    those read from the cache.

    Args:
        dataset: the :class:`~medkd_ext.data.TeacherCacheDataset` of the training loader.
        folder: where memory-mapped outputs go when they do not fit ``max_memory_mb`` (one sub-folder per key,
            e.g. ``<ckpt_dir>/cache/<stage>``); ``None``: memory only.
        max_memory_mb: memory the cached outputs may take, in MiB.
        max_disk_mb: disk space they may take under ``folder``, in MiB; ``None``: up to 90% of the free space.
    """

    def __init__(
        self,
        dataset: TeacherCacheDataset,
        folder: str | os.PathLike | None = None,
        max_memory_mb: float = 4096,
        max_disk_mb: float | None = None,
    ) -> None:
        if not isinstance(dataset, TeacherCacheDataset):
            raise TypeError(
                f"TeacherOutputCache: dataset must be a medkd_ext.data.TeacherCacheDataset (the training loader's "
                f"dataset, wrapped), got {type(dataset).__name__}."
            )
        for name, value in (("max_memory_mb", max_memory_mb), ("max_disk_mb", max_disk_mb)):
            if value is None and name == "max_disk_mb":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"TeacherOutputCache: {name} must be a number >= 0 (MiB), got {value!r}.")
        self.dataset = dataset
        self.folder = None if folder is None else Path(folder)
        self.max_memory_bytes = float(max_memory_mb) * 2**20
        self.max_disk_bytes = None if max_disk_mb is None else float(max_disk_mb) * 2**20
        self.trainer: DistillationTrainer | None = None
        self.key: str | None = None
        self.key_parts: dict[str, Any] = {}
        self.stats = {"computed": 0, "cached": 0}
        self._epoch_stats = {"computed": 0, "cached": 0}
        self._clear()

    def _clear(self) -> None:
        self.plan: _Plan | None = None
        self._memory: dict[tuple[int, int, int], dict[Slot, torch.Tensor]] = {}
        self._disk: dict[Slot, torch.Tensor] = {}
        self._filled: torch.Tensor | None = None
        self.disk_dir: Path | None = None

    # -- wiring -------------------------------------------------------------------------------------------------

    def attach(self, trainer: DistillationTrainer) -> None:
        """Register the cache's handlers on ``trainer`` (the trainer calls this when given the cache)."""
        if self.trainer is not None and self.trainer is not trainer:
            raise ValueError("TeacherOutputCache: this cache already serves another trainer; build one per trainer.")
        loader = getattr(trainer, "data_loader", None)
        loader_dataset = getattr(loader, "dataset", None)
        if loader_dataset is not None and loader_dataset is not self.dataset:
            raise ValueError(
                f"TeacherOutputCache: the trainer's loader reads a {type(loader_dataset).__name__}, not the "
                "TeacherCacheDataset given to the cache; give the loader that dataset (train#dataloader#dataset)."
            )
        if getattr(loader, "persistent_workers", False) and getattr(loader, "num_workers", 0) > 0:
            raise ValueError(
                "TeacherOutputCache: the training loader has persistent_workers=True, so its workers would never see "
                "the epoch that selects each case's view; build it with persistent_workers=False."
            )
        self.trainer = trainer
        trainer.add_event_handler(Events.STARTED, lambda engine: self.prepare(engine))
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: self.dataset.set_epoch(engine.state.epoch))
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._log_epoch)

    def prepare(self, trainer: DistillationTrainer) -> None:
        """Compute the key of what the cached outputs depend on; discard them if it changed (every run start)."""
        parts = {
            "format": _FORMAT,
            "teachers": {name: teacher_fingerprint(t) for name, t in trainer.teachers.items()},
            "inferer": hashlib.sha256(transform_signature(trainer.inferer).encode()).hexdigest(),
            **self.dataset.fingerprint(),
        }
        key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
        if key != self.key:
            if self.key is not None:
                changed = sorted(k for k in parts if parts[k] != self.key_parts.get(k))
                logger.info("teacher cache: %s changed; the cached teacher outputs are discarded", ", ".join(changed))
            self._clear()
            self.key, self.key_parts = key, parts
        if self.folder is not None:
            self._discard_other_folders()

    def _folder_name(self) -> str:
        return self.key[:16] + (f"_rank{rank()}" if is_distributed() else "")

    def _discard_other_folders(self) -> None:
        """Remove the cache folders of other keys under ``folder`` (those holding this module's marker only)."""
        if not self.folder.is_dir():
            return
        for child in self.folder.iterdir():
            if child.is_dir() and (child / _MARKER).is_file() and not child.name.startswith(self.key[:16]):
                logger.info("teacher cache: removing %s, cached for other teachers, data or settings", child)
                shutil.rmtree(child, ignore_errors=True)

    # -- the trainer's entry point ------------------------------------------------------------------------------

    def teacher_values(
        self,
        trainer: DistillationTrainer,
        batchdata: Mapping[str, Any],
        inputs: torch.Tensor,
        args: tuple,
        kwargs: dict,
    ) -> dict[str, dict[str, Any]]:
        """What ``trainer._run_teachers`` returns for this batch: read from the cache when every element is there,
        else computed by the teachers and stored for the elements not yet cached."""
        if self.key is None:
            self.prepare(trainer)
        keys = self._batch_keys(batchdata, inputs.shape[0])
        if self.plan is None:
            values = trainer._run_teachers(inputs, args, kwargs)
            self.plan = self._make_plan(trainer, values, keys)
            self._open_disk()
            self._store(keys, values)
            self._count("computed")
            return values
        if not all(self._complete(k) for k in keys):
            values = trainer._run_teachers(inputs, args, kwargs)
            self._store(keys, values)
            self._count("computed")
            return values
        values = self._read(keys, trainer)
        if self.plan.run_teachers:
            for name, fresh in trainer._run_teachers(inputs, args, kwargs, names=self.plan.run_teachers).items():
                values.setdefault(name, {}).update(fresh)
        for name in trainer.teachers:
            values.setdefault(name, {})
        self._count("cached")
        return values

    def _count(self, what: str) -> None:
        self.stats[what] += 1
        self._epoch_stats[what] += 1

    def _log_epoch(self, engine: Any) -> None:
        computed, cached = self._epoch_stats["computed"], self._epoch_stats["cached"]
        logger.info(
            "teacher cache, epoch %d: %d of %d batches read from the cache; %d views cached (%s in memory)",
            engine.state.epoch, cached, computed + cached, self.num_cached(), _size(self.memory_bytes()),
        )
        self._epoch_stats = {"computed": 0, "cached": 0}

    def _batch_keys(self, batchdata: Any, batch_size: int) -> list[tuple[int, int, int]]:
        if not isinstance(batchdata, Mapping) or CASE_KEY not in batchdata or VIEW_KEY not in batchdata:
            raise ValueError(
                f"TeacherOutputCache: the batch has no '{CASE_KEY}' and '{VIEW_KEY}'; the training loader must read a "
                "medkd_ext.data.TeacherCacheDataset (the dataset wrapped with the number of views)."
            )

        def ints(value: Any) -> list[int]:
            return [int(v) for v in (value.reshape(-1).tolist() if isinstance(value, torch.Tensor) else value)]

        case, view = ints(batchdata[CASE_KEY]), ints(batchdata[VIEW_KEY])
        crop = ints(batchdata[CROP_KEY]) if CROP_KEY in batchdata else [0] * len(case)
        if not len(case) == len(view) == len(crop) == batch_size:
            raise ValueError(
                f"TeacherOutputCache: the batch has {batch_size} images but {len(case)} '{CASE_KEY}' values; the "
                "loader must collate the items of a TeacherCacheDataset unchanged."
            )
        return list(zip(case, view, crop))

    # -- storage ------------------------------------------------------------------------------------------------

    def _make_plan(
        self, trainer: DistillationTrainer, values: dict[str, dict[str, Any]], keys: list[tuple[int, int, int]]
    ) -> _Plan:
        """Decide, term by term in order, where its teacher outputs are kept (memory, disk, or not at all)."""
        shapes = {
            (name, source): (tuple(v.shape[1:]), v.dtype)
            for name, outputs in values.items()
            for source, v in outputs.items()
            if isinstance(v, torch.Tensor) and v.ndim >= 1 and v.shape[0] == len(keys)
        }
        crops = max(k[2] for k in keys) + 1
        cases, views = len(self.dataset), self.dataset.views
        plan = _Plan(shapes=shapes, crops=crops, entries=cases * views * crops)
        memory_left = self.max_memory_bytes
        disk_left = self._disk_budget()
        for name in trainer.loss_terms:
            slots = list(dict.fromkeys(trainer.teacher_sources(name)))
            if not slots:
                continue
            new = [s for s in slots if s not in plan.storage]
            per_view = plan.entry_bytes([s for s in slots if s in shapes]) * crops
            size = plan.entry_bytes([s for s in new if s in shapes]) * plan.entries
            if any(s not in shapes for s in slots):
                where, why = TEACHER, "not one tensor per batch element"
            elif size <= memory_left:
                where, why = MEMORY, f"memory limit {_size(self.max_memory_bytes)}, {_size(memory_left)} left"
                memory_left -= size
            elif size <= disk_left:
                where, why = DISK, f"over the memory left ({_size(memory_left)}); disk {_size(disk_left)} left"
                disk_left -= size
            else:
                where = TEACHER
                why = f"fits neither the memory left ({_size(memory_left)}) nor " + (
                    f"the disk left ({_size(disk_left)})" if self.folder is not None else "disk (no cache folder)"
                )
            plan.terms[name] = where
            for s in new:
                if where != TEACHER:
                    plan.storage[s] = where
            logger.info(
                "teacher cache: term '%s' reads %s: %s per case and view, %s for %d cases x %d views%s -> %s (%s)",
                name, ", ".join(f"{t}:{s}" for t, s in slots), _size(per_view), _size(size), cases, views,
                f" x {crops} crops" if crops > 1 else "", "keeps running its teachers" if where == TEACHER else where,
                why,
            )
        plan.run_teachers = sorted({t for name, w in plan.terms.items() if w == TEACHER
                                    for t, _ in trainer.teacher_sources(name)})
        for slot in [s for s in plan.storage if s[0] in plan.run_teachers]:
            del plan.storage[slot]  # that teacher runs on every batch anyway
        logger.info(
            "teacher cache: %s in memory, %s on disk%s; teachers run on every batch: %s",
            _size(plan.entry_bytes(plan.slots(MEMORY)) * plan.entries),
            _size(plan.entry_bytes(plan.slots(DISK)) * plan.entries),
            f" under {self.folder / self._folder_name()}" if plan.slots(DISK) else "",
            ", ".join(plan.run_teachers) or "none",
        )
        return plan

    def _disk_budget(self) -> float:
        if self.folder is None:
            return 0.0
        probe = self.folder
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        free = 0.9 * shutil.disk_usage(probe).free
        return free if self.max_disk_bytes is None else min(free, self.max_disk_bytes)

    def _open_disk(self) -> None:
        """Open (or create) the memory-mapped files of the disk slots under ``folder/<key>``."""
        slots = self.plan.slots(DISK)
        if not slots:
            return
        self.disk_dir = self.folder / self._folder_name()
        layout = {
            "format": _FORMAT,
            "key": self.key,
            "parts": self.key_parts,
            "entries": self.plan.entries,
            "crops": self.plan.crops,
            "slots": [
                {"teacher": t, "source": s, "shape": list(self.plan.shapes[(t, s)][0]),
                 "dtype": str(self.plan.shapes[(t, s)][1]), "file": f"slot{j}.bin"}
                for j, (t, s) in enumerate(slots)
            ],
        }
        files = {(e["teacher"], e["source"]): self.disk_dir / e["file"] for e in layout["slots"]}
        sizes = {slot: self.plan.entries * self.plan.entry_bytes([slot]) for slot in slots}
        marker = self.disk_dir / _MARKER
        reuse = (
            marker.is_file()
            and json.loads(marker.read_text(encoding="utf-8")) == json.loads(json.dumps(layout))
            and all(f.is_file() and f.stat().st_size == sizes[s] for s, f in files.items())
            and (self.disk_dir / "filled.bin").is_file()
        )
        if not reuse:
            shutil.rmtree(self.disk_dir, ignore_errors=True)
            self.disk_dir.mkdir(parents=True)
            temporary = marker.with_suffix(".tmp")
            temporary.write_text(json.dumps(layout, indent=1), encoding="utf-8")
            os.replace(temporary, marker)
            for slot, path in files.items():
                with open(path, "wb") as handle:
                    handle.truncate(sizes[slot])
            with open(self.disk_dir / "filled.bin", "wb") as handle:
                handle.truncate(self.plan.entries)
        for slot, path in files.items():
            shape, dtype = self.plan.shapes[slot]
            flat = torch.from_file(str(path), shared=True, size=self.plan.entries * _numel(shape), dtype=dtype)
            self._disk[slot] = flat.view(self.plan.entries, *shape)
        self._filled = torch.from_file(str(self.disk_dir / "filled.bin"), shared=True, size=self.plan.entries,
                                       dtype=torch.uint8)
        filled = int(self._filled.sum())
        logger.info("teacher cache: %s %s (%d of %d views filled)", "reusing" if reuse else "created", self.disk_dir,
                    filled, self.plan.entries)

    def _index(self, key: tuple[int, int, int]) -> int:
        case, view, crop = key
        if not (0 <= case < len(self.dataset) and 0 <= view < self.dataset.views and 0 <= crop < self.plan.crops):
            raise ValueError(
                f"TeacherOutputCache: batch element (case {case}, view {view}, crop {crop}) is outside the "
                f"{len(self.dataset)} cases x {self.dataset.views} views x {self.plan.crops} crops seen in the first "
                "batch; every case must give the same number of samples."
            )
        return (case * self.dataset.views + view) * self.plan.crops + crop

    def _complete(self, key: tuple[int, int, int]) -> bool:
        if self.plan.slots(MEMORY) and key not in self._memory:
            return False
        return not self._disk or bool(self._filled[self._index(key)])

    def _store(self, keys: list[tuple[int, int, int]], values: dict[str, dict[str, Any]]) -> None:
        rows = [b for b, key in enumerate(keys) if not self._complete(key)]
        if not rows:
            return
        memory, disk = self.plan.slots(MEMORY), self.plan.slots(DISK)
        cpu = {slot: values[slot[0]][slot[1]].detach().to("cpu") for slot in memory + disk}
        for b in rows:
            if memory:
                self._memory[keys[b]] = {slot: cpu[slot][b].clone() for slot in memory}
        if disk:
            index = torch.tensor([self._index(keys[b]) for b in rows])
            picked = torch.tensor(rows)
            for slot in disk:
                self._disk[slot][index] = cpu[slot].index_select(0, picked)
            self._filled[index] = 1  # after the values: an interrupted write leaves the entry empty

    def _read(self, keys: list[tuple[int, int, int]], trainer: DistillationTrainer) -> dict[str, dict[str, Any]]:
        values: dict[str, dict[str, Any]] = {}
        device, non_blocking = trainer.state.device, trainer.non_blocking
        memory = self.plan.slots(MEMORY)
        if memory:
            entries = [self._memory[k] for k in keys]
            for t, s in memory:
                stacked = torch.stack([entry[(t, s)] for entry in entries])
                values.setdefault(t, {})[s] = stacked.to(device, non_blocking=non_blocking)
        disk = self.plan.slots(DISK)
        if disk:
            index = torch.tensor([self._index(k) for k in keys])
            for t, s in disk:
                rows = self._disk[(t, s)].index_select(0, index)
                values.setdefault(t, {})[s] = rows.to(device, non_blocking=non_blocking)
        return values

    # -- figures ------------------------------------------------------------------------------------------------

    def num_cached(self) -> int:
        """Number of (case, view, crop) entries whose teacher outputs are stored."""
        if self.plan is None:
            return 0
        if self.plan.slots(MEMORY):
            return len(self._memory)
        return int(self._filled.sum()) if self._filled is not None else 0

    def memory_bytes(self) -> int:
        """Bytes of the teacher outputs held in memory."""
        return 0 if self.plan is None else len(self._memory) * self.plan.entry_bytes(self.plan.slots(MEMORY))
