"""medkd_ext.runtime: what an exported bundle runs with, without the rest of medkd_ext."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medkd_ext import errors, runtime
from tests.bundles.bundle_checks import write_dicom_series

CT_SMALL = Path(__import__("pydicom.data", fromlist=["get_testdata_file"]).get_testdata_file("CT_small.dcm"))


@pytest.mark.parametrize("module", [runtime, errors])
def test_the_exported_modules_import_nothing_from_medkd_ext(module):
    tree = ast.parse(Path(module.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert imported and not [m for m in imported if m.split(".")[0] == "medkd_ext"]


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


def test_2d_every_dicom_file_is_one_image_with_or_without_suffix(tmp_path):
    _copy(CT_SMALL, tmp_path / "IM0001")
    _copy(CT_SMALL, tmp_path / "series" / "IM0002")
    (tmp_path / "a.png").write_bytes(b"png")
    (tmp_path / "notes.txt").write_text("not an image")
    found = runtime.find_images(tmp_path, spatial_dims=2)
    assert found == sorted(str(tmp_path / n) for n in ("IM0001", "series/IM0002", "a.png"))
    # 3D: a folder of DICOM files is one series
    assert runtime.find_images(tmp_path / "series", spatial_dims=3) == [str(tmp_path / "series")]


def test_2d_refuses_a_multi_slice_series_naming_its_folder(tmp_path):
    write_dicom_series(tmp_path / "ct", suffix="", slices=4)
    with pytest.raises(ValueError, match=r"ct holds a DICOM series of 4 slices .* 3D volume"):
        runtime.find_images(tmp_path, spatial_dims=2)
    assert runtime.find_images(tmp_path, spatial_dims=3) == [str(tmp_path / "ct")]


def test_3d_a_folder_of_several_series_is_one_image_per_series(tmp_path, monkeypatch):
    """A PACS export of a study: two series in one folder, files without extension, interleaved names; each series
    is one image (its own files only), in the folder itself and one folder down; a DICOMDIR is no series."""
    from monai.transforms import LoadImage

    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", None)
    study = tmp_path / "study"
    ct = write_dicom_series(study, suffix="", slices=6, series="1.2.3.4.100", prefix="IM")
    mr = write_dicom_series(study, suffix="", slices=4, series="1.2.3.4.200", prefix="IN")
    found = runtime.find_images(study, spatial_dims=3)
    assert [Path(f).name for f in found] == ["study_1-2-3-4-100", "study_1-2-3-4-200"]
    assert all(Path(f).is_relative_to(tmp_path / "tmp") for f in found)
    for folder, files in zip(found, (ct, mr)):
        assert sorted(p.name for p in Path(folder).iterdir()) == [f.name for f in files]
        assert LoadImage(image_only=True)(folder).shape[-1] == len(files)
    assert runtime.find_images(tmp_path, spatial_dims=3) == found  # one folder down; the views are reused
    # a series whose files change gets a new view
    ct[-1].unlink()
    again = runtime.find_images(study, spatial_dims=3)
    assert len(list(Path(again[0]).iterdir())) == 5
    # one series stays the folder itself
    write_dicom_series(tmp_path / "study2", slices=3)
    assert runtime.find_images(tmp_path / "study2", spatial_dims=3) == [str(tmp_path / "study2")]


def test_find_images_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        runtime.find_images(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"no image found in .*notes.txt"):
        runtime.find_images(tmp_path, spatial_dims=2)


def test_a_single_frame_is_a_2d_image_and_a_volume_is_refused():
    frame = MetaTensor(torch.arange(12.0).reshape(1, 3, 4, 1), meta={"filename_or_obj": "IM0001"})
    out = runtime.EnsureImageChannelsd("image", channels=3, spatial_dims=2)({"image": frame})["image"]
    assert out.shape == (3, 3, 4) and torch.equal(out[2], frame[0, ..., 0])
    assert out.meta["filename_or_obj"] == "IM0001"
    with pytest.raises(ValueError, match=r"file 'IM0001' \(key 'image'\) is 3D"):
        runtime.EnsureImageChannelsd("image", channels=1, spatial_dims=2)({"image": frame.repeat(1, 1, 1, 2)})


def test_manifest_refuses_changed_missing_and_added_files(tmp_path):
    for name in ("configs/inference.json", "models/model.ts", "docs/README.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(name)
    runtime.write_manifest(tmp_path)
    assert set(json.loads((tmp_path / "manifest.json").read_text())["files"]) == {
        "configs/inference.json", "models/model.ts", "docs/README.md"
    }
    assert runtime.verify_manifest(tmp_path) == 3
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "out.json").write_text("{}")  # outputs may appear
    assert runtime.verify_manifest(tmp_path) == 3
    (tmp_path / "models" / "extra.pt").write_text("x")
    with pytest.raises(ValueError, match=r"models/extra.pt was added after this bundle was exported"):
        runtime.verify_manifest(tmp_path)
    (tmp_path / "models" / "extra.pt").unlink()
    (tmp_path / "models" / "model.ts").write_text("changed")
    with pytest.raises(ValueError, match=r"models/model.ts changed after this bundle was exported"):
        runtime.verify_manifest(tmp_path)
    (tmp_path / "models" / "model.ts").unlink()
    with pytest.raises(FileNotFoundError, match=r"models/model.ts is missing"):
        runtime.verify_manifest(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"manifest.json is missing"):
        runtime.verify_manifest(tmp_path)


def test_load_network_loads_torchscript_on_the_cpu_and_names_a_missing_onnx_model(tmp_path):
    net = torch.nn.Linear(3, 2)
    torch.jit.save(torch.jit.script(net), str(tmp_path / "model.ts"))
    loaded = runtime.load_network(tmp_path, "torchscript", "cpu")
    x = torch.randn(4, 3)
    assert torch.allclose(loaded(x), net(x))
    with pytest.raises(FileNotFoundError, match=r"model.onnx does not exist"):
        runtime.load_network(tmp_path, "onnx")
    with pytest.raises(ValueError, match="inference_backend must be"):
        runtime.load_network(tmp_path, "tensorrt")


def test_probability_writer_writes_one_entry_per_case(tmp_path):
    from ignite.engine import Engine

    probs = MetaTensor(torch.tensor([[0.25, 0.75], [0.5, 0.5]]))
    images = [MetaTensor(torch.zeros(1), meta={"filename_or_obj": f"/data/{i}.png"}) for i in range(2)]
    engine = Engine(lambda e, b: {"pred": probs, "image": images})
    writer = runtime.ProbabilityWriter(tmp_path / "out" / "p.json", class_names=["normal", "finding"])
    writer.attach(engine)
    engine.run([0], max_epochs=1)
    entries = json.loads((tmp_path / "out" / "p.json").read_text())
    assert entries == [
        {"image": "/data/0.png", "probabilities": {"normal": 0.25, "finding": 0.75}},
        {"image": "/data/1.png", "probabilities": {"normal": 0.5, "finding": 0.5}},
    ]
    assert np.isclose(sum(entries[0]["probabilities"].values()), 1)
