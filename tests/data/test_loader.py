from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from monai.data import Dataset
from monai.transforms import Compose, Lambdad, RandGaussianNoised
from monai.utils import set_determinism

from medkd_ext.data.loader import PrefetchDataLoader


def _data(n: int = 10) -> list[dict]:
    return [{"image": np.full((1, 4, 4), i, dtype=np.float32), "label": i} for i in range(n)]


def _batches(prefetch: int, num_workers: int = 0) -> list[torch.Tensor]:
    set_determinism(seed=0)
    transform = Compose([RandGaussianNoised(keys="image", prob=0.5, std=1.0)])
    loader = PrefetchDataLoader(Dataset(_data(), transform), prefetch=prefetch, batch_size=3, shuffle=True,
                                num_workers=num_workers)
    batches = [batch["image"].as_tensor().clone() for _ in range(2) for batch in loader]
    set_determinism(seed=None)
    return batches


@pytest.mark.parametrize("prefetch", [1, 3])
def test_prefetching_gives_the_batches_of_the_plain_loader(prefetch):
    """Same order, same random draws (two epochs, shuffled, random noise) as the plain DataLoader."""
    plain = _batches(0)
    assert len(plain) == 8 and all(torch.equal(a, b) for a, b in zip(plain, _batches(prefetch), strict=True))


def test_a_batch_is_made_while_the_consumer_works():
    """While the loop works on a batch, the thread makes the next one: the wait for it is not the loading time."""
    def slow(x):
        time.sleep(0.2)
        return x

    loader = PrefetchDataLoader(Dataset(_data(4), Lambdad("image", slow)), prefetch=1, batch_size=1)
    waits = []
    batches = iter(loader)
    next(batches)
    for _ in range(3):
        time.sleep(0.3)  # the training step
        start = time.perf_counter()
        next(batches)
        waits.append(time.perf_counter() - start)
    assert max(waits) < 0.15, waits  # a plain loader waits 0.2 s for each


def test_an_error_while_loading_reaches_the_loop_and_the_thread_ends():
    """A bad case stops the epoch with its own error (MONAI's ThreadDataLoader ends the epoch early instead)."""
    def fail_on_3(x):
        if float(x.flatten()[0]) == 3:
            raise ValueError("case 3 is bad")
        return x

    loader = PrefetchDataLoader(Dataset(_data(6), Lambdad("image", fail_on_3)), batch_size=2)
    seen = []
    with pytest.raises(RuntimeError, match="applying transform") as raised:  # MONAI's wrapper, as without the thread
        for batch in loader:
            seen.append(batch["label"].tolist())
    assert isinstance(raised.value.__cause__, ValueError) and str(raised.value.__cause__) == "case 3 is bad"
    assert seen == [[0, 1]]
    assert not [t for t in threading.enumerate() if t.name == "medkd-prefetch"]


def test_a_loop_that_stops_early_stops_the_thread():
    loader = PrefetchDataLoader(Dataset(_data(20)), batch_size=1, prefetch=2)
    for i, _ in enumerate(loader):
        if i == 1:
            break
    deadline = time.monotonic() + 5
    while [t for t in threading.enumerate() if t.name == "medkd-prefetch"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == "medkd-prefetch"]


@pytest.mark.parametrize("prefetch", [-1, 1.5, True, "2"])
def test_prefetch_must_be_a_count(prefetch):
    with pytest.raises(ValueError, match="prefetch must be an integer >= 0"):
        PrefetchDataLoader(Dataset(_data()), prefetch=prefetch)


def test_an_independent_transform_draws_on_its_own():
    """The copy a second loader gets: same transforms, its own random state (seeded), the original untouched."""
    from monai.transforms import RandSpatialCropd

    from medkd_ext.data import independent_transform

    original = Compose([RandSpatialCropd("image", roi_size=(2, 2), random_size=False), RandGaussianNoised("image")])
    original.set_random_state(seed=0)
    state = original.transforms[1].R.get_state()[1].copy()
    copy_a, copy_b = independent_transform(original, 1), independent_transform(original, 1)
    assert copy_a is not original and copy_a.transforms[0] is not original.transforms[0]
    assert np.array_equal(original.transforms[1].R.get_state()[1], state)
    image = {"image": np.arange(16, dtype=np.float32).reshape(1, 4, 4)}
    assert np.array_equal(copy_a(dict(image))["image"], copy_b(dict(image))["image"])  # seeded alike
    assert not np.array_equal(copy_a(dict(image))["image"], original(dict(image))["image"])
