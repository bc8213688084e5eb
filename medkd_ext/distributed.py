"""Multi-process training under ``torchrun``: the process group, ranks, data shards and collectives.

Every bundle trains on several processes (GPUs, or CPU processes with gloo) with the ``configs/multi_gpu_train.json``
overlay, the model-zoo's way::

    torchrun --nproc_per_node 2 -m monai.bundle run \\
        --config_file "['bundles/<bundle>/configs/train.json', 'bundles/<bundle>/configs/multi_gpu_train.json']"

The overlay initialises the process group (:func:`init_distributed`, from torchrun's environment), picks each rank's
device (:func:`distributed_device`), adds :class:`medkd_ext.handlers.DistributedTraining` (DistributedDataParallel for
the trained network) to every training stage and destroys the group at the end (:func:`end_distributed`). The base
configs need nothing of it: their loaders take :func:`shard_sampler`, which is ``None`` in a single process, and every
file write of ``medkd_ext`` (checkpoints, training state, settings records, reports) happens on rank 0 only
(:func:`is_main_process`).

Without an initialised process group of more than one process every function here is the single-process no-op, so
code calls them unconditionally.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler

__all__ = [
    "TORCHRUN_ENV",
    "FixedShardSampler",
    "average_gradients",
    "barrier",
    "distributed_device",
    "end_distributed",
    "gather_objects",
    "init_distributed",
    "is_distributed",
    "is_main_process",
    "local_rank",
    "rank",
    "shard_sampler",
    "stage_scope",
    "world_size",
]

logger = logging.getLogger(__name__)

ONE_PER_RANK_ENV = "MEDKD_STAGE_OF_RANK"
"""Set in the process in which one rank trains a stage alone (:class:`medkd_ext.engines.Stage` ``one_per_rank``)."""

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""What torchrun sets for a rank to join the process group (``LOCAL_RANK`` aside, which picks its GPU)."""
_stage_depth = 0


def is_distributed() -> bool:
    """Whether this process is one of several in an initialised process group."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 in a single process)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 in a single process)."""
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    """This process's index on its machine, from torchrun's ``LOCAL_RANK`` (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main_process() -> bool:
    """Whether this process writes files: rank 0, or the only process."""
    return rank() == 0


def distributed_device() -> torch.device:
    """This rank's device: ``cuda:<LOCAL_RANK>`` when CUDA is available, else the CPU (gloo)."""
    return torch.device(f"cuda:{local_rank()}") if torch.cuda.is_available() else torch.device("cpu")


def _quiet_other_ranks() -> None:
    """Ranks other than 0 log warnings and errors only, so that the console shows each progress line once."""
    if not is_main_process():
        logging.disable(logging.INFO)


def init_distributed(backend: str | None = None, timeout_minutes: float = 30.0) -> None:
    """Join the process group that ``torchrun`` set up (``env://``); a no-op when it is joined already.

    NCCL on CUDA (each rank on ``cuda:<LOCAL_RANK>``), gloo on CPU, unless ``backend`` says otherwise. Ranks other
    than 0 then log warnings and errors only. Started without torchrun (no ``RANK``/``WORLD_SIZE`` in the
    environment), the run goes on as one process and says so.

    Args:
        backend: ``"nccl"``, ``"gloo"`` or ``None`` (by device).
        timeout_minutes: how long a collective waits for the other ranks before failing.
    """
    if dist.is_available() and dist.is_initialized():
        _quiet_other_ranks()
        return
    missing = [name for name in TORCHRUN_ENV if name not in os.environ]
    if missing:
        if ONE_PER_RANK_ENV in os.environ:
            logger.info("rank %s trains this stage alone, on %s", os.environ[ONE_PER_RANK_ENV], distributed_device())
        else:
            logger.warning(
                "multi_gpu_train.json without torchrun (%s not set): training as one process. Start it with "
                "torchrun --nproc_per_node N -m monai.bundle run --config_file \"['.../train.json', "
                "'.../multi_gpu_train.json']\".", "/".join(missing),
            )
        return
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build; multi_gpu_train.json needs it.")
    cuda = torch.cuda.is_available()
    backend = backend or ("nccl" if cuda else "gloo")
    if backend == "nccl":
        if not cuda:
            raise RuntimeError("backend 'nccl' needs CUDA, which this machine does not have; use gloo.")
        torch.cuda.set_device(local_rank())
    from datetime import timedelta

    dist.init_process_group(backend=backend, init_method="env://", timeout=timedelta(minutes=timeout_minutes))
    _quiet_other_ranks()
    logger.info("process group: %d processes, backend %s, this is rank %d", world_size(), backend, rank())


