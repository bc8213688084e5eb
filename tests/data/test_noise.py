from __future__ import annotations

import numpy as np
import pytest
import torch

from medkd_ext.data import apply_label_noise_to_items, inject_label_noise


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_symmetric_follows_the_kd_study(rate):
    # replacement drawn from all C classes: the fraction that actually changes is rate * (C - 1) / C
    labels = np.arange(10_000) % 5
    noisy, changed = inject_label_noise(labels, rate, 5, seed=0)
    assert changed.mean() == pytest.approx(rate * 4 / 5, abs=0.02)
    np.testing.assert_array_equal(changed, noisy != labels)
    assert noisy.dtype == labels.dtype and noisy.shape == labels.shape
    # replacements are uniform over the classes
    counts = np.bincount(noisy[changed], minlength=5) / changed.sum()
    np.testing.assert_allclose(counts, 0.2, atol=0.03)


def test_symmetric_exclusive_changes_rate_of_labels():
    labels = np.zeros(10_000, dtype=np.int64)
    noisy, changed = inject_label_noise(labels, 0.3, 4, seed=1, mode="symmetric_exclusive")
    assert changed.mean() == pytest.approx(0.3, abs=0.02)
    assert set(np.unique(noisy[changed]).tolist()) == {1, 2, 3}


def test_noise_levels_are_nested_and_deterministic():
    labels = np.arange(2000) % 3
    low, low_mask = inject_label_noise(labels, 0.2, 3, seed=4)
    high, high_mask = inject_label_noise(labels, 0.6, 3, seed=4)
    assert np.all(high_mask[low_mask])
    np.testing.assert_array_equal(high[low_mask], low[low_mask])
    np.testing.assert_array_equal(inject_label_noise(labels, 0.2, 3, seed=4)[0], low)
    assert not np.array_equal(inject_label_noise(labels, 0.2, 3, seed=5)[0], low)


def test_rate_extremes():
    labels = np.arange(100) % 4
    noisy, changed = inject_label_noise(labels, 0.0, 4, seed=0)
    np.testing.assert_array_equal(noisy, labels)
    assert not changed.any()
    _, changed = inject_label_noise(labels, 1.0, 4, seed=0, mode="symmetric_exclusive")
    assert changed.all()


def test_multilabel_bits_flip_with_rate():
    labels = (np.random.default_rng(0).random((2000, 5)) < 0.3).astype(np.uint8)
    noisy, changed = inject_label_noise(labels, 0.1, 5, seed=0)
    assert noisy.shape == (2000, 5) and noisy.dtype == np.uint8 and changed.dtype == bool
    assert changed.mean() == pytest.approx(0.1, abs=0.02)
    np.testing.assert_array_equal(noisy, np.where(changed, 1 - labels, labels))


def test_accepts_lists_and_tensors_returns_numpy():
    noisy, changed = inject_label_noise([0, 1, 2, 1], 0.5, 3, seed=0)
    assert isinstance(noisy, np.ndarray) and isinstance(changed, np.ndarray)
    from_tensor, _ = inject_label_noise(torch.tensor([0, 1, 2, 1]), 0.5, 3, seed=0)
    np.testing.assert_array_equal(from_tensor, noisy)


def test_errors():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=3\), found values from 0 to 3"):
        inject_label_noise([0, 3], 0.1, 3)
    with pytest.raises(ValueError, match="rate must be a probability in"):
        inject_label_noise([0, 1], 1.2, 3)
    with pytest.raises(ValueError, match="mode must be one of"):
        inject_label_noise([0, 1], 0.1, 3, mode="asymmetric")
    with pytest.raises(ValueError, match="3 columns but num_classes=4"):
        inject_label_noise(np.zeros((2, 3), dtype=int), 0.1, 4)
    with pytest.raises(ValueError, match="multi-label labels must be 0/1"):
        inject_label_noise(np.full((2, 3), 2), 0.1, 3)
    with pytest.raises(ValueError, match="non-integer"):
        inject_label_noise([0.5, 1.0], 0.1, 3)


def test_apply_label_noise_to_items_copies():
    items = [{"image": f"{i}.png", "label": i % 3} for i in range(300)]
    noisy_items = apply_label_noise_to_items(items, 0.5, 3, seed=0)
    assert items[0] == {"image": "0.png", "label": 0}  # input not mutated
    assert [x["clean_label"] for x in noisy_items] == [x["label"] for x in items]
    assert [x["image"] for x in noisy_items] == [x["image"] for x in items]
    expected, _ = inject_label_noise([x["label"] for x in items], 0.5, 3, seed=0)
    assert [x["label"] for x in noisy_items] == expected.tolist()
    assert all(type(x["label"]) is int for x in noisy_items)


def test_apply_label_noise_to_items_multilabel_and_errors():
    items = [{"label": [1, 0, 1]}, {"label": [0, 0, 0]}]
    out = apply_label_noise_to_items(items, 1.0, 3, seed=0)
    assert [x["label"] for x in out] == [[0, 1, 0], [1, 1, 1]]
    assert out[0]["clean_label"] == [1, 0, 1]
    with pytest.raises(ValueError, match="mix class indices and multi-hot lists"):
        apply_label_noise_to_items([{"label": 1}, {"label": [0, 1]}], 0.1, 2)
    with pytest.raises(ValueError, match=r"items\[0\] has no 'label'"):
        apply_label_noise_to_items([{"image": "a"}], 0.1, 2)
