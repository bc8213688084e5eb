from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from medkd_ext.data import overlapping_subsets, patient_split, power_law_counts, power_law_imbalance


@pytest.mark.parametrize("n,k,overlap", [(10, 3, 0.0), (23, 5, 0.4), (7, 7, 0.5), (12, 1, 0.3), (9, 4, 1.0)])
def test_overlapping_subsets_structure(n, k, overlap):
    items = [f"case{i}" for i in range(n)]
    subsets = overlapping_subsets(items, k, overlap, seed=3)
    assert len(subsets) == k
    # the union covers every item, each subset keeps the original order and has no duplicates
    assert set().union(*map(set, subsets)) == set(items)
    for subset in subsets:
        assert subset == sorted(subset, key=items.index)
        assert len(set(subset)) == len(subset)
    # an item belongs to its own chunk plus round(overlap * |outside|) others, so each subset has the expected size
    chunk_sizes = sorted(len(c) for c in np.array_split(np.arange(n), k))
    expected = sorted(int(np.floor(c + overlap * (n - c) + 0.5)) for c in chunk_sizes)
    assert sorted(len(s) for s in subsets) == expected


def test_overlapping_subsets_disjoint_chunks_and_extremes():
    items = list(range(20))
    disjoint = overlapping_subsets(items, 4, 0.0, seed=0)
    assert sorted(x for s in disjoint for x in s) == items
    assert {len(s) for s in disjoint} == {5}
    assert all(s == items for s in overlapping_subsets(items, 3, 1.0, seed=0))
    # overlap 0.4: each subset is its chunk of 5 plus round(0.4 * 15) = 6 outside items, and the subsets
    # overlap: the memberships add up to 20 own places + 4 * 6 shared ones
    subsets = overlapping_subsets(items, 4, 0.4, seed=1)
    assert [len(s) for s in subsets] == [11] * 4
    assert sum(len(s) for s in subsets) == 20 + 4 * 6
    # the chunks depend on the seed only, so with one seed each subset contains its disjoint chunk (overlap=0)
    chunks = overlapping_subsets(items, 4, 0.0, seed=1)
    assert all(set(c) <= set(s) for c, s in zip(chunks, subsets))


def test_overlapping_subsets_deterministic_and_seed_dependent():
    items = list(range(30))
    assert overlapping_subsets(items, 3, 0.3, seed=5) == overlapping_subsets(items, 3, 0.3, seed=5)
    assert overlapping_subsets(items, 3, 0.3, seed=5) != overlapping_subsets(items, 3, 0.3, seed=6)


def test_overlapping_subsets_errors():
    with pytest.raises(ValueError, match=r"k=6 is larger than the number of training items \(5\)"):
        overlapping_subsets(list(range(5)), 6, 0.2, seed=0)
    with pytest.raises(ValueError, match="k must be >= 1"):
        overlapping_subsets(list(range(5)), 0, 0.2, seed=0)
    with pytest.raises(ValueError, match="overlap must be a ratio in"):
        overlapping_subsets(list(range(5)), 2, 1.5, seed=0)
    with pytest.raises(ValueError, match="items is empty"):
        overlapping_subsets([], 1, 0.0, seed=0)


def test_power_law_counts_values():
    # C=3, gamma=1, max 100, min 10: b = 10*2/90 = 2/9, a = 200/9; n_2 = a/(b+1) = 200/11 = 18.18 -> 18
    assert power_law_counts(3, 1.0, 100, 10) == [100, 18, 10]
    for gamma in (0.2, 0.6, 1.0, 2.0):
        counts = power_law_counts(10, gamma, 5000, 250)
        assert counts[0] == 5000 and counts[-1] == 250
        assert all(a >= b for a, b in zip(counts, counts[1:]))
    # smaller gamma -> steeper power law: the middle classes are smaller
    assert power_law_counts(10, 0.2, 5000, 250)[4] < power_law_counts(10, 2.0, 5000, 250)[4]
    assert power_law_counts(4, 1.0, 7, 7) == [7, 7, 7, 7]


def test_power_law_counts_errors():
    with pytest.raises(ValueError, match=r"max_count \(5\) must be >= min_count \(10\)"):
        power_law_counts(3, 1.0, 5, 10)
    with pytest.raises(ValueError, match="gamma must be a positive number"):
        power_law_counts(3, 0.0, 10, 5)
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        power_law_counts(1, 1.0, 10, 5)


def test_power_law_imbalance_subsamples_each_class():
    items = [{"id": i, "label": i % 3} for i in range(60)]
    kept = power_law_imbalance(items, 1.0, 20, 4, seed=0)
    counts = Counter(item["label"] for item in kept)
    assert [counts[c] for c in range(3)] == power_law_counts(3, 1.0, 20, 4)
    ids = [item["id"] for item in kept]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert power_law_imbalance(items, 1.0, 20, 4, seed=0) == kept
    assert power_law_imbalance(items, 1.0, 20, 4, seed=1) != kept


def test_power_law_imbalance_errors():
    items = [{"label": i % 3} for i in range(30)]
    with pytest.raises(ValueError, match="class 0 has 10 items but the power law .* asks for 20"):
        power_law_imbalance(items, 1.0, 20, 4, seed=0)
    with pytest.raises(ValueError, match="multi-class labels only"):
        power_law_imbalance([{"label": [0, 1]}], 1.0, 2, 1, seed=0)
    with pytest.raises(ValueError, match="class 3 has 0 items"):
        power_law_imbalance(items, 1.0, 5, 1, seed=0, num_classes=4)


def test_patient_split_no_leak_and_sizes():
    rng = np.random.default_rng(0)
    items = [{"patient": f"P{p}", "i": i} for i, p in enumerate(rng.integers(0, 40, size=200))]
    splits = patient_split(items, (0.7, 0.15, 0.15), seed=0)
    assert sum(len(s) for s in splits) == len(items)
    patients = [{item["patient"] for item in s} for s in splits]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])
    largest_patient = max(Counter(item["patient"] for item in items).values())
    for split, fraction in zip(splits, (0.7, 0.15, 0.15)):
        assert abs(len(split) - fraction * len(items)) <= largest_patient
        assert [item["i"] for item in split] == sorted(item["i"] for item in split)
    assert patient_split(items, (0.7, 0.15, 0.15), seed=0) == splits
    assert patient_split(items, (0.7, 0.15, 0.15), seed=1) != splits


def test_patient_split_one_item_per_patient_is_exact():
    items = [{"patient": i} for i in range(20)]
    assert [len(s) for s in patient_split(items, (0.5, 0.25, 0.25), seed=2)] == [10, 5, 5]
    assert [len(s) for s in patient_split(items, (0.8, 0.0, 0.2), seed=2)] == [16, 0, 4]


def test_patient_split_every_positive_split_gets_a_patient():
    items = [{"patient": "big"}] * 10 + [{"patient": "a"}, {"patient": "b"}]
    splits = patient_split(items, (0.9, 0.05, 0.05), seed=0)
    assert all(splits)


def test_patient_split_errors():
    with pytest.raises(ValueError, match="items\\[1\\] has no 'patient' entry"):
        patient_split([{"patient": 1}, {"id": 2}], (0.5, 0.5))
    with pytest.raises(ValueError, match="2 patients cannot fill 3 splits"):
        patient_split([{"patient": 1}, {"patient": 2}], (0.4, 0.3, 0.3))
    with pytest.raises(ValueError, match="sum to 1"):
        patient_split([{"patient": 1}, {"patient": 2}], (0.4, 0.3))
