"""A data loader that prepares the next batches while the network trains on the current one."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from copy import deepcopy
from queue import Empty, Full, Queue
from typing import Any

from monai.data import DataLoader

_END = object()
_POLL_S = 0.1


class PrefetchDataLoader(DataLoader):
    """MONAI's ``DataLoader`` whose batches are made ``prefetch`` ahead by a background thread.

    With ``num_workers=0`` (the bundles' default) the random transforms of a batch would otherwise run between two
    training steps while the network waits; here they run in a thread of the training process during the step (the
    network's operators release the GIL), as MONAI's ``ThreadDataLoader`` does, but an error raised while loading
    reaches the training loop as itself instead of ending the epoch early, and a loop that stops early (an
    interrupted epoch) stops the thread. The batches come in the same order with the same random draws as without
    the thread: one thread makes them one after the other. Worker processes (``num_workers > 0``) are used as by
    ``DataLoader``; the thread then overlaps the copy from them (and the pinning) with the step.

    Args:
        dataset: the dataset, as for ``DataLoader``.
        prefetch: how many batches to make ahead (0: none, the plain ``DataLoader``).
        kwargs: the other arguments of ``monai.data.DataLoader``.
    """

    def __init__(self, dataset: Any, prefetch: int = 1, **kwargs: Any) -> None:
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"prefetch must be an integer >= 0 (0: off), got {prefetch!r}.")
        super().__init__(dataset, **kwargs)
        self.prefetch = prefetch

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        return batches if self.prefetch == 0 else _prefetched(batches, self.prefetch)


def _prefetched(batches: Iterator[Any], size: int) -> Iterator[Any]:
    """Yield the items of ``batches``, made up to ``size`` ahead by a thread; its error is raised here."""
    queue: Queue = Queue(size)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=_POLL_S)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put((batch, None)):
                    return
            put((_END, None))
        except BaseException as error:  # raised again in the consuming thread
            put((_END, error))

    thread = threading.Thread(target=produce, name="medkd-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            try:
                batch, error = queue.get(timeout=_POLL_S)
            except Empty:
                if not thread.is_alive() and queue.empty():
                    raise RuntimeError("the data-loading thread stopped without a batch or an error.") from None
                continue
            if batch is _END:
                if error is not None:
                    raise error
                return
            yield batch
    finally:
        stop.set()
        thread.join()


def independent_transform(transform: Any, seed: int) -> Any:
    """A copy of ``transform`` with its random transforms seeded by ``seed``, for a second loader of the same data.

    A random transform keeps what it drew between drawing and applying it (a crop's centre, an angle), so two
    loaders, one of which prepares batches in a :class:`PrefetchDataLoader` thread, must not share one: each gets its
    own copy (the domain-adversarial source teacher's target loader and its source loader, for one)."""
    from .views import randomizables, seed_randomizables

    copy_ = deepcopy(transform)
    seed_randomizables(randomizables(copy_), seed)
    return copy_
