"""bundles/joint_teacher_seg: every stage on tiny data, the model-zoo checks, inference geometry, bad input."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, run
from monai.transforms import LoadImage

from medkd_ext.data import make_segmentation_demo
from tests.bundles.bundle_checks import (
    REPO,
    check_export,
    check_exported_bundle,
    check_metadata,
    check_net_in_out,
    check_properties,
    readme_commands,
    run_readme_commands,
    stage_parsers,
    write_dicom_series,
)

BUNDLE = REPO / "bundles" / "joint_teacher_seg"
CONFIGS = BUNDLE / "configs"
TARGET = ["train.json", "train_target_teacher.json"]

pytestmark = pytest.mark.slow


def _tiny(tmp: Path, **extra) -> dict:
    """Overrides for a fast run: 1 epoch per stage, 16^3 patches, narrow networks."""
    return {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(tmp / "data"),
        "ckpt_dir": str(tmp / "models"),
        "output_dir": str(tmp / "eval"),
        "target_teacher_max_epochs": 1,
        "source_teacher_max_epochs": 1,
        "joint_max_epochs": 1,
        "max_epochs": 1,
        "val_interval": 1,
        "roi_size": [24, 24, 24],
        "teacher_width": 4,
        "student_width": 4,
        "max_tokens": 64,
        "curriculum_warmup": 0,
        "curriculum_ramp": 1,
        **extra,
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jt")
    make_segmentation_demo(tmp / "data", seed=0, size=(24, 24, 24), n_target_train=3, n_target_test=2, n_source=3)
    overrides = _tiny(tmp)
    run(config_file=str(CONFIGS / "train.json"), **overrides)
    return tmp, overrides


def _load(path):
    return torch.load(path, weights_only=True, map_location="cpu")


def test_train_json_runs_every_stage_and_writes_a_report(trained):
    tmp, _ = trained
    models = tmp / "models"
    expected = {"teacher_target.pt", "teacher_source_0.pt", "teacher_source_1.pt", "joint_teacher.pt", "model.pt"}
    assert expected <= {p.name for p in models.iterdir()}
    report = (tmp / "eval" / "metrics.md").read_text()
    assert "Means over cases" in report and "HD95" in report
    per_case = (tmp / "eval" / "metrics.csv").read_text()
    assert "IoU" in per_case and "Precision" in per_case
    # TensorBoard events of each stage in a folder named after the stage
    assert {"target_teacher", "source_teacher_0", "source_teacher_1", "joint_teacher", "student"} <= {
        p.name for p in (tmp / "eval").iterdir() if p.is_dir() and any(p.glob("events.out.tfevents.*"))
    }


def test_frozen_teachers_are_bit_identical_after_stages_2_and_3(trained):
    tmp, overrides = trained
    models = tmp / "models"
    joint = _load(models / "joint_teacher.pt")
    for k, name in enumerate(["teacher_target", "teacher_source_0", "teacher_source_1"]):
        teacher = _load(models / f"{name}.pt")
        for key, value in teacher.items():
            assert torch.equal(joint[f"teachers.{k}.{key}"], value), (name, key)
    # stage 3: the student trains; the joint teacher (teachers, fusion, decoder) does not move
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "train_student.json")],
        workflow_type="train",
        **{**overrides, "ckpt_dir": str(models), "output_dir": str(tmp / "eval_student")},
    )
    workflow.initialize()
    trainer = workflow.trainer
    joint_net = trainer.teachers["joint"]
    before = {k: v.clone() for k, v in joint_net.state_dict().items()}
    student_before = [p.clone() for p in trainer.network.parameters()]
    trainer.run()
    for key, value in joint_net.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert any(not torch.equal(a, b) for a, b in zip(student_before, trainer.network.parameters()))
    assert set(trainer.loss_terms) >= {"seg", "con", "sim", "feat_0"}


def test_every_id_given_to_train_json_reaches_every_stage(tmp_path):
    make_segmentation_demo(tmp_path / "data", seed=0, size=(24, 24, 24), n_target_train=3, n_target_test=1, n_source=2)
    given = {"seed": 5, "learning_rate": 0.02, "pixdim": [1.0, 1.0, 2.0], "train#random_transforms#1#prob": 0.25}
    parsers = stage_parsers(BUNDLE, _tiny(tmp_path, **given))
    names = ["target_teacher", "source_teacher_0", "source_teacher_1", "joint_teacher", "student", "evaluate"]
    assert list(parsers) == names
    for name, parser in parsers.items():
        assert parser.get_parsed_content("seed") == 5, name
        if name == "evaluate":  # reads the model's settings from the record the student stage writes (model.json)
            continue
        spacing = parser.get_parsed_content("validate#preprocessing").transforms[3].spacing_transform
        assert spacing.pixdim.tolist() == [1.0, 1.0, 2.0], name
        assert parser.get_parsed_content("train#random_transforms")[1].prob == 0.25, name
    for name in names[:3]:  # the teachers build their optimizer without loading anything
        assert parsers[name].get_parsed_content("optimizer").defaults["lr"] == 0.02, name
    assert [parsers[n].get_parsed_content("train#trainer#max_epochs") for n in names[:5]] == [1, 1, 1, 1, 1]
    sources = [parsers[f"source_teacher_{i}"].get_parsed_content("train#dataset#data") for i in (0, 1)]
    datalists = parsers["student"].get_parsed_content("datalists")
    assert sources == datalists["sources"] and sources[0] != sources[1]


def test_curriculum_and_temperature_follow_the_config(trained):
    tmp, overrides = trained
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "train_student.json")],
        workflow_type="train",
        **{**overrides, "max_epochs": 4, "curriculum_warmup": 1, "curriculum_ramp": 2, "temperature_start": 4.0,
           "temperature_decay": 0.5, "temperature_floor": 1.5, "con_weight_start": 0.1, "con_weight_max": 0.3,
           "con_weight_ramp": 2, "output_dir": str(tmp / "eval_schedule"), "ckpt_file": str(tmp / "schedule.pt")},
    )
    workflow.initialize()
    trainer = workflow.trainer
    seen = []
    trainer.add_event_handler(
        Events.EPOCH_STARTED,
        lambda e: seen.append((e.loss_terms["feat_0"].scale, e.loss_terms["con"].weight,
                               e.loss_terms["con"].loss.temperature, e.loss_terms["seg"].scale)),
    )
    trainer.run()
    # c(t) = min(1, max(0, (t - 1) / 2)); the con weight starts at its start value when the warm-up ends, reaching
    # its maximum con_weight_ramp epochs later (it is multiplied by c(t) = 0 during the warm-up anyway)
    expected = [(0.0, 0.0, 4.0, 1.0), (0.0, 0.1, 2.0, 1.0), (0.5, 0.2, 1.5, 1.0), (1.0, 0.3, 1.5, 1.0)]
    assert [v for row in seen for v in row] == pytest.approx([v for row in expected for v in row])


def test_bundle_checks(trained, tmp_path):
    tmp, overrides = trained
    check_metadata(BUNDLE)
    for config in (TARGET, TARGET + ["train_source_teacher.json"], TARGET + ["train_joint.json"], ["train.json"],
                   ["train.json", "train_student.json"], ["train.json", "evaluate.json"]):
        assert check_properties(BUNDLE, config, "train", overrides) == [], config
    infer = {"bundle_root": str(BUNDLE), "ckpt_dir": str(tmp / "models"), "student_width": 4,
             "dataset_dir": str(tmp / "data" / "target" / "imagesTs")}
    assert check_properties(BUNDLE, "inference.json", "infer", infer) == []
    check_net_in_out(BUNDLE, {"student_width": 4}, n=2)
    check_net_in_out(BUNDLE)  # MONAI's defaults (n=1), as the model zoo's CI runs it: metadata's 16*n must work
    check_export(BUNDLE, tmp / "models" / "model.pt", tmp_path, (1, 1, 16, 16, 16), {"student_width": 4})


def _oblique_nifti(path: Path) -> np.ndarray:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(20, 26, 14)).astype(np.float32)
    affine = np.diag([-0.9, 1.3, 2.1, 1.0])
    c, s = np.cos(0.3), np.sin(0.3)
    affine[:3, :3] = affine[:3, :3] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    affine[:3, 3] = [12.0, -40.0, 7.5]
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return affine


def test_inference_keeps_shape_and_affine_of_nifti_and_dicom(trained, tmp_path):
    tmp, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    affine = _oblique_nifti(images / "oblique.nii.gz")
    write_dicom_series(images / "series_a")
    out = tmp_path / "out"
    run(config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), ckpt_dir=str(tmp / "models"),
        student_width=4, dataset_dir=str(images), output_dir=str(out))
    mask = nib.load(str(out / "oblique_seg.nii.gz"))
    assert mask.shape == (20, 26, 14)
    np.testing.assert_allclose(mask.affine, affine, atol=1e-4)
    assert set(np.unique(mask.get_fdata())) <= {0.0, 1.0}
    dicom = LoadImage(image_only=True)(str(images / "series_a"))
    saved = [p for p in out.iterdir() if p.name.startswith("series_a")]
    assert len(saved) == 1
    dicom_mask = nib.load(str(saved[0]))
    assert dicom_mask.shape == tuple(dicom.shape)
    np.testing.assert_allclose(dicom_mask.affine, np.asarray(dicom.affine), atol=1e-3)


def test_inference_writes_a_dicom_seg_for_a_series_without_file_suffixes(trained, tmp_path):
    """``--output_format '["nifti", "dicom_seg"]'`` on a DICOM series whose files have no extension: a DICOM-SEG that
    references the series' instances, its frames equal to the NIfTI mask; ``dicom_seg`` alone refuses a NIfTI input
    before inference, naming it."""
    import highdicom as hd
    import pydicom

    tmp, _ = trained
    images = tmp_path / "images"
    images.mkdir()
    files = write_dicom_series(images / "series_b", suffix="", slices=12)
    out = tmp_path / "out"
    run(config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), ckpt_dir=str(tmp / "models"),
        student_width=4, dataset_dir=str(images), output_dir=str(out), output_format=["nifti", "dicom_seg"])
    mask = np.asarray(nib.load(str(next(out.glob("series_b*.nii.gz")))).get_fdata()).astype(np.uint8)
    sources = [pydicom.dcmread(f) for f in files]
    seg = hd.seg.segread(out / "series_b_seg.dcm")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    frames = seg.get_pixels_by_source_instance([s.SOPInstanceUID for s in sources], combine_segments=True)
    np.testing.assert_array_equal(frames.transpose(2, 1, 0), mask)

    _oblique_nifti(images / "case.nii.gz")
    with pytest.raises(Exception) as info:
        run(config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), ckpt_dir=str(tmp / "models"),
            student_width=4, dataset_dir=str(images), output_dir=str(tmp_path / "out2"), output_format="dicom_seg")
    assert "case.nii.gz is not DICOM" in " | ".join(str(e) for e in _chain(info.value))
    assert not (tmp_path / "out2").exists()


def test_inference_on_a_folder_of_two_series_segments_each_series(trained, tmp_path, monkeypatch):
    """A PACS export of a study (two series in one folder, files without extension): one mask and one DICOM-SEG per
    series, each in its series' geometry and referencing its own instances."""
    import pydicom
    from monai.transforms import LoadImage

    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))
    monkeypatch.setattr("tempfile.tempdir", None)
    tmp, _ = trained
    study = tmp_path / "study"
    series = {"1.2.3.4.100": write_dicom_series(study, suffix="", slices=12, series="1.2.3.4.100", prefix="A"),
              "1.2.3.4.200": write_dicom_series(study, suffix="", slices=8, series="1.2.3.4.200", prefix="B")}
    out = tmp_path / "out"
    run(config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), ckpt_dir=str(tmp / "models"),
        student_width=4, dataset_dir=str(study), output_dir=str(out), output_format=["nifti", "dicom_seg"])
    for uid, files in series.items():
        mask = nib.load(str(out / f"study_{uid.replace('.', '-')}_seg.nii.gz"))
        only_this = tmp_path / uid
        only_this.mkdir()
        for f in files:
            (only_this / f.name).write_bytes(f.read_bytes())
        image = LoadImage(image_only=True)(str(only_this))
        assert mask.shape == tuple(image.shape) and mask.shape[-1] == len(files)
        np.testing.assert_allclose(mask.affine, np.asarray(image.affine), atol=1e-3)
        seg = pydicom.dcmread(out / f"study_{uid.replace('.', '-')}_seg.dcm")
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == uid
        referenced = {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
        assert referenced == {pydicom.dcmread(f).SOPInstanceUID for f in files}


def test_missing_stage_inputs_name_the_stage(tmp_path):
    make_segmentation_demo(tmp_path / "data", seed=0, size=(24, 24, 24), n_target_train=2, n_target_test=1, n_source=1)
    overrides = _tiny(tmp_path)
    student_stage = [str(CONFIGS / "train.json"), str(CONFIGS / "train_student.json")]
    _expect_error("train_joint.json", run, config_file=student_stage, **overrides)
    joint_stage = [str(CONFIGS / f) for f in TARGET + ["train_joint.json"]]
    _expect_error("stage 'target_teacher'.*train_target_teacher.json", run, config_file=joint_stage, **overrides)
    assert not (tmp_path / "models" / "model.pt").exists()


def _expect_error(pattern: str, fn, *args, **kwargs) -> None:
    """``fn`` raises, and some exception of the chain (MONAI wraps config errors) matches ``pattern``."""
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    text = " | ".join(str(e) for e in _chain(info.value))
    assert re.search(pattern, text), text


def _chain(error: BaseException):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


@pytest.mark.parametrize("text,expected", [("false", False), ("0", False), ("true", True), ("True", True)])
def test_amp_from_the_command_line(tmp_path, text, expected):
    """``--amp false`` (a string on the command line) turns mixed precision off in every stage; ``--amp true`` turns
    it on in every stage on CUDA and is ignored on the CPU (``medkd_ext.engines.acceleration``)."""
    make_segmentation_demo(tmp_path / "data", seed=0, size=(24, 24, 24), n_target_train=2, n_target_test=1, n_source=1)
    for device, on in (("cpu", False), ("cuda", expected)):  # the CUDA config is parsed, not run
        parsers = stage_parsers(BUNDLE, {**_tiny(tmp_path, amp=text), "device": f"$torch.device('{device}')"})
        for name, parser in parsers.items():
            if name == "evaluate":  # its spatial_dims is read from the trained model's record: not here
                continue
            assert parser.get_parsed_content("use_amp") is on, (device, name)
            assert parser.get_parsed_content("amp_kwargs") == ({"dtype": torch.float16} if on else {}), name
            assert parser.get_parsed_content("non_blocking") is (device == "cuda"), name
    for name, parser in parsers.items():
        assert parser["validate"]["evaluator"]["amp"] == "@use_amp", name
        if name != "evaluate":
            assert parser["train"]["trainer"]["amp"] == "@use_amp", name
    student = stage_parsers(BUNDLE, _tiny(tmp_path, amp="fast"))["student"]
    _expect_error("amp must be true or false, got 'fast'", student.get_parsed_content, "use_amp")


def test_msd_test_list_without_labels(tmp_path):
    """MSD's ``"test"`` list holds image paths without labels: training runs, evaluation leaves them out with a note,
    and evaluating on it alone says that it has no labelled case."""
    make_segmentation_demo(tmp_path / "data", seed=0, size=(24, 24, 24), n_target_train=3, n_target_test=2, n_source=2)
    listing_path = tmp_path / "data" / "target" / "dataset.json"
    listing = json.loads(listing_path.read_text())
    listing["test"] = [case["image"] for case in listing["test"]]  # MSD: "test": ["./imagesTs/x.nii.gz", ...]
    listing_path.write_text(json.dumps(listing))
    overrides = _tiny(tmp_path)
    parsers = stage_parsers(BUNDLE, overrides)
    datalists = parsers["student"].get_parsed_content("datalists")
    assert datalists["target_test"] == [] and len(datalists["target_test_unlabelled"]) == 2
    assert "label" not in datalists["target_test_unlabelled"][0]
    workflow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), workflow_type="train", **overrides)
    workflow.parser.parse()
    assert workflow.parser.get_parsed_content("stages")[-1].enabled is False  # no labelled test case: no evaluation
    run(config_file=str(CONFIGS / "train.json"), **overrides)
    assert (tmp_path / "models" / "model.pt").is_file() and not (tmp_path / "eval" / "metrics.csv").exists()
    evaluate = [str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")]
    _expect_error(r"the 'test' list of .*dataset.json has no case to evaluate", run, config_file=evaluate, **overrides)


def test_tracking_records_every_stage(tmp_path):
    """``--tracking mlflow`` given to train.json reaches every stage: one MLflow run per stage, named after it."""
    import mlflow

    make_segmentation_demo(tmp_path / "data", seed=0, size=(24, 24, 24), n_target_train=3, n_target_test=1, n_source=2)
    # MLflow 3 refuses MONAI's default file store: the bundles default to an SQLite store under output_dir
    run(config_file=str(CONFIGS / "train.json"), tracking="mlflow", **_tiny(tmp_path))
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'eval' / 'mlruns.db'}")
    runs = mlflow.search_runs(experiment_names=["monai_experiment"])
    names = sorted(runs["tags.mlflow.runName"])
    assert names == sorted(["target_teacher", "source_teacher_0", "source_teacher_1", "joint_teacher", "student"])
    assert runs["metrics.val_mean_dice"].notna().all()


