"""``python -m medkd_ext.label serve``: a real MONAI Label server on 127.0.0.1, in MONAI Label's own environment
(created by the command on first use), serving the three bundles; ``/infer`` over HTTP gives what the bundle's own
``monai.bundle run ... inference.json`` gives (masks equal, in the input's shape and affine; probabilities within
1e-4), for NIfTI, a DICOM series whose files have no extension, and a single-frame DICOM; DICOM-SEG on request;
paths outside the studies folder are refused; a checkpoint that does not fit its network stops the start, named.

The bundles are copies of the repository's, each with a checkpoint of its inference network at its initial weights
(training is not what is tested here); the AT copy records ``multi_label`` so that a multi-label model is served.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import requests
import torch
from monai.bundle import ConfigParser

from medkd_ext.engines import save_settings
from medkd_ext.label.environment import ensure_environment
from medkd_ext.networks import save_state_dict
from tests.bundles.bundle_checks import REPO, last_line, run_bundle_cli, write_dicom_series

pytestmark = pytest.mark.slow

NAMES = ("roskd_classification", "attention_transfer_densenet", "joint_teacher_seg")
START_TIMEOUT_S = 900  # a first start builds MONAI Label's environment


def _bundle_copy(name: str, root: Path, settings: dict | None = None) -> Path:
    bundle = root / name
    shutil.copytree(REPO / "bundles" / name, bundle, ignore=shutil.ignore_patterns("models", "eval"))
    if settings:
        save_settings(bundle / "models" / "model.pt", settings)
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    torch.manual_seed(0)
    save_state_dict(parser.get_parsed_content("network_def"), bundle / "models" / "model.pt")
    return bundle


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("label")
    bundles = {
        "roskd_classification": _bundle_copy("roskd_classification", root / "bundles"),
        "attention_transfer_densenet": _bundle_copy(
            "attention_transfer_densenet", root / "bundles", {"multi_label": True, "num_classes": 4,
                                                             "class_names": ["effusion", "nodule", "mass", "edema"]}
        ),
        "joint_teacher_seg": _bundle_copy("joint_teacher_seg", root / "bundles"),
    }
    workspace, port = root / "workspace", _free_port()
    command = [sys.executable, "-m", "medkd_ext.label", "serve", "--port", str(port), "--workspace", str(workspace)]
    for bundle in bundles.values():
        command += ["--bundle", str(bundle)]
    log = open(root / "server.log", "w")
    process = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    while True:
        try:
            if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                break
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
            process.kill()
            pytest.fail(f"the server did not start:\n{(root / 'server.log').read_text()[-4000:]}")
        time.sleep(1)
    try:
        yield {"url": url, "bundles": bundles, "studies": workspace / "studies", "root": root}
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def _bundle_inference(name: str, bundle: Path, inputs: Path, out: Path) -> None:
    """The bundle's own command line on ``inputs``, as a user runs it (the repository's bundle, this checkpoint)."""
    ids = {"bundle_root": bundle, "input_dir": inputs, "dataset_dir": inputs, "output_dir": out}
    ran = run_bundle_cli(name, "inference.json", ids)
    assert ran.returncode == 0, ran.stdout[-3000:]


def _infer(server, model: str, *, upload: Path | None = None, image: str | None = None, params=None,
           output: str = "image") -> requests.Response:
    files = {"params": (None, json.dumps(params or {}))}
    if upload is not None:
        files["file"] = (upload.name, upload.read_bytes())
    query = {"output": output, **({"image": image} if image else {})}
    return requests.post(f"{server['url']}/infer/{model}", params=query, files=files, timeout=300)


def test_info_lists_the_three_bundles_with_their_task_types(server):
    info = requests.get(f"{server['url']}/info/", timeout=30).json()
    models = info["models"]
    assert set(models) == set(NAMES)
    assert models["joint_teacher_seg"]["type"] == "segmentation" and models["joint_teacher_seg"]["dimension"] == 3
    assert models["joint_teacher_seg"]["labels"] == {"lesion": 1}
    for name in ("roskd_classification", "attention_transfer_densenet"):
        assert models[name]["type"] == "classification" and models[name]["dimension"] == 2
    assert models["attention_transfer_densenet"]["multi_label"] is True
    assert list(models["attention_transfer_densenet"]["labels"]) == ["effusion", "nodule", "mass", "edema"]


def test_segmentation_of_an_uploaded_nifti_and_a_dicom_series_equals_the_bundle(server, tmp_path):
    from medkd_ext.data import make_segmentation_demo

    make_segmentation_demo(tmp_path / "data", seed=0, size=(24, 24, 24), n_target_train=1, n_target_test=1,
                           n_source=1)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    volume = sorted((tmp_path / "data" / "target" / "imagesTs").glob("*.nii.gz"))[0]
    shutil.copy(volume, inputs / "case.nii.gz")
    write_dicom_series(inputs / "series", suffix="", slices=12)  # files named IM0000 ... without extension
    _bundle_inference("joint_teacher_seg", server["bundles"]["joint_teacher_seg"], inputs, tmp_path / "ours")

    uploaded = _infer(server, "joint_teacher_seg", upload=inputs / "case.nii.gz")
    assert uploaded.status_code == 200, uploaded.text
    (tmp_path / "served.nii.gz").write_bytes(uploaded.content)
    studies_series = server["studies"] / "series_a"
    shutil.copytree(inputs / "series", studies_series)
    from_series = _infer(server, "joint_teacher_seg", image="series_a")  # a folder of the studies, by its name
    assert from_series.status_code == 200, from_series.text
    (tmp_path / "served_series.nii.gz").write_bytes(from_series.content)

    for served, ours, source in (("served.nii.gz", "case_seg.nii.gz", inputs / "case.nii.gz"),
                                 ("served_series.nii.gz", "series_seg.nii.gz", None)):
        got, expected = nib.load(str(tmp_path / served)), nib.load(str(tmp_path / "ours" / ours))
        assert got.shape == expected.shape
        np.testing.assert_allclose(got.affine, expected.affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(expected.dataobj))
        if source is not None:
            assert got.shape == nib.load(str(source)).shape
            np.testing.assert_allclose(got.affine, nib.load(str(source)).affine, atol=1e-5)
    from monai.transforms import LoadImage

    series_image = LoadImage(image_only=True)(str(inputs / "series"))
    assert nib.load(str(tmp_path / "served_series.nii.gz")).shape == tuple(series_image.shape)
    np.testing.assert_allclose(nib.load(str(tmp_path / "served_series.nii.gz")).affine, series_image.affine,
                               atol=1e-4)
    leftovers = [p.name for p in (server["studies"] / ".uploads").iterdir() if not p.name.endswith(".json")]
    assert leftovers == [], leftovers  # uploads and results are removed once answered


def test_dicom_seg_on_request_references_the_series_and_equals_the_mask(server, tmp_path):
    import pydicom

    hd = pytest.importorskip("highdicom")
    series = server["studies"] / "series_b"
    sources = write_dicom_series(series, suffix="", slices=10)
    mask_reply = _infer(server, "joint_teacher_seg", image=str(series))
    seg_reply = _infer(server, "joint_teacher_seg", image=str(series), params={"output_format": "dicom_seg"})
    assert mask_reply.status_code == 200 and seg_reply.status_code == 200, seg_reply.text
    (tmp_path / "mask.nii.gz").write_bytes(mask_reply.content)
    (tmp_path / "seg.dcm").write_bytes(seg_reply.content)

    plain = pydicom.dcmread(tmp_path / "seg.dcm")
    originals = [pydicom.dcmread(f) for f in sources]
    assert plain.Modality == "SEG"
    assert plain.ReferencedSeriesSequence[0].SeriesInstanceUID == originals[0].SeriesInstanceUID
    referenced = {i.ReferencedSOPInstanceUID for i in plain.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in originals}
    frames = hd.seg.segread(tmp_path / "seg.dcm").get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in originals], combine_segments=True
    )
    mask = np.asarray(nib.load(str(tmp_path / "mask.nii.gz")).dataobj)
    assert 0 < mask.mean() < 1
    np.testing.assert_array_equal(frames.transpose(2, 1, 0), mask)  # frame k pixel (r, c) is voxel (c, r, k)

    nifti_upload = _infer(server, "joint_teacher_seg", upload=tmp_path / "mask.nii.gz",
                          params={"output_format": "dicom_seg"})
    assert nifti_upload.status_code == 400 and "DICOM series" in nifti_upload.json()["detail"]


def _probabilities(path: Path) -> dict[str, dict[str, float]]:
    return {Path(item["image"]).name: item["probabilities"] for item in json.loads(path.read_text())}


@pytest.mark.parametrize("name", ["roskd_classification", "attention_transfer_densenet"])
def test_classification_of_a_2d_nifti_and_a_single_frame_dicom_equals_the_bundle(server, tmp_path, name):
    from pydicom.data import get_testdata_file

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    pixels = np.random.default_rng(0).uniform(0, 255, size=(40, 36)).astype(np.float32)
    nib.save(nib.Nifti1Image(pixels, np.eye(4)), str(inputs / "radiograph.nii.gz"))
    shutil.copy(get_testdata_file("CT_small.dcm"), inputs / "IM0001")  # a real 128x128 CT slice, no extension
    _bundle_inference(name, server["bundles"][name], inputs, tmp_path / "ours")
    expected = _probabilities(tmp_path / "ours" / "probabilities.json")

    for file in ("radiograph.nii.gz", "IM0001"):
        reply = _infer(server, name, upload=inputs / file, output="json")
        assert reply.status_code == 200, reply.text
        result = reply.json()
        got = result["probabilities"]
        assert list(got) == list(expected[file])
        np.testing.assert_allclose(list(got.values()), list(expected[file].values()), atol=1e-4)
        values = np.array(list(got.values()))
        assert ((values >= 0) & (values <= 1)).all()
        if result["multi_label"]:
            assert name == "attention_transfer_densenet" and list(got) == ["effusion", "nodule", "mass", "edema"]
        else:
            assert abs(values.sum() - 1) < 1e-4


def test_paths_outside_the_studies_folder_and_bad_images_are_refused(server, tmp_path):
    outside = tmp_path / "secret.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 24), np.float32), np.eye(4)), str(outside))
    refused = _infer(server, "joint_teacher_seg", image=str(outside))
    assert refused.status_code == 403 and "outside the studies folder" in refused.json()["detail"]
    escaping = _infer(server, "joint_teacher_seg", image="../../" + outside.name)
    assert escaping.status_code in (403, 404)
    volume_to_2d = _infer(server, "roskd_classification", upload=outside, output="json")
    assert volume_to_2d.status_code == 400
    assert "is 3D" in volume_to_2d.json()["detail"] and "spatial_dims=2" in volume_to_2d.json()["detail"]


def test_a_checkpoint_that_does_not_fit_its_network_stops_the_start_naming_the_file(server, tmp_path):
    bad = _bundle_copy("joint_teacher_seg", tmp_path)
    weights = torch.load(bad / "models" / "model.pt", weights_only=True)
    weights.pop(sorted(weights)[0])
    torch.save(weights, bad / "models" / "model.pt")
    checkpoint = str(bad / "models" / "model.pt")
    # refused by the command before any server starts
    ran = subprocess.run(
        [sys.executable, "-m", "medkd_ext.label", "serve", "--bundle", str(bad), "--workspace", str(tmp_path / "w"),
         "--port", str(_free_port())],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", timeout=300,
    )
    assert ran.returncode != 0 and checkpoint in last_line(ran), ran.stdout[-2000:]
    # and by the app itself when MONAI Label starts it
    app = tmp_path / "app"
    app.mkdir()
    (app / "main.py").write_text("from medkd_ext.label.app import MedkdLabelApp  # noqa: F401\n")
    (app / "medkd_label.json").write_text(json.dumps({"bundles": [str(bad)], "project_python": sys.executable}))
    started = subprocess.run(
        [str(ensure_environment()), "-c", "import sys; from medkd_ext.label.app import MedkdLabelApp; "
         "MedkdLabelApp(sys.argv[1], sys.argv[2], {})", str(app), str(tmp_path / "studies")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", timeout=300,
    )
    assert started.returncode != 0 and checkpoint in last_line(started), started.stdout[-2000:]


def test_check_prepares_the_app_and_stops(server, tmp_path):
    """``serve --check``: the bundles loaded here and by the app in MONAI Label's environment, nothing served."""
    ran = subprocess.run(
        [sys.executable, "-m", "medkd_ext.label", "serve", "--check", "--workspace", str(tmp_path / "w"),
         "--bundle", str(server["bundles"]["joint_teacher_seg"])],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", timeout=300,
    )
    assert ran.returncode == 0 and last_line(ran) == "app ready", ran.stdout[-2000:]
    assert "joint_teacher_seg: segmentation, 3D, labels ['lesion']" in ran.stdout
    settings = json.loads((tmp_path / "w" / "app" / "medkd_label.json").read_text())
    assert settings["bundles"] == [str(server["bundles"]["joint_teacher_seg"])]
