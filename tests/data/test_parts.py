from __future__ import annotations

import pytest

from medkd_ext.data import datalist_part, make_classification_demo

FRACTIONS = {"source": 0.6, "train": 0.15, "validation": 0.25}


@pytest.fixture(scope="module")
def datalist(tmp_path_factory):
    return make_classification_demo(tmp_path_factory.mktemp("parts"), n_cases=60, n_test=8, size=16)["dataset_json"]


def test_parts_are_disjoint_by_patient_and_cover_the_list(datalist):
    parts = {name: datalist_part(datalist, name, FRACTIONS, seed=3) for name in FRACTIONS}
    images = [c["image"] for p in parts.values() for c in p]
    assert len(images) == len(set(images)) == 60
    patients = [{c["patient"] for c in p} for p in parts.values()]
    assert not (patients[0] & patients[1]) and not (patients[0] & patients[2]) and not (patients[1] & patients[2])
    assert 30 <= len(parts["source"]) <= 42 and len(parts["train"]) >= 5
    assert datalist_part(datalist, "train", FRACTIONS, seed=3) == parts["train"]  # same split in every config
    assert len(datalist_part(datalist, "all", FRACTIONS, key="test")) == 8


def test_bad_arguments(datalist, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no.csv does not exist; check the `teacher_datalist` path"):
        datalist_part(tmp_path / "no.csv", "train", FRACTIONS, name="teacher_datalist")
    with pytest.raises(ValueError, match=r"part 'val' is not one of \['source', 'train', 'validation'\]"):
        datalist_part(datalist, "val", FRACTIONS)
    with pytest.raises(ValueError, match="sum to 1"):
        datalist_part(datalist, "train", {"train": 0.5, "validation": 0.2})
    with pytest.raises(ValueError, match="fraction 0"):
        datalist_part(datalist, "source", {"source": 0.0, "train": 1.0})
    with pytest.raises(FileNotFoundError, match="datalist file"):
        datalist_part(str(datalist) + ".missing.json", "train", FRACTIONS)