def test_evaluation_and_inference_read_the_trained_settings(trained, tmp_path):
    """The student was trained with width 4, 24^3 patches and the test's own data: evaluate.json and inference.json
    take them from models/model.json without being told, and refuse a width that disagrees."""
    tmp, _ = trained
    record = json.loads((tmp / "models" / "model.json").read_text())
    assert (record["student_width"], record["roi_size"]) == (4, [24, 24, 24])
    assert record["target_datalist"] == str(tmp / "data" / "target" / "dataset.json")
    plain = {"bundle_root": str(BUNDLE), "ckpt_dir": str(tmp / "models"), "output_dir": str(tmp_path / "ev")}
    run(config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], **plain)
    report = (tmp_path / "ev" / "metrics.csv").read_text()
    assert str(tmp / "data" / "target") in report  # the trained run's test cases, not the demo's
    _expect_error(
        r"student_width: trained with 4, this run has 8",
        run, config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")], student_width=8, **plain,
    )
    out = tmp_path / "masks"
    run(config_file=str(CONFIGS / "inference.json"), bundle_root=str(BUNDLE), ckpt_dir=str(tmp / "models"),
        dataset_dir=str(tmp / "data" / "target" / "imagesTs"), output_dir=str(out))
    assert len(list(out.glob("*_seg.nii.gz"))) == 2


