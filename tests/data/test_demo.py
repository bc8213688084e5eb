from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medkd_ext.data import (
    CLASSIFICATION_CLASS_NAMES,
    DEMO_MANIFEST_NAME,
    check_files_exist,
    default_demo_root,
    ensure_classification_demo,
    ensure_segmentation_demo,
    load_datalist,
    make_classification_demo,
    make_segmentation_demo,
)
from medkd_ext.data.demo import main

SEG_SMALL = {"size": 16, "n_target_train": 2, "n_target_test": 2, "n_source": 3}
CLS_SMALL = {"size": 24, "n_cases": 24, "n_test": 8}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _mtimes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def seg_demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    return root, make_segmentation_demo(root, seed=0, **SEG_SMALL)


def test_segmentation_layout_and_datalists(seg_demo):
    root, paths = seg_demo
    assert list(paths) == ["target", "source_1", "source_2"]
    spacings = set()
    for domain, path in paths.items():
        assert path == root / domain / "dataset.json"
        content = json.loads(path.read_text())
        assert content["labels"] == {"0": "background", "1": "lesion"}
        assert content["tensorImageSize"] == "3D"
        n_train, n_test = (2, 2) if domain == "target" else (3, 0)
        assert (content["numTraining"], content["numTest"]) == (n_train, n_test)
        assert not Path(content["training"][0]["image"]).is_absolute()
        items = load_datalist(path) + (load_datalist(path, key="test") if n_test else [])
        assert len(items) == n_train + n_test
        check_files_exist(items, keys=("image", "label"), allow_missing_keys=False)
        for item in items:
            image, label = nib.load(item["image"]), nib.load(item["label"])
            assert image.shape == label.shape == (16, 16, 16)
            np.testing.assert_allclose(image.affine, label.affine)
            lab = np.asarray(label.dataobj)
            assert set(np.unique(lab).tolist()) == {0, 1}  # every labelled case has a lesion
            assert np.isfinite(image.get_fdata()).all()
        zooms = tuple(float(z) for z in image.header.get_zooms())
        assert zooms == pytest.approx(tuple(content["spacing"]))
        spacings.add(zooms)
    assert len(spacings) == 3  # every domain has its own voxel spacing


def test_segmentation_every_case_has_a_lesion_default_size(tmp_path):
    paths = make_segmentation_demo(tmp_path, seed=3, size=(24, 24, 20), n_target_train=4, n_target_test=4, n_source=6)
    for domain, path in paths.items():
        for key in ("training", "test") if domain == "target" else ("training",):
            for item in load_datalist(path, key=key):
                assert np.asarray(nib.load(item["label"]).dataobj).sum() >= 1, item["label"]


def test_segmentation_domains_differ_in_lesion_contrast(tmp_path):
    paths = make_segmentation_demo(
        tmp_path, seed=1, size=24, n_target_train=3, n_target_test=0, n_source=3, multiclass=True
    )
    contrast = {}
    for domain, path in paths.items():
        content = json.loads(path.read_text())
        assert content["labels"] == {"0": "background", "1": "organ", "2": "lesion"}
        differences = []
        for item in load_datalist(path):
            image, label = nib.load(item["image"]).get_fdata(), np.asarray(nib.load(item["label"]).dataobj)
            assert set(np.unique(label).tolist()) == {0, 1, 2}
            differences.append(image[label == 2].mean() - image[label == 1].mean())
        contrast[domain] = np.mean(differences)
    assert contrast["target"] < 0 < contrast["source_1"]  # hypo-dense on CT, bright on T2
    assert contrast["source_2"] < 0


def test_segmentation_same_seed_same_bytes_other_seed_differs(seg_demo, tmp_path):
    root, _ = seg_demo
    make_segmentation_demo(tmp_path / "again", seed=0, **SEG_SMALL)
    assert _files(tmp_path / "again") == _files(root)
    make_segmentation_demo(tmp_path / "other", seed=1, **SEG_SMALL)
    other = _files(tmp_path / "other")
    assert other["target/imagesTr/target_000.nii.gz"] != _files(root)["target/imagesTr/target_000.nii.gz"]


