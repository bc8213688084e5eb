from __future__ import annotations

import json
from collections import Counter

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medkd_ext.data import load_datalist
from medkd_ext.data.demo.classification import (
    CLASSIFICATION_CLASS_NAMES,
    ensure_classification_demo,
    make_classification_demo,
)
from tests.data.demo._files import content_digest, files, mtimes

CLS_SMALL = {"size": 24, "n_cases": 24, "n_test": 8}


def test_classification_2d_multiclass(tmp_path):
    paths = make_classification_demo(tmp_path, seed=0, **CLS_SMALL)
    content = json.loads(paths["dataset_json"].read_text())
    assert content["labels"] == {str(i): n for i, n in enumerate(CLASSIFICATION_CLASS_NAMES[2][:4])}
    train, test = load_datalist(paths["dataset_json"]), load_datalist(paths["dataset_json"], key="test")
    assert (len(train), len(test)) == (24, 8)
    assert Counter(item["label"] for item in train) == {0: 6, 1: 6, 2: 6, 3: 6}
    image = Image.open(train[0]["image"])
    assert image.mode == "L" and image.size == (24, 24)
    # several images per patient, and no patient in both splits
    assert max(Counter(item["patient"] for item in train).values()) >= 2
    assert not {i["patient"] for i in train} & {i["patient"] for i in test}
    # labels.csv holds the same cases
    assert load_datalist(paths["labels_csv"]) == train
    assert load_datalist(paths["labels_csv"], key="test") == test


def test_classification_multilabel_csv_and_json_agree(tmp_path):
    paths = make_classification_demo(tmp_path, seed=2, multi_label=True, num_classes=3, **CLS_SMALL)
    names = list(CLASSIFICATION_CLASS_NAMES[2][:3])
    train = load_datalist(paths["dataset_json"])
    assert all(len(item["label"]) == 3 and set(item["label"]) <= {0, 1} for item in train)
    assert any(sum(item["label"]) == 0 for item in train) and any(sum(item["label"]) >= 2 for item in train)
    assert load_datalist(paths["labels_csv"], class_columns=names) == train


def test_classification_3d_nifti(tmp_path):
    paths = make_classification_demo(tmp_path, seed=0, spatial_dims=3, size=16, n_cases=4, n_test=2, num_classes=2)
    items = load_datalist(paths["dataset_json"])
    image = nib.load(items[0]["image"])
    assert image.shape == (16, 16, 16) and image.get_data_dtype() == np.uint8
    assert json.loads(paths["dataset_json"].read_text())["tensorImageSize"] == "3D"


def test_classification_deterministic_and_idempotent(tmp_path):
    make_classification_demo(tmp_path / "a", seed=5, **CLS_SMALL)
    make_classification_demo(tmp_path / "b", seed=5, **CLS_SMALL)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    before = mtimes(tmp_path / "a")
    make_classification_demo(tmp_path / "a", seed=5, **CLS_SMALL)
    assert mtimes(tmp_path / "a") == before


def test_classification_learnable(tmp_path):
    # nearest class centroid on translation-invariant features (log |FFT|) beats chance (0.25) clearly
    paths = make_classification_demo(tmp_path, seed=0, size=48, n_cases=120, n_test=40)

    def features(items):
        x = [np.log1p(np.abs(np.fft.fft2(np.asarray(Image.open(i["image"]), float)))).ravel() for i in items]
        return np.array(x), np.array([i["label"] for i in items])

    x_train, y_train = features(load_datalist(paths["dataset_json"]))
    x_test, y_test = features(load_datalist(paths["dataset_json"], key="test"))
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    centroids = np.stack([((x_train[y_train == c] - mean) / std).mean(0) for c in range(4)])
    distances = ((((x_test - mean) / std)[:, None] - centroids[None]) ** 2).sum(-1)
    assert (distances.argmin(1) == y_test).mean() > 0.45