def test_your_data_as_the_readme_says(tmp_path):
    """The README's "Your data" commands, as written, on MSD-layout datasets (a target whose "test" list mixes MSD's
    unlabelled image paths with labelled cases, two sources), with tiny epochs, width 4 and spacing 1.5 x 1.5 x 2 mm:
    evaluation scores the labelled test cases only, evaluation and inference read the trained settings, and
    inference's masks equal the evaluation's for the same cases."""
    data = tmp_path / "data"
    make_segmentation_demo(
        tmp_path / "generated", seed=0, size=(40, 40, 32), n_target_train=3, n_target_test=4, n_source=2
    )
    data.mkdir()
    for generated, name in (("target", "target"), ("source_1", "siteA"), ("source_2", "siteB")):
        shutil.move(tmp_path / "generated" / generated, data / name)
    listing_path = data / "target" / "dataset.json"
    listing = json.loads(listing_path.read_text())
    labelled, unlabelled = listing["test"][:2], [case["image"] for case in listing["test"][2:]]
    listing["test"] = [unlabelled[0], *labelled, unlabelled[1]]
    listing_path.write_text(json.dumps(listing))
    extra = (
        "--target_teacher_max_epochs 1 --source_teacher_max_epochs 1 --joint_max_epochs 1 --max_epochs 1 "
        "--val_interval 1 --teacher_width 4 --student_width 4 --max_tokens 64 --pixdim \"[1.5, 1.5, 2.0]\""
    )
    run_readme_commands(readme_commands(BUNDLE, "## Your data"), data, extra={0: extra})
    record = json.loads((data / "run" / "models" / "model.json").read_text())
    assert (record["student_width"], record["pixdim"]) == (4, [1.5, 1.5, 2.0])
    assert record["target_datalist"] == str(listing_path)
    report = (data / "run" / "eval" / "metrics.csv").read_text()
    evaluated = sorted((data / "run" / "eval" / "masks").glob("*_seg.nii.gz"))
    inferred = sorted((data / "run" / "inference").glob("*_seg.nii.gz"))
    names = sorted(Path(c["image"]).name.replace(".nii.gz", "_seg.nii.gz") for c in labelled)
    assert [p.name for p in evaluated] == names
    assert len(inferred) == 4 and all(Path(c["image"]).name in report for c in labelled)
    for mask in evaluated:
        ours, theirs = nib.load(mask), nib.load(data / "run" / "inference" / mask.name)
        image = nib.load(data / "target" / "imagesTs" / mask.name.replace("_seg.nii.gz", ".nii.gz"))
        assert ours.shape == theirs.shape == image.shape
        np.testing.assert_allclose(ours.affine, theirs.affine, atol=1e-5)
        assert 0 < np.asarray(ours.dataobj).mean() < 1  # both classes: the comparison is not of empty masks
        np.testing.assert_array_equal(np.asarray(ours.dataobj), np.asarray(theirs.dataobj))


