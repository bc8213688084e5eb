from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from medkd_ext.data import segmentation_datalists


def _dataset(folder, n_train, n_test=0, missing=False):
    folder.mkdir(parents=True)
    cases = []
    for i in range(n_train + n_test):
        for kind in ("img", "lab"):
            if not (missing and i == 0 and kind == "lab"):
                nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(folder / f"{kind}{i}.nii.gz"))
        cases.append({"image": f"img{i}.nii.gz", "label": f"lab{i}.nii.gz"})
    content = {"training": cases[:n_train], "test": cases[n_train:]}
    (folder / "dataset.json").write_text(json.dumps(content))
    return folder / "dataset.json"


def test_target_split_and_sources(tmp_path):
    target = _dataset(tmp_path / "t", 6, 3)
    s1, s2 = _dataset(tmp_path / "s1", 4), _dataset(tmp_path / "s2", 5)
    lists = segmentation_datalists(target, [s1, s2], val_fraction=0.2, seed=1)
    assert len(lists["target_train"]) == 5 and len(lists["target_val"]) == 1 and len(lists["target_test"]) == 3
    assert not {c["image"] for c in lists["target_train"]} & {c["image"] for c in lists["target_val"]}
    assert [len(s) for s in lists["sources"]] == [4, 5]
    only_second = segmentation_datalists(target, [s1, s2], sources=[1])
    assert [len(s) for s in only_second["sources"]] == [5]
    assert segmentation_datalists(target, [s1], val_fraction=0.2, seed=1) == {**lists, "sources": lists["sources"][:1]}


def test_bad_datalists_are_named(tmp_path):
    target = _dataset(tmp_path / "t", 3)
    empty = _dataset(tmp_path / "empty", 0)
    with pytest.raises(ValueError, match=r"source dataset 0 .*empty.*no cases"):
        segmentation_datalists(target, [empty])
    with pytest.raises(ValueError, match="out of range"):
        segmentation_datalists(target, [], sources=[0])
    broken = _dataset(tmp_path / "broken", 2, missing=True)
    with pytest.raises(FileNotFoundError, match="lab0"):
        segmentation_datalists(broken)
    with pytest.raises(ValueError, match="no cases"):
        segmentation_datalists(empty)
    # a path that does not exist names the id that gave it
    with pytest.raises(FileNotFoundError, match=r"nowhere.json does not exist; check the `target_datalist` path"):
        segmentation_datalists(tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match=r"nowhere.json does not exist; check the `source_datalists\[1\]` path"):
        segmentation_datalists(target, [target, tmp_path / "nowhere.json"])


def test_broken_images_are_named_before_training(tmp_path):
    target = _dataset(tmp_path / "t", 3, 1)
    label = tmp_path / "t" / "lab3.nii.gz"  # the label of the test case
    label.write_bytes(label.read_bytes()[:30])
    with pytest.raises(ValueError, match=r"lab3.nii.gz is (truncated|not a readable NIfTI file)"):
        segmentation_datalists(target)
    source = _dataset(tmp_path / "s", 2)
    (tmp_path / "s" / "img1.nii.gz").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"source dataset 0 \(.*\): image file .*img1.nii.gz is not a readable NIfTI"):
        segmentation_datalists(_dataset(tmp_path / "t2", 2), [source])