def test_segmentation_idempotent_and_repairs(tmp_path):
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    before, content = _mtimes(tmp_path), _files(tmp_path)
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    assert _mtimes(tmp_path) == before  # complete dataset reused, nothing rewritten

    victim = tmp_path / "source_1/labelsTr/source_1_001.nii.gz"
    victim.unlink()
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    assert _files(tmp_path) == content

    (tmp_path / "target/imagesTr/target_000.nii.gz").write_bytes(b"corrupt")
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    assert _files(tmp_path) == content

    (tmp_path / DEMO_MANIFEST_NAME).unlink()
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    assert _files(tmp_path) == content

    # other parameters: regenerated, and files of the old dataset that are no longer listed are removed
    make_segmentation_demo(tmp_path, seed=0, **{**SEG_SMALL, "n_source": 2})
    assert not (tmp_path / "source_1/imagesTr/source_1_002.nii.gz").exists()
    assert json.loads((tmp_path / "source_1/dataset.json").read_text())["numTraining"] == 2


def test_segmentation_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="size must hold integers >= 8"):
        make_segmentation_demo(tmp_path, size=(4, 16, 16))
    with pytest.raises(ValueError, match="domains must be distinct"):
        make_segmentation_demo(tmp_path, domains=("a", "a"))
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        make_segmentation_demo(tmp_path, seed=-1)
    with pytest.raises(ValueError, match="n_target_train must be an integer >= 1"):
        make_segmentation_demo(tmp_path, n_target_train=0)


def test_segmentation_custom_domain_names(tmp_path):
    paths = make_segmentation_demo(tmp_path, size=12, n_target_train=1, n_target_test=1, n_source=1, domains=("a", "b"))
    assert json.loads(paths["a"].read_text())["role"] == "target"
    assert json.loads(paths["b"].read_text())["numTest"] == 0


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
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    before = _mtimes(tmp_path / "a")
    make_classification_demo(tmp_path / "a", seed=5, **CLS_SMALL)
    assert _mtimes(tmp_path / "a") == before


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


def test_classification_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3"):
        make_classification_demo(tmp_path, spatial_dims=4)
    with pytest.raises(ValueError, match="num_classes must be from 2 to 6"):
        make_classification_demo(tmp_path, num_classes=7)
    with pytest.raises(ValueError, match="n_cases must be an integer >= 1"):
        make_classification_demo(tmp_path, n_cases=0)


def test_ensure_uses_env_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDKD_DEMO_DIR", str(tmp_path / "cache"))
    assert default_demo_root() == tmp_path / "cache"
    seg = ensure_segmentation_demo(seed=0, **SEG_SMALL)
    assert seg["target"] == tmp_path / "cache" / "segmentation" / "target" / "dataset.json"
    cls = ensure_classification_demo(root=tmp_path / "x", spatial_dims=2, multi_label=True, **CLS_SMALL)
    assert cls["dataset_json"] == tmp_path / "x" / "classification_2d_multilabel" / "dataset.json"
    assert cls["dataset_json"].is_file()
    monkeypatch.delenv("MEDKD_DEMO_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_demo_root() == tmp_path / "xdg" / "medkd" / "demo"


def test_cli(tmp_path, capsys):
    assert main(["--task", "classification", "--out", str(tmp_path), "--seed", "1", "--spatial-dims", "2"]) == 0
    out = capsys.readouterr().out
    assert "written" in out and str(tmp_path / "dataset.json") in out
    main(["--task", "classification", "--out", str(tmp_path), "--seed", "1"])
    assert "reused" in capsys.readouterr().out


@pytest.mark.slow
def test_segmentation_defaults_lesions_everywhere_and_monai_reads_it(tmp_path):
    from monai.data import load_decathlon_datalist

    paths = make_segmentation_demo(tmp_path)
    counts = {}
    for domain, path in paths.items():
        keys = ("training", "test") if domain == "target" else ("training",)
        items = [item for key in keys for item in load_decathlon_datalist(path, data_list_key=key)]
        counts[domain] = len(items)
        for item in items:
            label = np.asarray(nib.load(item["label"]).dataobj)
            assert label.shape == (48, 48, 48)
            assert 0 < label.sum() < 0.05 * label.size, item["label"]
    assert counts == {"target": 12, "source_1": 16, "source_2": 16}