def test_related_site_same_findings_other_patients_and_appearance(tmp_path):
    """The related site (the in-domain teacher's dataset, MIMIC-CXR's role): the same finding classes, other
    patients, another appearance; the target site's images do not depend on it existing."""
    target = make_classification_demo(tmp_path / "t", seed=0, **CLS_SMALL)
    related = make_classification_demo(tmp_path / "r", seed=0, site="related", **CLS_SMALL)
    content = {k: json.loads(v["dataset_json"].read_text()) for k, v in (("t", target), ("r", related))}
    assert content["t"]["site"] == "target" and content["r"]["site"] == "related"
    assert content["t"]["labels"] == content["r"]["labels"]
    train_t, train_r = load_datalist(target["dataset_json"]), load_datalist(related["dataset_json"])
    assert Counter(i["label"] for i in train_r) == {0: 6, 1: 6, 2: 6, 3: 6}
    assert all(i["patient"].startswith("R") for i in train_r) and all(i["patient"].startswith("P") for i in train_t)
    pixels = {k: np.stack([np.asarray(Image.open(i["image"]), dtype=float) for i in items])
              for k, items in (("t", train_t), ("r", train_r))}
    assert pixels["r"].mean() > pixels["t"].mean() + 10  # higher exposure
    # the target's images are the same whether the site is named or not
    again = make_classification_demo(tmp_path / "t2", seed=0, site="target", **CLS_SMALL)
    assert files(tmp_path / "t") == files(tmp_path / "t2")
    with pytest.raises(ValueError, match="site must be one of"):
        make_classification_demo(tmp_path / "x", site="other")
    assert again["dataset_json"].is_file()


def test_classification_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        make_classification_demo(tmp_path, spatial_dims=4)
    with pytest.raises(ValueError, match="num_classes must be from 2 to 6"):
        make_classification_demo(tmp_path, num_classes=7)
    with pytest.raises(ValueError, match="n_cases must be an integer >= 1"):
        make_classification_demo(tmp_path, n_cases=0)


def test_content_pinned_to_generator_version(tmp_path):
    # if this fails, the generated content changed: bump _GENERATOR_VERSION (medkd_ext/data/demo/cache.py) so that
    # existing demo folders are regenerated, and update the digests
    make_classification_demo(tmp_path / "a", seed=0, size=16, n_cases=8, n_test=4)
    make_classification_demo(tmp_path / "b", seed=1, size=16, n_cases=8, n_test=4, multi_label=True, num_classes=6)
    make_classification_demo(tmp_path / "c", seed=0, spatial_dims=3, size=16, n_cases=3, n_test=1, num_classes=6)
    assert content_digest(tmp_path / "a") == "8a0cfed0d369ecfc62a1e21e8ee4744568ec120ffa016c8bd9920fe34393b40c"
    assert content_digest(tmp_path / "b") == "114c3fc3176f2cc66d1b161eaf4ab675ca4a50d36eb60e1da9b53b273d2d4f4e"
    assert content_digest(tmp_path / "c") == "3b84ed5faf94899c0bf77eed85a22d7a9ddd92051866f377cff9b5ebae30096a"


def test_ensure_folder_per_variant(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDKD_DEMO_DIR", str(tmp_path / "cache"))
    cls = ensure_classification_demo(root=tmp_path / "x", spatial_dims=2, multi_label=True, **CLS_SMALL)
    assert cls["dataset_json"] == tmp_path / "x" / "classification_2d_multilabel" / "dataset.json"
    assert cls["dataset_json"].is_file() and cls["labels_csv"].is_file()
    related = ensure_classification_demo(root=tmp_path / "x", site="related", size=16, n_cases=4)
    assert related["dataset_json"] == tmp_path / "x" / "classification_2d_related" / "dataset.json"
    assert json.loads(related["dataset_json"].read_text())["numTest"] == 0  # no test list by default
    cls = ensure_classification_demo(None, 0, 3, False, size=16, n_cases=2, n_test=1)
    assert cls["dataset_json"] == tmp_path / "cache" / "classification_3d" / "dataset.json"
    assert json.loads(cls["dataset_json"].read_text())["task"] == "multi-class"