@contextlib.contextmanager
def stage_scope() -> Iterator[None]:
    """While stages run inside a workflow (:func:`medkd_ext.engines.run_stages`): :func:`end_distributed` in a stage's
    ``finalize`` keeps the process group for the next stage."""
    global _stage_depth
    _stage_depth += 1
    try:
        yield
    finally:
        _stage_depth -= 1


def end_distributed() -> None:
    """Destroy the process group at the end of the outermost workflow (``finalize`` of ``multi_gpu_train.json``)."""
    if _stage_depth > 0 or not (dist.is_available() and dist.is_initialized()):
        return
    dist.destroy_process_group()


def barrier() -> None:
    """Wait until every rank gets here (a no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank; ``[obj]`` in a single process. Collective:
    every rank must call it."""
    if not is_distributed():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def shard_sampler(
    dataset: Sized, shuffle: bool = True, seed: int = 0, even_divisible: bool = True, fixed: bool = False
) -> torch.utils.data.Sampler | None:
    """The sampler of a loader under torchrun: each rank its part of ``dataset``; ``None`` in a single process.

    Give it as the loader's ``sampler`` with ``shuffle`` false (``"shuffle": "$@train#sampler is None"``). Training
    loaders pad their parts to equal length (``even_divisible``) so that every rank runs the same number of
    iterations, as the model-zoo's ``multi_gpu_train.json`` does; validation loaders give each case to one rank
    (``even_divisible=False``) and the metrics gather them. A validation set smaller than the number of ranks is
    padded (cases seen twice) so that no rank has nothing to evaluate. MONAI trainers call ``set_epoch`` every
    epoch, so the shuffle changes with the epoch as a single process's does.

    Args:
        dataset: the loader's dataset.
        shuffle: shuffle (with ``seed`` and the epoch) before sharding.
        seed: the run's seed.
        even_divisible: pad to equal parts.
        fixed: each rank keeps the same cases every epoch (:class:`FixedShardSampler`), shuffled within its part:
            with the teacher-output cache (``teacher_cache_views`` > 0) a rank then caches and reads its own cases
            only, instead of every case coming to every rank in turn.
    """
    if not is_distributed():
        return None
    if fixed:
        return FixedShardSampler(dataset, shuffle=shuffle, seed=seed)
    from monai.data import DistributedSampler

    if not even_divisible and len(dataset) < world_size():
        if is_main_process():
            logger.warning("%d cases for %d ranks: cases are repeated so that every rank has one", len(dataset),
                           world_size())
        even_divisible = True
    return DistributedSampler(dataset, even_divisible=even_divisible, shuffle=shuffle, seed=int(seed))


class FixedShardSampler(DistributedSampler):
    """Rank ``r`` of ``n`` takes the cases ``r, r + n, r + 2n, ...`` every epoch (padded with its first cases to the
    length of the largest part, so every rank runs the same iterations), in an order shuffled by seed and epoch. A
    ``DistributedSampler``, so MONAI's trainers call its ``set_epoch``.

    Args:
        dataset: the loader's dataset.
        shuffle: shuffle the rank's part every epoch (``set_epoch``, which MONAI's trainers call).
        seed: the run's seed.
    """

    def __init__(self, dataset: Sized, shuffle: bool = True, seed: int = 0) -> None:
        super().__init__(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=int(seed))
        self.world = self.num_replicas
        self.indices = list(range(self.rank, len(dataset), self.world))
        self.length = -(-len(dataset) // self.world)
        if not self.indices:
            raise ValueError(
                f"FixedShardSampler: {len(dataset)} cases for {self.world} ranks: rank {self.rank} has none."
            )

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        indices = list(self.indices)
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            indices = [indices[i] for i in torch.randperm(len(indices), generator=g).tolist()]
        indices += indices[: self.length - len(indices)]
        return iter(indices)


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over the ranks, as DistributedDataParallel does for its module's.

    For trained parameters outside the DDP-wrapped network (a domain discriminator, the adapters of loss terms). A
    parameter without a gradient on some rank counts as zero there and gets a gradient on every rank if any rank
    has one, so that every rank's optimizer makes the same step.
    """
    params = [p for p in parameters if p.requires_grad]
    if not is_distributed() or not params:
        return
    device = params[0].device
    has_grad = torch.tensor([float(p.grad is not None) for p in params], device=device)
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in params])
    dist.all_reduce(has_grad)
    dist.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, count in zip(params, has_grad.tolist(), strict=True):
        n = p.numel()
        if count > 0:
            grad = flat[offset : offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = grad.clone()
            else:
                p.grad.copy_(grad)
        offset += n
