from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medkd_ext.data import check_files_exist, load_datalist
from medkd_ext.data.demo import DEMO_MANIFEST_NAME
from medkd_ext.data.demo.segmentation import ensure_segmentation_demo, make_segmentation_demo, segmentation_demo_dir
from tests.data.demo._files import content_digest, files, mtimes

SEG_SMALL = {"size": 16, "n_target_train": 2, "n_target_test": 2, "n_source": 3}


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
    assert contrast["target"] > 0 and contrast["source_1"] > 0  # bright on FLAIR and T2
    assert contrast["source_2"] < 0  # dark on T1


def test_segmentation_domains_differ_in_lesion_type(tmp_path):
    """As the paper's datasets (metastases, glioma, stroke): the target's lesions are several and small, source_1's
    one large lesion, source_2's on the organ's rim."""
    from scipy import ndimage

    paths = make_segmentation_demo(tmp_path, seed=0, size=48, n_target_train=6, n_target_test=0, n_source=6,
                                   multiclass=True)
    volume, count, rim = {}, {}, {}
    for domain, path in paths.items():
        content = json.loads(path.read_text())
        assert content["lesion_type"] == {"target": "metastases", "source_1": "glioma", "source_2": "stroke"}[domain]
        voxel_mm3 = float(np.prod(content["spacing"]))
        sizes, counts, rims = [], [], []
        for item in load_datalist(path):
            label = np.asarray(nib.load(item["label"]).dataobj)
            lesion, inside = label == 2, label >= 1
            sizes.append(lesion.sum() * voxel_mm3)
            counts.append(ndimage.label(lesion)[1])
            # the share of lesion voxels on the organ's boundary (a background voxel within 2 voxels)
            boundary = lesion & ~ndimage.binary_erosion(inside, iterations=2)
            rims.append(boundary.sum() / lesion.sum())
        volume[domain], count[domain], rim[domain] = np.mean(sizes), np.mean(counts), np.mean(rims)
    assert volume["source_1"] > 3 * volume["target"] and volume["source_1"] > 2 * volume["source_2"]
    assert count["target"] > count["source_2"]
    assert rim["source_2"] > 5 * rim["target"] and rim["source_2"] > 1.5 * rim["source_1"]


def test_segmentation_same_seed_same_bytes_other_seed_differs(seg_demo, tmp_path):
    root, _ = seg_demo
    make_segmentation_demo(tmp_path / "again", seed=0, **SEG_SMALL)
    assert files(tmp_path / "again") == files(root)
    make_segmentation_demo(tmp_path / "other", seed=1, **SEG_SMALL)
    other = files(tmp_path / "other")
    assert other["target/imagesTr/target_000.nii.gz"] != files(root)["target/imagesTr/target_000.nii.gz"]


def test_segmentation_idempotent_and_repairs(tmp_path):
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    before, content = mtimes(tmp_path), files(tmp_path)
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    assert mtimes(tmp_path) == before  # complete dataset reused, nothing rewritten

    victim = tmp_path / "source_1/labelsTr/source_1_001.nii.gz"
    victim.unlink()
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    assert files(tmp_path) == content

    (tmp_path / "target/imagesTr/target_000.nii.gz").write_bytes(b"corrupt")
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    assert files(tmp_path) == content

    (tmp_path / DEMO_MANIFEST_NAME).unlink()
    make_segmentation_demo(tmp_path, seed=0, **SEG_SMALL)
    assert files(tmp_path) == content

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


def test_content_pinned_to_generator_version(tmp_path):
    # if this fails, the generated content changed: bump _GENERATOR_VERSION (medkd_ext/data/demo/cache.py) so that
    # existing demo folders are regenerated, and update the digests
    make_segmentation_demo(
        tmp_path / "a",
        seed=0,
        size=(12, 12, 10),
        n_target_train=1,
        n_target_test=1,
        n_source=1,
        domains=("target", "source_1", "source_2", "other"),
    )
    make_segmentation_demo(
        tmp_path / "b", seed=1, size=12, n_target_train=1, n_target_test=0, n_source=1, multiclass=True
    )
    assert content_digest(tmp_path / "a") == "566fdd15a26bc7e4a69f83dcce9f4cfe12f1d23d28fd1f5e1945866ca1a60670"
    assert content_digest(tmp_path / "b") == "a14d06f655ec76b6ad678ae5537d9cee80cb9ae9b40ae84bc2f932c6df127e88"


def test_ensure_under_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDKD_DEMO_DIR", str(tmp_path / "cache"))
    seg = ensure_segmentation_demo(seed=0, **SEG_SMALL)
    assert seg["target"] == tmp_path / "cache" / "segmentation" / "target" / "dataset.json"
    assert seg["target"].is_file()
    paths = ensure_segmentation_demo(root=tmp_path / "x", seed=0, **SEG_SMALL)
    assert paths["source_2"] == tmp_path / "x" / "segmentation" / "source_2" / "dataset.json"


def test_segmentation_demo_dir_is_the_parent_of_the_domains(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "medkd_ext.data.demo.segmentation.make_segmentation_demo",
        lambda out, seed: make_segmentation_demo(out, seed=seed, **SEG_SMALL),
    )
    folder = segmentation_demo_dir(tmp_path, seed=0)
    assert folder == str(tmp_path / "segmentation")
    assert sorted(p.name for p in Path(folder).iterdir() if p.is_dir()) == ["source_1", "source_2", "target"]


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
