"""The bad-input catalogue of issue 14, one test each, for training and inference of the three bundles.

Each entry makes one bad input and runs the bundle as a user does (``python -m monai.bundle run`` from the repository
root, :func:`~tests.bundles.bundle_checks.run_bundle_cli`), then checks that the run exits with a non-zero status, that
the last line of its output (``ERROR [stage '...']: Type: message``, printed by ``medkd_ext.errors``) names the
problem and the file, key or stage, and that ``ckpt_dir``, which held checkpoints before, holds the same files with
the same bytes. The table :data:`CATALOGUE` lists entry, bundle, config files, how the bad input is made (a function
that writes it under the test's folder and returns the ids to give) and the words expected in the last line
(``{tmp}`` is the test's folder).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medkd_ext.data import make_classification_demo, make_segmentation_demo
from medkd_ext.networks import save_state_dict
from tests.bundles.bundle_checks import folder_content, last_line, run_bundle_cli, write_dicom_series

pytestmark = pytest.mark.slow

ROSKD, AT, JOINT = "roskd_classification", "attention_transfer_densenet", "joint_teacher_seg"
TRAIN, INFER = "train.json", "inference.json"
JOINT_STUDENT = ["train.json", "train_student.json"]  # the student stage alone, which loads the joint teacher
JOINT_SOURCE = ["train.json", "train_target_teacher.json", "train_source_teacher.json"]

TINY = {  # ids that make a run that wrongly trains finish in seconds
    ROSKD: {"max_epochs": 1, "teacher_max_epochs": 1, "batch_size": 4},
    AT: {"image_size": 64, "max_epochs": 1, "teacher_max_epochs": 1, "batch_size": 4, "pretrain_max_epochs": 1},
    JOINT: {
        "target_teacher_max_epochs": 1, "source_teacher_max_epochs": 1, "joint_max_epochs": 1, "max_epochs": 1,
        "val_interval": 1, "roi_size": [24, 24, 24], "teacher_width": 4, "student_width": 4, "max_tokens": 64,
    },
}


@dataclass(frozen=True)
class Data:
    """Demo datasets shared by the entries (never modified: an entry copies what it breaks)."""

    c2: Path  # 2D classification: dataset.json, images/*.png (16 training cases of 8-bit gray PNG, 4 classes)
    c3: Path  # 3D classification: dataset.json, images/*.nii.gz
    seg: Path  # segmentation: target/ (3 training, 1 test case), source_1/, source_2/ (2 cases each), 24^3 voxels


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Data:
    root = tmp_path_factory.mktemp("bad_input_data")
    make_classification_demo(root / "c2", seed=0, n_cases=16, n_test=4, size=32)
    make_classification_demo(root / "c3", seed=0, spatial_dims=3, n_cases=8, n_test=2, size=16)
    make_segmentation_demo(root / "seg", seed=0, size=(24, 24, 24), n_target_train=3, n_target_test=1, n_source=2)
    return Data(root / "c2", root / "c3", root / "seg")


# ---- how the bad inputs are made: each returns the ids of the run (besides ckpt_dir, output_dir, num_threads)


def _datalist(source: Path, out: Path, edit: Callable[[dict], Any] = lambda content: None) -> Path:
    """A copy of a classification ``dataset.json`` with absolute image paths, edited by ``edit``."""
    content = json.loads((source / "dataset.json").read_text())
    for split in ("training", "test"):
        for item in content[split]:
            item["image"] = str(source / item["image"])
    edit(content)
    out.write_text(json.dumps(content))
    return out


def _replace_image(content: dict, path: Path) -> None:
    """The image of the third training case becomes ``path``."""
    content["training"][2]["image"] = str(path)


def _seg(data: Data, tmp: Path) -> tuple[Path, dict]:
    """A copy of the segmentation demo and the first training case of its target (absolute paths)."""
    shutil.copytree(data.seg, tmp / "seg")
    target = tmp / "seg" / "target"
    first = json.loads((target / "dataset.json").read_text())["training"][0]
    return tmp / "seg", {k: target / v for k, v in first.items()}


def _nifti(path: Path, array: np.ndarray, like: Path | None = None) -> Path:
    affine = nib.load(str(like)).affine if like is not None else np.eye(4)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def _truncate(path: Path) -> Path:
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


def _png(path: Path, channels: int) -> Path:
    mode = {3: "RGB", 4: "RGBA"}[channels]
    Image.fromarray(np.full((32, 32, channels), 90, np.uint8), mode=mode).save(path)
    return path


def _models(tmp: Path) -> Path:
    return tmp / "models"


def _roskd_model(tmp: Path, spatial_dims: int = 2, seed: int = 0) -> Path:
    """``model.pt`` of the RoS-KD student (ResNet-18 at the demo's width 0.25, one channel, 4 classes) in
    ``tmp/models``, without a record: inference builds the demo's network."""
    import torch
    from monai.networks.nets import resnet18

    torch.manual_seed(seed)
    network = resnet18(spatial_dims=spatial_dims, n_input_channels=1, num_classes=4, widen_factor=0.25)
    return save_state_dict(network, _models(tmp) / "model.pt")


def _at_model(tmp: Path) -> Path:
    from medkd_ext.networks import DenseNet40

    return save_state_dict(DenseNet40(2, 3, 4), _models(tmp) / "model.pt")


def _joint_model(tmp: Path, width: int = 4) -> Path:
    from medkd_ext.networks import segmentation_network

    return save_state_dict(segmentation_network("unet", 3, 1, 2, width=width), _models(tmp) / "model.pt")


def _at_teacher(tmp: Path, fits: bool = True) -> Path:
    """``teacher.pt``: a DenseNet-121 teacher (``fits``) or a DenseNet-40 (another architecture)."""
    from monai.networks.nets import DenseNet121

    from medkd_ext.networks import DenseNet40

    network = DenseNet121(spatial_dims=2, in_channels=3, out_channels=4) if fits else DenseNet40(2, 3, 4)
    return save_state_dict(network, _models(tmp) / "teacher.pt")


def _record(ckpt: Path) -> None:
    """The record beside a checkpoint (``<ckpt>.json``), as the stage that wrote it leaves it."""
    from medkd_ext.engines import save_settings

    save_settings(ckpt, {})


def missing_image(bundle: str):
    def make(tmp: Path, data: Data) -> dict:
        if bundle == JOINT:
            seg, first = _seg(data, tmp)
            first["image"].unlink()
            return {"dataset_dir": seg}
        return {"datalist": _datalist(data.c2, tmp / "d.json", lambda c: _replace_image(c, tmp / "missing.png"))}

    return make


def missing_datalist(tmp: Path, data: Data) -> dict:
    return {"target_datalist": tmp / "nowhere.json"}


def missing_input(tmp: Path, data: Data) -> dict:
    _joint_model(tmp)
    return {"dataset_dir": tmp / "scans", "student_width": 4}


def missing_input_file(tmp: Path, data: Data) -> dict:
    _roskd_model(tmp)
    return {"input_dir": tmp / "missing.png"}


def truncated_nifti_joint(tmp: Path, data: Data) -> dict:
    seg, first = _seg(data, tmp)
    _truncate(first["image"])
    return {"dataset_dir": seg}


def corrupt_nifti_label(tmp: Path, data: Data) -> dict:
    seg, first = _seg(data, tmp)
    first["label"].write_bytes(np.random.default_rng(0).integers(0, 255, 4000, dtype=np.uint8).tobytes())
    return {"dataset_dir": seg}


def truncated_nifti_roskd_3d(tmp: Path, data: Data) -> dict:
    volume = tmp / "volume.nii.gz"
    shutil.copy(sorted((data.c3 / "images").glob("*.nii.gz"))[0], volume)
    _truncate(volume)
    return {"datalist": _datalist(data.c3, tmp / "d.json", lambda c: _replace_image(c, volume)), "spatial_dims": 3}


def truncated_nifti_input(tmp: Path, data: Data) -> dict:
    _joint_model(tmp)
    scans = tmp / "scans"
    scans.mkdir()
    shutil.copy(data.seg / "target" / "imagesTs" / "target_003.nii.gz", scans / "a.nii.gz")
    shutil.copy(data.seg / "target" / "imagesTr" / "target_000.nii.gz", scans / "b.nii.gz")
    _truncate(scans / "b.nii.gz")
    return {"dataset_dir": scans, "student_width": 4}


def truncated_png_training_case(tmp: Path, data: Data) -> dict:
    image = tmp / "xray.png"
    shutil.copy(sorted((data.c2 / "images").glob("*.png"))[0], image)
    _truncate(image)
    return {"datalist": _datalist(data.c2, tmp / "d.json", lambda c: _replace_image(c, image))}


def truncated_png_input(tmp: Path, data: Data) -> dict:
    _roskd_model(tmp)
    image = tmp / "xray.png"
    shutil.copy(sorted((data.c2 / "images").glob("*.png"))[0], image)
    _truncate(image)
    return {"input_dir": image}


def dicom_input(defect: str):
    """A folder holding one DICOM series whose files have no suffix, one slice file cut short or missing."""

    def make(tmp: Path, data: Data) -> dict:
        _joint_model(tmp)
        files = write_dicom_series(tmp / "scans" / "series_a", suffix="")
        if defect == "truncated":
            _truncate(files[4])
        else:
            files[4].unlink()
        return {"dataset_dir": tmp / "scans", "student_width": 4}

    return make


def dicom_training_case(tmp: Path, data: Data) -> dict:
    seg, first = _seg(data, tmp)
    listing = seg / "target" / "dataset.json"
    content = json.loads(listing.read_text())
    files = write_dicom_series(seg / "target" / "imagesTr" / "series_000", suffix="")
    _truncate(files[4])
    content["training"][0]["image"] = "imagesTr/series_000"
    listing.write_text(json.dumps(content))
    return {"dataset_dir": seg}


def shape_mismatch(tmp: Path, data: Data) -> dict:
    seg, first = _seg(data, tmp)
    _nifti(first["label"], np.zeros((8, 8, 8), np.uint8), like=first["label"])
    return {"dataset_dir": seg}


def label_outside_joint(tmp: Path, data: Data) -> dict:
    seg, first = _seg(data, tmp)
    label = _voxels(first["label"]).copy()
    label[0, 0, 0] = 7
    _nifti(first["label"], label, like=first["label"])
    return {"dataset_dir": seg}


def label_outside_classification(tmp: Path, data: Data) -> dict:
    def edit(content: dict) -> None:
        content["training"][2]["label"] = 7

    return {"datalist": _datalist(data.c2, tmp / "d.json", edit)}


def non_finite_training_volume(tmp: Path, data: Data) -> dict:
    seg, first = _seg(data, tmp)
    image = _voxels(first["image"]).astype(np.float32)
    image[3, 4, 5] = np.nan
    _nifti(first["image"], image, like=first["image"])
    return {"dataset_dir": seg}


def non_finite_input_volume(tmp: Path, data: Data) -> dict:
    _joint_model(tmp)
    scans = tmp / "scans"
    scans.mkdir()
    test = data.seg / "target" / "imagesTs" / "target_003.nii.gz"
    image = _voxels(test).astype(np.float32)
    image[1, 1, 1] = np.inf
    _nifti(scans / "scan.nii.gz", image, like=test)
    return {"dataset_dir": scans, "student_width": 4}


def _nan_volume(tmp: Path, data: Data) -> Path:
    source = sorted((data.c3 / "images").glob("*.nii.gz"))[0]
    volume = _voxels(source).astype(np.float32)
    volume[2, 2, 2] = np.nan
    return _nifti(tmp / "volume.nii.gz", volume, like=source)


def non_finite_classification_training(tmp: Path, data: Data) -> dict:
    volume = _nan_volume(tmp, data)
    return {
        "datalist": _datalist(data.c3, tmp / "d.json", lambda c: _replace_image(c, volume)), "spatial_dims": 3,
        "method": "student_only", "train_teachers": "false", "image_size": 16,
    }


def non_finite_classification_input(tmp: Path, data: Data) -> dict:
    _roskd_model(tmp, spatial_dims=3)
    return {"input_dir": _nan_volume(tmp, data), "spatial_dims": 3, "image_size": 16}


def empty_datalist(bundle: str):
    def make(tmp: Path, data: Data) -> dict:
        if bundle == JOINT:
            seg, _ = _seg(data, tmp)
            listing = seg / "target" / "dataset.json"
            listing.write_text(json.dumps({**json.loads(listing.read_text()), "training": []}))
            return {"dataset_dir": seg}
        return {"datalist": _datalist(data.c2, tmp / "d.json", lambda c: c.update(training=[]))}

    return make


def empty_input_folder(bundle: str):
    def make(tmp: Path, data: Data) -> dict:
        (tmp / "scans").mkdir()
        (tmp / "scans" / "notes.txt").write_text("the scans come tomorrow")
        if bundle == JOINT:
            _joint_model(tmp)
            return {"dataset_dir": tmp / "scans", "student_width": 4}
        _roskd_model(tmp)
        return {"input_dir": tmp / "scans"}

    return make


def empty_source(tmp: Path, data: Data) -> dict:
    seg, _ = _seg(data, tmp)
    listing = seg / "source_1" / "dataset.json"
    listing.write_text(json.dumps({**json.loads(listing.read_text()), "training": []}))
    return {"dataset_dir": seg}


def wrong_channels(bundle: str, mode: str):
    """An RGB image for the one-channel RoS-KD networks, an RGBA one for the 3-channel DenseNets, a two-channel
    volume for the one-channel segmentation networks."""

    def make(tmp: Path, data: Data) -> dict:
        if bundle == JOINT:
            if mode == INFER:
                _joint_model(tmp)
                (tmp / "scans").mkdir()
                test = data.seg / "target" / "imagesTs" / "target_003.nii.gz"
                _nifti(tmp / "scans" / "two.nii.gz", np.stack([_voxels(test)] * 2, axis=-1), like=test)
                return {"dataset_dir": tmp / "scans", "student_width": 4}
            seg, first = _seg(data, tmp)
            _nifti(first["image"], np.stack([_voxels(first["image"])] * 2, axis=-1), like=first["image"])
            return {"dataset_dir": seg}
        image = _png(tmp / "colour.png", 3 if bundle == ROSKD else 4)
        if mode == INFER:
            (_roskd_model if bundle == ROSKD else _at_model)(tmp)
            return {"input_dir": image}
        return {"datalist": _datalist(data.c2, tmp / "d.json", lambda c: _replace_image(c, image))}

    return make


def wrong_dimensions(bundle: str, mode: str):
    """A 3D volume for the 2D classification networks, a 2D image for the 3D segmentation networks."""

    def make(tmp: Path, data: Data) -> dict:
        if bundle == JOINT:
            if mode == INFER:
                _joint_model(tmp)
                (tmp / "scans").mkdir()
                test = data.seg / "target" / "imagesTs" / "target_003.nii.gz"
                _nifti(tmp / "scans" / "slice.nii.gz", _voxels(test)[:, :, 12], like=test)
                return {"dataset_dir": tmp / "scans", "student_width": 4}
            seg, first = _seg(data, tmp)
            for key in ("image", "label"):
                _nifti(first[key], _voxels(first[key])[:, :, 12], like=first[key])
            return {"dataset_dir": seg}
        volume = tmp / "volume.nii.gz"
        shutil.copy(sorted((data.c3 / "images").glob("*.nii.gz"))[0], volume)
        if mode == INFER:
            (_roskd_model if bundle == ROSKD else _at_model)(tmp)
            return {"input_dir": volume}
        return {"datalist": _datalist(data.c2, tmp / "d.json", lambda c: _replace_image(c, volume))}

    return make


def missing_teacher(bundle: str):
    def make(tmp: Path, data: Data) -> dict:
        if bundle == ROSKD:
            return {"datalist": _datalist(data.c2, tmp / "d.json"), "train_teachers": "false"}
        if bundle == AT:
            return {"datalist": _datalist(data.c2, tmp / "d.json"), "train_teacher_if_missing": "false"}
        return {"dataset_dir": _seg(data, tmp)[0]}

    return make


def missing_model(tmp: Path, data: Data) -> dict:
    (_models(tmp) / "model.pt").unlink()
    (_models(tmp) / "teacher_target.pt").write_bytes(b"a teacher of an earlier run")  # the student was not trained
    return {"dataset_dir": data.seg / "target" / "imagesTs"}


def other_architecture(bundle: str, mode: str = TRAIN):
    """A checkpoint written for another network than the one that loads it."""

    def make(tmp: Path, data: Data) -> dict:
        from medkd_ext.networks import DenseNet40, segmentation_network

        if mode == INFER:
            if bundle == ROSKD:
                save_state_dict(DenseNet40(2, 1, 4), _models(tmp) / "model.pt")
                return {"input_dir": data.c2 / "images"}
            _joint_model(tmp, width=4)  # read without --student_width: the default width 8 does not fit
            return {"dataset_dir": data.seg / "target" / "imagesTs"}
        if bundle == ROSKD:
            for i in range(5):
                save_state_dict(DenseNet40(2, 1, 4), _models(tmp) / f"teacher_{i}.pt")
            return {"datalist": _datalist(data.c2, tmp / "d.json"), "train_teachers": "false"}
        if bundle == AT:
            _at_teacher(tmp, fits=False)
            return {"datalist": _datalist(data.c2, tmp / "d.json"), "train_teacher_if_missing": "false"}
        save_state_dict(segmentation_network("unet", 3, 1, 2, width=4), _models(tmp) / "joint_teacher.pt")
        return {"dataset_dir": _seg(data, tmp)[0]}

    return make


def wrong_type(bundle: str):
    def make(tmp: Path, data: Data) -> dict:
        if bundle == JOINT:
            return {"dataset_dir": _seg(data, tmp)[0], "max_epochs": "abc"}
        return {"datalist": _datalist(data.c2, tmp / "d.json"), "max_epochs": "abc"}

    return make


def more_teachers_than_cases(tmp: Path, data: Data) -> dict:
    return {"datalist": _datalist(data.c2, tmp / "d.json", lambda c: c.update(training=c["training"][:6])),
            "val_fraction": 0.5}


def unknown_tap(tmp: Path, data: Data) -> dict:
    _at_teacher(tmp)
    return {"datalist": _datalist(data.c2, tmp / "d.json"), "student_layer": "features.denseblock2.denselayer99"}


def attention_maps_of_one_position(tmp: Path, data: Data) -> dict:
    """32x32 crops: DenseNet-121's attention-transfer maps are 1x1, constant once normalised."""
    return {"datalist": _datalist(data.c2, tmp / "d.json"), "image_size": 32}


def unknown_feature_layer(tmp: Path, data: Data) -> dict:
    return {"dataset_dir": _seg(data, tmp)[0], "train#trainer#feature_layer": "model.1.submodule.9"}


def tampered_weights(bundle: str, mode: str):
    """A weight file replaced by another one (RoS-KD) or cut short after its record was written."""

    def make(tmp: Path, data: Data) -> dict:
        if bundle == ROSKD:
            _record(_roskd_model(tmp))
            _roskd_model(tmp, seed=1)  # same architecture, other weights
            return {"input_dir": data.c2 / "images"}
        if bundle == AT:
            teacher = _at_teacher(tmp)
            _record(teacher)
            _truncate(teacher)
            return {"datalist": _datalist(data.c2, tmp / "d.json"), "train_teacher_if_missing": "false"}
        model = _joint_model(tmp)
        _record(model)
        _truncate(model)
        return {"dataset_dir": data.seg / "target" / "imagesTs", "student_width": 4}

    return make


def unwritable(key: str):
    """``ckpt_dir`` or ``output_dir`` inside a regular file: no folder can be made there (even by root)."""

    def make(tmp: Path, data: Data) -> dict:
        (tmp / "blocker").write_text("a file, not a folder")
        ids = {key: tmp / "blocker" / "out"}
        if key == "ckpt_dir":
            return {**ids, "datalist": _datalist(data.c2, tmp / "d.json")}
        return {**ids, "dataset_dir": _seg(data, tmp)[0]}

    return make


def exploding_learning_rate(tmp: Path, data: Data) -> dict:
    """A learning rate that makes the loss infinite within the first teacher's first epoch."""
    return {"datalist": _datalist(data.c2, tmp / "d.json"), "learning_rate": 1e30}


def not_an_image(kind: str):
    def make(tmp: Path, data: Data) -> dict:
        if kind == "text":
            _roskd_model(tmp)
            path = tmp / "notes.txt"
        else:
            _at_model(tmp)
            path = tmp / "scan.png"
        path.write_text("not an image")
        return {"input_dir": path}

    return make


def entry(name: str, bundle: str, configs: str | list[str], make: Callable, expected: list[str], marks=()):
    """One row of :data:`CATALOGUE`, its test named ``<entry>-<bundle>-<config>[+<overlay>...]``."""
    stems = "+".join(Path(c).stem for c in ([configs] if isinstance(configs, str) else configs))
    return pytest.param(bundle, configs, make, expected, id=f"{name}-{bundle}-{stems}", marks=marks)


MISSING = "does not exist"
CATALOGUE = [
    # missing files
    entry("missing_image", ROSKD, TRAIN, missing_image(ROSKD), ["the 'image' file {tmp}/missing.png", MISSING]),
    entry("missing_image", AT, TRAIN, missing_image(AT), ["the 'image' file {tmp}/missing.png", MISSING]),
    entry("missing_image", JOINT, TRAIN, missing_image(JOINT),
          ["{tmp}/seg/target/imagesTr/target_000.nii.gz", MISSING]),
    entry("missing_datalist", JOINT, TRAIN, missing_datalist, ["datalist file {tmp}/nowhere.json", MISSING]),
    entry("missing_image", ROSKD, INFER, missing_input_file, ["images {tmp}/missing.png do not exist", "input_dir"]),
    entry("missing_image", JOINT, INFER, missing_input, ["images {tmp}/scans do not exist", "dataset_dir"]),
    # damaged files
    entry("truncated_nifti", JOINT, TRAIN, truncated_nifti_joint,
          ["{tmp}/seg/target/imagesTr/target_000.nii.gz is truncated"]),
    entry("corrupt_nifti", JOINT, TRAIN, corrupt_nifti_label,
          ["{tmp}/seg/target/labelsTr/target_000.nii.gz is not a readable NIfTI file"]),
    entry("truncated_nifti", ROSKD, TRAIN, truncated_nifti_roskd_3d, ["{tmp}/volume.nii.gz is truncated"]),
    entry("truncated_nifti", JOINT, INFER, truncated_nifti_input, ["{tmp}/scans/b.nii.gz is truncated"]),
    entry("truncated_png", AT, TRAIN, truncated_png_training_case, ["{tmp}/xray.png is truncated or corrupt"]),
    entry("truncated_png", ROSKD, INFER, truncated_png_input, ["{tmp}/xray.png is truncated or corrupt"]),
    entry("truncated_dicom_slice", JOINT, INFER, dicom_input("truncated"),
          ["DICOM series {tmp}/scans/series_a: IM0004 is truncated"]),
    entry("missing_dicom_slice", JOINT, INFER, dicom_input("missing"),
          ["DICOM series {tmp}/scans/series_a has missing slices", "IM0003", "IM0005"]),
    entry("truncated_dicom_slice", JOINT, TRAIN, dicom_training_case,
          ["DICOM series {tmp}/seg/target/imagesTr/series_000: IM0004 is truncated"]),
    # image and label content
    entry("shape_mismatch", JOINT, TRAIN, shape_mismatch,
          ["stage 'target_teacher'", "{tmp}/seg/target/labelsTr/target_000.nii.gz", "has spatial shape (24, 24, 24)"]),
    entry("label_outside_classes", JOINT, TRAIN, label_outside_joint,
          ["{tmp}/seg/target/labelsTr/target_000.nii.gz", "values [7.0] outside the integer classes [0, 2)"]),
    entry("label_outside_classes", ROSKD, TRAIN, label_outside_classification,
          ["has label 7, outside the classes [0, 4)"]),
    entry("label_outside_classes", AT, TRAIN, label_outside_classification,
          ["ValidateClassLabeld", "is 7;", "integer in [0, 4)"]),  # checked before pre-training
    entry("non_finite_voxels", JOINT, TRAIN, non_finite_training_volume,
          ["{tmp}/seg/target/imagesTr/target_000.nii.gz", "1 non-finite voxel(s)"]),
    entry("non_finite_voxels", JOINT, INFER, non_finite_input_volume,
          ["{tmp}/scans/scan.nii.gz", "1 non-finite voxel(s)"]),
    entry("non_finite_voxels", ROSKD, TRAIN, non_finite_classification_training,
          ["{tmp}/volume.nii.gz", "1 non-finite voxel(s)"]),
    entry("non_finite_voxels", ROSKD, INFER, non_finite_classification_input,
          ["{tmp}/volume.nii.gz", "1 non-finite voxel(s)"]),
    # datalists
    entry("empty_datalist", ROSKD, TRAIN, empty_datalist(ROSKD),
          ["datalist {tmp}/d.json has no cases under 'training'"]),
    entry("empty_datalist", AT, TRAIN, empty_datalist(AT), ["datalist {tmp}/d.json has no cases under 'training'"]),
    entry("empty_datalist", JOINT, TRAIN, empty_datalist(JOINT),
          ["datalist {tmp}/seg/target/dataset.json has no cases under 'training'"]),
    entry("empty_input_folder", ROSKD, INFER, empty_input_folder(ROSKD), ["no image found in {tmp}/scans"]),
    entry("empty_input_folder", JOINT, INFER, empty_input_folder(JOINT), ["no image found in {tmp}/scans"]),
    entry("source_without_cases", JOINT, TRAIN, empty_source,
          ["source dataset 0 ({tmp}/seg/source_1/dataset.json)", "has no cases under 'training'"]),
    # images that do not fit the network
    entry("wrong_channel_count", ROSKD, TRAIN, wrong_channels(ROSKD, TRAIN),
          ["{tmp}/colour.png", "has 3 channels but 1 are expected"]),
    entry("wrong_channel_count", AT, TRAIN, wrong_channels(AT, TRAIN),
          ["{tmp}/colour.png", "has 4 channels but 3 are expected"]),
    entry("wrong_channel_count", ROSKD, INFER, wrong_channels(ROSKD, INFER),
          ["{tmp}/colour.png", "has 3 channels but 1 are expected"]),
    entry("wrong_channel_count", AT, INFER, wrong_channels(AT, INFER),
          ["{tmp}/colour.png", "has 4 channels but 3 are expected"]),
    entry("wrong_channel_count", JOINT, TRAIN, wrong_channels(JOINT, TRAIN),
          ["{tmp}/seg/target/imagesTr/target_000.nii.gz", "has 2 channels", "in_channels=1"]),
    entry("wrong_channel_count", JOINT, INFER, wrong_channels(JOINT, INFER),
          ["{tmp}/scans/two.nii.gz", "has 2 channels", "in_channels=1"]),
    entry("3d_volume_for_2d", ROSKD, TRAIN, wrong_dimensions(ROSKD, TRAIN),
          ["{tmp}/volume.nii.gz", "is 3D", "but the network is 2D"]),
    entry("3d_volume_for_2d", AT, TRAIN, wrong_dimensions(AT, TRAIN),
          ["{tmp}/volume.nii.gz", "is 3D", "but the network is 2D"]),
    entry("3d_volume_for_2d", ROSKD, INFER, wrong_dimensions(ROSKD, INFER),
          ["{tmp}/volume.nii.gz", "is 3D", "but the network is 2D"]),
    entry("3d_volume_for_2d", AT, INFER, wrong_dimensions(AT, INFER),
          ["{tmp}/volume.nii.gz", "is 3D", "but the network is 2D"]),
    entry("2d_image_for_3d", JOINT, TRAIN, wrong_dimensions(JOINT, TRAIN),
          ["{tmp}/seg/target/imagesTr/target_000.nii.gz", "is 2D", "but the network is 3D"]),
    entry("2d_image_for_3d", JOINT, INFER, wrong_dimensions(JOINT, INFER),
          ["{tmp}/scans/slice.nii.gz", "is 2D", "but the network is 3D"]),
    # checkpoints
    entry("missing_teacher", ROSKD, TRAIN, missing_teacher(ROSKD),
          ["stage 'student'", "needs the teacher checkpoint(s)", "{tmp}/models/teacher_0.pt", "stage 'teacher_0'"]),
    entry("missing_teacher", AT, TRAIN, missing_teacher(AT),
          ["{tmp}/models/teacher.pt' not found", "train_teacher.json"]),  # checked before pre-training
    entry("missing_teacher", JOINT, JOINT_STUDENT, missing_teacher(JOINT),
          ["{tmp}/models/joint_teacher.pt' not found", "stage 'joint_teacher'", "train_joint.json"]),
    entry("missing_model", JOINT, INFER, missing_model, ["{tmp}/models/model.pt' not found", "train.json"]),
    entry("other_architecture", ROSKD, TRAIN, other_architecture(ROSKD),
          ["stage 'student'", "{tmp}/models/teacher_0.pt' does not fit ResNet", "missing key"]),
    entry("other_architecture", AT, TRAIN, other_architecture(AT),
          ["{tmp}/models/teacher.pt' does not fit DenseNet121", "missing key"]),
    entry("other_architecture", JOINT, JOINT_STUDENT, other_architecture(JOINT),
          ["{tmp}/models/joint_teacher.pt' does not fit JointTeacher"]),
    entry("other_architecture", ROSKD, INFER, other_architecture(ROSKD, INFER),
          ["{tmp}/models/model.pt' does not fit ResNet"]),
    entry("other_architecture", JOINT, INFER, other_architecture(JOINT, INFER),
          ["{tmp}/models/model.pt' does not fit SegUNet", "shape mismatch"]),
    entry("tampered_weights", ROSKD, INFER, tampered_weights(ROSKD, INFER), ["SHA-256", "{tmp}/models/model.pt"]),
    entry("tampered_weights", AT, TRAIN, tampered_weights(AT, TRAIN), ["SHA-256", "{tmp}/models/teacher.pt"]),
    entry("tampered_weights", JOINT, INFER, tampered_weights(JOINT, INFER), ["SHA-256", "{tmp}/models/model.pt"]),
    # ids
    entry("wrong_type_override", ROSKD, TRAIN, wrong_type(ROSKD), ["max_epochs = 'abc' is not an integer"]),
    entry("wrong_type_override", AT, TRAIN, wrong_type(AT), ["max_epochs = 'abc' is not an integer"]),
    entry("wrong_type_override", JOINT, TRAIN, wrong_type(JOINT), ["max_epochs = 'abc' is not an integer"]),
    entry("more_teachers_than_cases", ROSKD, TRAIN, more_teachers_than_cases,
          ["stage 'teacher_0'", "num_teachers (k) = 5 is larger than the training set"]),
    entry("unknown_layer", AT, TRAIN, unknown_tap,  # found before any stage, by the attention-map size check
          ["no sub-module named 'features.denseblock2.denselayer99'",
           "features.denseblock2.denselayer12"]),
    entry("attention_maps_of_one_position", AT, TRAIN, attention_maps_of_one_position,
          ["crop_size [32, 32]", "'features.denseblock4.denselayer15.layers' gives 1x1 maps", "at least 64"]),
    entry("unknown_layer", JOINT, JOINT_SOURCE, unknown_feature_layer,
          ["no sub-module named 'model.1.submodule.9'", "valid names near"]),
    entry("unwritable_ckpt_dir", ROSKD, TRAIN, unwritable("ckpt_dir"), ["cannot write", "{tmp}/blocker/out"]),
    entry("unwritable_output_dir", JOINT, TRAIN, unwritable("output_dir"), ["cannot write", "{tmp}/blocker/out"]),
    # training that diverges: stopped at the first non-finite loss, nothing saved from those weights
    entry("non_finite_loss", ROSKD, TRAIN, exploding_learning_rate,
          ["stage 'teacher_0'", "NonFiniteLossError", "the training loss is not finite at epoch 1, iteration"]),
    # inference on what is not an image
    entry("not_an_image", ROSKD, INFER, not_an_image("text"), ["{tmp}/notes.txt is not an image file"]),
    entry("not_an_image", AT, INFER, not_an_image("png"),
          ["{tmp}/scan.png is not an image that can be read"]),
]


@pytest.mark.parametrize("bundle, configs, make, expected", CATALOGUE)
def test_bad_input_is_named_in_the_last_line_and_models_are_kept(data, tmp_path, bundle, configs, make, expected):
    models = _models(tmp_path)
    models.mkdir()
    (models / "model.pt").write_bytes(b"earlier weights")  # a checkpoint of an earlier run; inference writes its own
    ids = {"ckpt_dir": models, "output_dir": tmp_path / "eval", "num_threads": 1}
    if configs != INFER:
        ids.update(TINY[bundle])
    ids.update(make(tmp_path, data))
    before = folder_content(models)
    assert before, "ckpt_dir holds checkpoints before the run"
    result = run_bundle_cli(bundle, configs, ids)
    line = last_line(result)
    assert result.returncode != 0, result.stdout[-3000:]
    assert line.startswith("ERROR "), result.stdout[-3000:]
    for words in expected:
        assert words.format(tmp=tmp_path) in line, line
    assert folder_content(models) == before