# the paper's settings with only sizes reduced (issue 10) -------------------------------------------------------------


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("jt_paper_data")
    make_segmentation_demo(root, seed=0, size=(16, 16, 16), n_target_train=2, n_target_test=1, n_source=2)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("teacher_arch", ["unet", "tresunet"])
@pytest.mark.parametrize("student_arch", ["unet", "tresunet"])
def test_paper_json_runs_every_stage_for_every_pairing(small_demo, tmp_path, teacher_arch, student_arch):
    """``paper.json`` end to end (every stage, one epoch each) with only sizes reduced: widths, epochs, patch size
    (the smallest that ``check_patch_size`` names for the pairing) and token budget; teachers twice the student's
    width, as ``paper.json``'s (at equal widths the deepest levels match by chance). TResUNet teachers with a UNet
    student is the paper's own pairing, which crashed at stage 2 before the joint teacher took its fused widths from
    ``joint_fused_channels``."""
    from medkd_ext.engines.joint_teacher import check_patch_size
    from medkd_ext.networks import DomainDiscriminator, segmentation_network

    def net(arch):
        return segmentation_network(arch=arch, spatial_dims=3, in_channels=1, out_channels=2, width=4)

    with pytest.raises(ValueError, match=r"The smallest cubic roi_size that works with these networks is \[(\d+)"):
        check_patch_size([8, 8, 8], net(teacher_arch), net(student_arch), DomainDiscriminator(1, 3, [32, 16],
                                                                                              norm="instance"))
    smallest = {("unet", "unet"): 24, ("unet", "tresunet"): 32}.get((teacher_arch, student_arch), 80)
    overrides = {
        "bundle_root": str(BUNDLE), "dataset_dir": str(small_demo), "ckpt_dir": str(tmp_path / "models"),
        "output_dir": str(tmp_path / "eval"), "device": "cpu", "teacher_arch": teacher_arch,
        "student_arch": student_arch, "teacher_width": 8, "student_width": 4, "roi_size": [smallest] * 3,
        "max_tokens": 64, "target_teacher_max_epochs": 1, "source_teacher_max_epochs": 1, "joint_max_epochs": 1,
        "max_epochs": 1,
    }
    run(config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "paper.json")], **overrides)
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "eval" / "metrics.csv").is_file()
    settings = json.loads((tmp_path / "models" / "model.json").read_text())
    assert (settings["student_arch"], settings["pixdim"]) == (student_arch, [1.0, 1.0, 1.0])  # paper.json's spacing


