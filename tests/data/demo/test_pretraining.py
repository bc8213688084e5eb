"""The generic pre-training demo (the ImageNet role of the attention-transfer bundle): 8 balanced pattern classes,
RGB PNG in 2D and grayscale NIfTI in 3D, deterministic and reused, unrelated to the radiograph-like demo."""

from __future__ import annotations

import json
from collections import Counter

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medkd_ext.data import PRETRAINING_CLASS_NAMES, ensure_pretraining_demo, load_datalist, make_pretraining_demo
from medkd_ext.data.demo import main
from tests.data.demo._files import content_digest, files, mtimes


def test_pretraining_2d_rgb_balanced(tmp_path):
    paths = make_pretraining_demo(tmp_path, seed=0, n_cases=32, n_test=8, size=32)
    content = json.loads(paths["dataset_json"].read_text())
    assert content["labels"] == {str(i): n for i, n in enumerate(PRETRAINING_CLASS_NAMES)}
    assert content["num_classes"] == 8 and content["task"] == "multi-class"
    train, test = load_datalist(paths["dataset_json"]), load_datalist(paths["dataset_json"], key="test")
    assert Counter(i["label"] for i in train) == {c: 4 for c in range(8)} and len(test) == 8
    assert load_datalist(paths["labels_csv"]) == train
    image = Image.open(train[0]["image"])
    assert image.mode == "RGB" and image.size == (32, 32)
    pixels = np.stack([np.asarray(Image.open(i["image"])) for i in train])
    assert pixels.std(axis=(0, 1, 2)).min() > 30  # colour in every channel


def test_pretraining_classes_are_learnable_patterns(tmp_path):
    """Textures alternate along a line across the image far more often than objects do (a sanity check that the
    class is in the pixels)."""
    paths = make_pretraining_demo(tmp_path, seed=1, n_cases=80, n_test=0, size=48)
    changes: dict[int, list[float]] = {}
    for item in load_datalist(paths["dataset_json"]):
        gray = np.asarray(Image.open(item["image"]), dtype=float).mean(axis=-1)
        edges = np.abs(np.diff(gray, axis=1)) > 40
        changes.setdefault(item["label"], []).append(edges.mean())
    mean = {c: float(np.mean(v)) for c, v in changes.items()}
    textures = [mean[PRETRAINING_CLASS_NAMES.index(n)] for n in ("stripes", "checkerboard", "grid")]
    objects = [mean[PRETRAINING_CLASS_NAMES.index(n)] for n in ("star", "crescent")]
    assert min(textures) > 2 * max(objects)


def test_pretraining_3d_and_reuse(tmp_path):
    paths = make_pretraining_demo(tmp_path, seed=0, spatial_dims=3, n_cases=8, n_test=0, size=16)
    item = load_datalist(paths["dataset_json"])[0]
    volume = nib.load(item["image"])
    assert volume.shape == (16, 16, 16) and volume.get_data_dtype() == np.uint8
    before = mtimes(tmp_path)
    make_pretraining_demo(tmp_path, seed=0, spatial_dims=3, n_cases=8, n_test=0, size=16)
    assert mtimes(tmp_path) == before


def test_pretraining_same_seed_same_bytes(tmp_path):
    make_pretraining_demo(tmp_path / "a", seed=3, n_cases=8, n_test=2, size=16)
    make_pretraining_demo(tmp_path / "b", seed=3, n_cases=8, n_test=2, size=16)
    make_pretraining_demo(tmp_path / "c", seed=4, n_cases=8, n_test=2, size=16)
    assert files(tmp_path / "a") == files(tmp_path / "b") != files(tmp_path / "c")


def test_content_pinned_to_generator_version(tmp_path):
    # if this fails, the generated content changed: bump _GENERATOR_VERSION (medkd_ext/data/demo/cache.py) so that
    # existing demo folders are regenerated, and update the digests
    make_pretraining_demo(tmp_path / "a", seed=0, n_cases=8, n_test=2, size=16)
    make_pretraining_demo(tmp_path / "b", seed=0, spatial_dims=3, n_cases=3, n_test=1, size=16)
    assert content_digest(tmp_path / "a") == "d2780331eda45e5e8861cd3aac42f8e69dd74ca5094771c997f5cc83ad06676b"
    assert content_digest(tmp_path / "b") == "0d2c86e65c1cc4f085dcb736231c9d1b082d16a3e6530b7099c7ee4ac01b4b2a"


def test_ensure_and_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDKD_DEMO_DIR", str(tmp_path / "cache"))
    paths = ensure_pretraining_demo(n_cases=8, n_test=0, size=16)
    assert paths["dataset_json"] == tmp_path / "cache" / "pretraining_2d" / "dataset.json"
    assert main(["--task", "pretraining", "--out", str(tmp_path / "cli"), "--spatial-dims", "3"]) == 0
    assert "pretraining demo (written)" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / "dataset.json").read_text())["tensorImageSize"] == "3D"
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        make_pretraining_demo(tmp_path / "x", spatial_dims=1)