def test_a_patch_too_small_for_the_domain_discriminator_is_refused_before_training(small_demo, tmp_path):
    """TResUNet teachers at 64^3: the discriminator's stride-16 level is 4^3, reduced to one voxel; refused before
    the first stage, naming the smallest patch that works, instead of failing in stage 1b after 1a trained."""
    overrides = {**_tiny(tmp_path), "dataset_dir": str(small_demo), "teacher_arch": "tresunet",
                 "roi_size": [64, 64, 64]}
    _expect_error(r"domain discriminator .*'encoder.3' \(stride 16.*smallest cubic roi_size .* is \[80, 80, 80\]",
                  run, config_file=str(CONFIGS / "train.json"), **overrides)
    assert not (tmp_path / "models" / "teacher_target.pt").exists()


@pytest.mark.slow
def test_exported_bundle_runs_without_medkd_ext(trained, tmp_path):
    """scripts/export_bundle.py: the unzipped copy of the student segments a NIfTI volume and a DICOM series whose
    files have no extension as the repository does (same masks, in the input's shape and affine) without medkd_ext."""
    tmp, _ = trained
    inputs = tmp_path / "clinic_images"
    inputs.mkdir()
    shutil.copy(sorted((tmp / "data" / "target" / "imagesTs").glob("*.nii.gz"))[0], inputs / "case.nii.gz")
    write_dicom_series(inputs / "series", suffix="", slices=12)
    check_exported_bundle("joint_teacher_seg", tmp / "models" / "model.pt", inputs, tmp_path)
