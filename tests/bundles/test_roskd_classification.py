"""Bundle tests of bundles/roskd_classification: smoke runs of each stage on a tiny demo, the model-zoo checks,
the behaviours of issue 4 and the bad-input errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow

from medkd_ext.data import make_classification_demo, overlapping_subsets
from medkd_ext.engines import run_stage
from tests.bundles.bundle_checks import (
    STUDY_TERMS,
    check_export,
    check_exported_bundle,
    check_metadata,
    check_net_in_out,
    check_properties,
    check_your_data_classification,
    classification_inputs,
    stage_parsers,
    trained_terms,
)

BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "roskd_classification"
CONFIGS = BUNDLE / "configs"
TEACHER = ["train.json", "train_teacher.json"]


def _overrides(root: Path, dataset: Path, **extra) -> dict:
    base = {
        "bundle_root": str(BUNDLE),
        "dataset_dir": str(dataset),
        "ckpt_dir": str(root / "models"),
        "output_dir": str(root / "eval"),
        "device": "cpu",
        "batch_size": 8,
    }
    return {**base, **extra}


def _workflow(files, overrides, workflow_type="train") -> ConfigWorkflow:
    files = [files] if isinstance(files, str) else files
    workflow = ConfigWorkflow(
        config_file=[str(CONFIGS / f) for f in files],
        meta_file=str(CONFIGS / "metadata.json"),
        workflow_type=workflow_type,
        **overrides,
    )
    workflow.initialize()
    return workflow


def _messages(error: BaseException) -> str:
    """The messages of an exception and its causes (MONAI wraps errors raised while evaluating a config)."""
    texts = []
    while error is not None:
        texts.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(texts)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("roskd_demo")
    make_classification_demo(root / "mc", seed=0, n_cases=40, n_test=8, size=32)
    make_classification_demo(root / "ml", seed=0, n_cases=40, n_test=8, size=32, multi_label=True)
    return root


@pytest.fixture(scope="module")
def trained(demo, tmp_path_factory) -> Path:
    """train.json end to end (teachers then student) with one teacher epoch and two student epochs."""
    root = tmp_path_factory.mktemp("roskd_run")
    overrides = _overrides(root, demo / "mc", max_epochs=2, teacher_max_epochs=1, warmup_epochs=1)
    run_stage(CONFIGS / "train.json", overrides=overrides)
    return root


@pytest.mark.slow
def test_train_writes_teachers_smooth_model_and_report(trained):
    models = trained / "models"
    assert {p.name for p in models.glob("*.pt")} == {f"teacher_{i}.pt" for i in range(5)} | {"model.pt"}
    report = json.loads((trained / "eval" / "metrics.json").read_text())
    assert report["num_samples"] == 8 and set(report["per_class"]) == {"disc", "square", "ring", "cross"}
    assert {"precision_macro", "recall_macro", "f1_macro", "auc_macro"} <= set(report)
    assert (trained / "eval" / "metrics.md").is_file() and (trained / "eval" / "metrics.csv").is_file()


@pytest.mark.slow
def test_evaluate_robustness_and_inference(trained, demo, tmp_path):
    overrides = _overrides(trained, demo / "mc", output_dir=str(tmp_path / "ev"))
    run_stage([CONFIGS / "train.json", CONFIGS / "evaluate.json"], overrides=overrides)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 8

    overrides["robustness#pgd_steps"] = 2
    run_stage([CONFIGS / "train.json", CONFIGS / "evaluate.json", CONFIGS / "robustness.json"], overrides=overrides)
    result = json.loads((tmp_path / "ev" / "robustness.json").read_text())
    assert result["radius"] == pytest.approx(128 / 255)
    assert {"clean", "fgsm", "pgd"} <= set(result)
    assert result["perturbation_l2"]["pgd"]["max"] <= 128 / 255 + 1e-4

    image = sorted((demo / "mc" / "images").glob("*.png"))[0]
    for source, count in ((str(demo / "mc" / "images"), 48), (str(image), 1)):
        infer = {**_overrides(trained, demo / "mc", output_dir=str(tmp_path / "inf")), "input_dir": source}
        run_stage(CONFIGS / "inference.json", overrides=infer, workflow_type="infer")
        entries = json.loads((tmp_path / "inf" / "probabilities.json").read_text())
        assert len(entries) == count
        probs = entries[0]["probabilities"]
        assert set(probs) == {"disc", "square", "ring", "cross"} and sum(probs.values()) == pytest.approx(1, abs=1e-5)
    assert entries[0]["image"] == str(image)


@pytest.mark.slow
def test_bundle_checks(trained, demo, tmp_path):
    check_metadata(BUNDLE)
    overrides = _overrides(trained, demo / "mc")
    assert check_properties(BUNDLE, TEACHER, "train", overrides) == []
    assert check_properties(BUNDLE, "train.json", "train", overrides) == []
    assert check_properties(BUNDLE, ["train.json", "train_student.json"], "train", overrides) == []
    assert check_properties(BUNDLE, ["train.json", "evaluate.json"], "train", overrides) == []
    assert check_properties(BUNDLE, "inference.json", "infer", overrides) == []
    check_net_in_out(BUNDLE, {"bundle_root": str(BUNDLE)})
    check_export(BUNDLE, trained / "models" / "model.pt", tmp_path, (2, 1, 64, 64), {"bundle_root": str(BUNDLE)})


@pytest.mark.parametrize("mode, changed", [("symmetric_exclusive", 1.0), ("symmetric", 0.75)])
def test_noise_rate_is_the_fraction_of_labels_changed(demo, tmp_path, mode, changed):
    """With the default ``noise_mode`` a corrupted label always changes (one of the other C - 1 classes), so
    ``noise_rate`` is the fraction changed; ``symmetric`` (the KD study's) may redraw the same class: about (C-1)/C."""
    given = {} if mode == "symmetric_exclusive" else {"noise_mode": mode}  # the default, or the KD study's
    parser = _workflow("train.json", _overrides(tmp_path, demo / "mc", noise_rate=1.0, **given)).parser
    assert parser.get_parsed_content("noise_mode") == mode
    train = parser.get_parsed_content("splits")["train"]
    fraction = sum(d["label"] != d["clean_label"] for d in train) / len(train)
    assert fraction == pytest.approx(changed, abs=0.0 if changed == 1.0 else 0.2)


def test_teachers_see_exactly_their_subsets(demo, tmp_path):
    expected = None
    for index in (0, 3):
        workflow = _workflow(TEACHER, _overrides(tmp_path, demo / "mc", teacher_index=index))
        parser = workflow.parser
        train = parser.get_parsed_content("splits")["train"]
        if expected is None:
            expected = overlapping_subsets(train, 5, 0.4, seed=0)
        data = parser.get_parsed_content("train#dataset").data
        assert [d["image"] for d in data] == [d["image"] for d in expected[index]]
        assert [d["label"] for d in data] == [d["label"] for d in expected[index]]  # the noisy labels of the subset
        assert any(d["label"] != d["clean_label"] for d in data)
        assert parser.get_parsed_content("stage_ckpt").endswith(f"teacher_{index}.pt")
        assert type(parser.get_parsed_content("network")).__name__ == ["ResNet", "ResNet", "ResNet", "MobileNetV2",
                                                                      "DenseNet"][index]
        # noise only on the training split: validation labels are the datalist's
        assert all("clean_label" in d for d in train)
        assert all("clean_label" not in d for d in parser.get_parsed_content("splits")["validation"])


def test_baselines_ii_and_iii_distil_teachers_trained_on_the_whole_training_split(demo, tmp_path):
    """The paper's definitions: RoS-KD and Baseline V distil the teachers of the k overlapping subsets, Baselines II
    and III ("conventional ensemble KD") teachers trained on the whole training split, kept apart in ckpt_dir;
    Baseline I trains none."""
    models = tmp_path / "models"
    sizes = {}
    for method in ("roskd", "roskd_no_smoothing", "hinton_kd", "uniform_mkd"):
        parsers = stage_parsers(BUNDLE, _overrides(tmp_path, demo / "mc", method=method))
        train = parsers["student"].get_parsed_content("splits")["train"]
        trained = [name for name in parsers if name.startswith("teacher_")]
        # Baseline II distils (and trains) its one teacher, hinton_teacher (4); the others all five
        assert trained == (["teacher_4"] if method == "hinton_kd" else [f"teacher_{i}" for i in range(5)]), method
        index = trained[-1][len("teacher_"):]
        teacher = parsers[trained[-1]]
        sizes[method] = len(teacher.get_parsed_content("train#dataset#data"))
        full = method in ("hinton_kd", "uniform_mkd")
        expected = models / (f"teacher_full_{index}.pt" if full else f"teacher_{index}.pt")
        assert teacher.get_parsed_content("stage_ckpt") == str(expected)
        assert parsers["student"].get_parsed_content("teacher_settings")["teacher_data"] == ("full" if full else
                                                                                            "subsets")
        assert (sizes[method] == len(train)) == full, method
    assert sizes["roskd"] == sizes["roskd_no_smoothing"] < sizes["uniform_mkd"] == sizes["hinton_kd"]
    parser = stage_parsers(BUNDLE, _overrides(tmp_path, demo / "mc", method="student_only"))["student"]
    assert not any(s.enabled for s in parser.get_parsed_content("stages")[0])  # no teacher for the student alone


def test_every_id_given_to_train_json_reaches_every_stage(demo, tmp_path):
    """No forwarding list: top-level and nested ids given to train.json are in every stage's config (weight_decay and
    lr_milestones once reached teacher 0 only, and a nested teacher_defs id reached no teacher)."""
    given = {"weight_decay": 0.01, "learning_rate": 0.005, "seed": 3, "teacher_defs#0#widen_factor": 0.125}
    parsers = stage_parsers(BUNDLE, _overrides(tmp_path, demo / "mc", teacher_max_epochs=5, **given))
    assert list(parsers) == [f"teacher_{i}" for i in range(5)] + ["student", "evaluate"]
    for name, parser in parsers.items():
        assert parser.get_parsed_content("seed") == 3, name
        assert parser.get_parsed_content("teacher_defs#0#widen_factor") == 0.125, name
        if name != "evaluate":
            optimizer = parser.get_parsed_content("optimizer")
            assert (optimizer.defaults["weight_decay"], optimizer.defaults["lr"]) == (0.01, 0.005), name
    # each teacher trains its own network, the first one narrowed by the nested id
    assert parsers["teacher_0"].get_parsed_content("network").conv1.out_channels == 8
    models = tmp_path / "models"
    assert [parsers[f"teacher_{i}"].get_parsed_content("stage_ckpt") for i in (0, 4)] == [
        str(models / "teacher_0.pt"),
        str(models / "teacher_4.pt"),
    ]
    # the default milestones follow the epochs of the stage: the teachers' own, the student's own
    assert list(parsers["teacher_2"].get_parsed_content("lr_scheduler").milestones) == [2, 4]
    assert list(parsers["student"].get_parsed_content("lr_scheduler").milestones) == [4, 6]
    # an id given explicitly wins everywhere
    parsers = stage_parsers(BUNDLE, _overrides(tmp_path, demo / "mc", lr_milestones=[1]))
    trained = [p for name, p in parsers.items() if name != "evaluate"]
    assert all(list(p.get_parsed_content("lr_scheduler").milestones) == [1] for p in trained)


def test_train_teachers_false_from_the_command_line_skips_the_teacher_stages(demo, tmp_path):
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        **_overrides(tmp_path, demo / "mc", train_teachers="false"),
    )
    workflow.parser.parse()
    teachers, distill_init, student, _ = workflow.parser.get_parsed_content("stages")
    assert [s.enabled for s in teachers] == [False] * 5 and student.enabled and not distill_init.enabled


@pytest.mark.parametrize("spatial_dims,size", [(2, [64, 64]), (3, [32, 32, 32])])
def test_image_size_defaults_agree_across_configs(spatial_dims, size):
    for name in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / name))
        parser["spatial_dims"] = spatial_dims
        resize = [t for t in parser.get_parsed_content("validate#preprocessing" if name == "train.json" else
                                                       "preprocessing").transforms if type(t).__name__ == "Resized"]
        assert list(resize[0].resizer.spatial_size) == size, name
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [64, 64]


@pytest.mark.parametrize(
    "method,teachers,weighting,smoothing",
    [
        ("student_only", [], None, False),
        ("hinton_kd", ["4"], None, False),
        ("uniform_mkd", ["0", "1", "2", "3", "4"], "uniform", False),
        ("roskd_no_smoothing", ["0", "1", "2", "3", "4"], "exponential", False),
        ("roskd", ["0", "1", "2", "3", "4"], "exponential", True),
    ],
)
def test_one_key_selects_the_method(method, teachers, weighting, smoothing, demo, tmp_path):
    from medkd_ext.handlers import SmoothAveragingHandler
    from medkd_ext.networks import save_state_dict

    overrides = _overrides(tmp_path, demo / "mc", method=method)
    workflow = _workflow("train.json", overrides)
    defs = workflow.parser.get_parsed_content("teacher_defs")
    for network, path in zip(defs, workflow.parser.get_parsed_content("teacher_ckpts")):  # the method's teacher set
        save_state_dict(network, path)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert sorted(trainer.teachers) == teachers
    kd = trainer.loss_terms.get("kd")
    assert getattr(kd.loss, "weighting", None) == weighting if kd else weighting is None
    handlers = workflow.parser.get_parsed_content("train#handlers")
    assert any(isinstance(h, SmoothAveragingHandler) for h in handlers) == smoothing


@pytest.mark.slow
def test_multi_label_runs_with_one_override(demo, tmp_path):
    overrides = _overrides(tmp_path, demo / "ml", multi_label="true", method="student_only", train_teachers=False)
    overrides["max_epochs"] = 1
    run_stage(CONFIGS / "train.json", overrides=overrides)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["task"] == "multi-label" and "exact_match" in report
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state["fc.weight"].shape[0] == 4


def _write_datalist(root: Path, source: Path, edit) -> Path:
    content = json.loads((source / "dataset.json").read_text())
    for split in ("training", "test"):
        for item in content[split]:
            item["image"] = str(source / item["image"])
    edit(content)
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.json").write_text(json.dumps(content))
    return root


@pytest.mark.parametrize(
    "what,config,extra,match",
    [
        ("label_out_of_range", TEACHER, {}, r"label 7, outside the classes \[0, 4\)"),
        ("multi_hot_length", TEACHER, {"multi_label": True}, "multi-hot list of num_classes=4"),
        ("k_too_large", TEACHER, {"num_teachers": 5, "val_fraction": 0.9}, "larger than the training"),
        ("teacher_list_length", TEACHER, {"num_teachers": 3}, r"lists 5 networks but num_teachers"),
        ("missing_teacher", ["train.json", "train_student.json"], {}, r"written by stage 'teacher_0'"),
    ],
)
def test_bad_input_errors(what, config, extra, match, demo, tmp_path):
    source = demo / ("ml" if extra.get("multi_label") else "mc")

    def edit(content):
        if what == "label_out_of_range":
            content["training"][5]["label"] = 7
        if what == "multi_hot_length":
            content["training"][2]["label"] = [0, 1]

    dataset = _write_datalist(tmp_path / "data", source, edit)
    overrides = _overrides(tmp_path, dataset, max_epochs=1, **extra)
    with pytest.raises(Exception) as info:
        workflow = _workflow(config, overrides)
        workflow.parser.get_parsed_content("train#trainer")
    assert re.search(match, _messages(info.value)), _messages(info.value)
    assert not (tmp_path / "models" / "model.pt").exists()


def test_paper_overlay_restores_the_paper_settings(demo, tmp_path):
    overrides = _overrides(tmp_path, demo / "mc")  # RoS-KD (the default method) trains every teacher
    parsers = stage_parsers(BUNDLE, overrides, ["train.json", "paper.json"])
    parser = parsers["student"]
    names = [type(n).__name__ for n in parser.get_parsed_content("teacher_defs")]
    assert names == ["ResNet", "ResNet", "ResNet", "MobileNetV2", "DenseNet121"]
    for name in ("teacher_0", "teacher_4", "student"):  # the overlay given to train.json reaches every stage
        optimizer = parsers[name].get_parsed_content("optimizer")
        assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["lr"] == 0.1
        assert optimizer.defaults["momentum"] == 0.9 and optimizer.defaults["weight_decay"] == 2e-4
        assert parsers[name].get_parsed_content("lr_milestones") == [25, 40]
    assert parsers["teacher_4"].get_parsed_content("train#trainer#max_epochs") == 50
    assert (parser["temperature"], parser["alpha"], parser["warmup_epochs"], parser["max_epochs"]) == (0.5, 0.9, 10, 50)
    assert parser.get_parsed_content("noise_rate") == 0.0  # the paper's labels are noisy already: none is added
    assert parser.get_parsed_content("network_def").conv1.stride == (2, 2)  # the standard ResNet stem
    assert parsers["teacher_2"].get_parsed_content("network_def").conv1.stride == (2, 2)


@pytest.mark.slow
def test_paper_json_runs_end_to_end_with_only_sizes_reduced(demo, tmp_path):
    """``paper.json`` (its five full-size teachers, SGD, smoothing, the standard ResNet stem) for one epoch per stage
    at 32x32, then evaluation and inference with no setting repeated: the stem stride comes from ``model.json``."""
    overrides = _overrides(tmp_path, demo / "mc", image_size=32, max_epochs=1, teacher_max_epochs=1, warmup_epochs=0,
                           lr_milestones=[1, 1], batch_size=64)  # the paper's batch: one step per epoch here
    run_stage([CONFIGS / "train.json", CONFIGS / "paper.json"], overrides=overrides)
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    assert record["conv1_t_stride"] == 2 and record["image_size"] == 32
    assert json.loads((tmp_path / "models" / "teacher_0.json").read_text())["noise_rate"] == 0.0
    infer = {"bundle_root": str(BUNDLE), "ckpt_dir": str(tmp_path / "models"), "output_dir": str(tmp_path / "out"),
             "dataset_dir": str(demo / "mc")}
    workflow = _workflow("inference.json", infer, workflow_type="infer")
    assert workflow.parser.get_parsed_content("network_def").conv1.stride == (2, 2)


@pytest.mark.parametrize("text", ["false", "FALSE", "0", "no"])
def test_booleans_from_the_command_line(demo, tmp_path, monkeypatch, text):
    """``false`` from the command line (a string) turns multi_label, train_teachers and precise_bn off."""
    import medkd_ext.engines.roskd as roskd

    overrides = _overrides(
        tmp_path, demo / "mc", multi_label=text, train_teachers=text, precise_bn=text, method="student_only"
    )
    workflow = _workflow(["train.json", "train_student.json"], overrides)
    parser = workflow.parser
    assert isinstance(parser.get_parsed_content("loss"), torch.nn.CrossEntropyLoss)  # multi_label off
    assert not any(s.enabled for s in parser.get_parsed_content("stages")[0])  # train_teachers off

    def no_recomputation(*args, **kwargs):
        raise AssertionError("precise_bn is off: BatchNorm statistics must not be recomputed")

    monkeypatch.setattr(roskd, "recompute_batchnorm", no_recomputation)
    parser.get_parsed_content("save_final")  # student_only keeps the final weights, written without recomputation
    assert (tmp_path / "models" / "model.pt").is_file()
    parser = _workflow(["train.json", "train_student.json"], {**overrides, "precise_bn": "true"}).parser
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("save_final")
    assert "must not be recomputed" in _messages(info.value)


@pytest.mark.slow
def test_multi_label_csv_with_class_columns(demo, tmp_path):
    """A multi-label CSV (image, split, patient and one 0/1 column per class) trains and is reported by class name."""
    import csv

    content = json.loads((demo / "ml" / "dataset.json").read_text())
    names = ["effusion", "nodule", "mass", "edema"]
    table = tmp_path / "data" / "cases.csv"
    table.parent.mkdir()
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "split", "patient", *names])
        for split in ("training", "test"):
            for i, item in enumerate(content[split]):
                image = str(demo / "ml" / item["image"])
                writer.writerow([image, split, item.get("patient", f"{split}{i}"), *item["label"]])
    overrides = _overrides(
        tmp_path, tmp_path / "data", datalist=str(table), class_columns=names, multi_label="true",
        method="student_only", train_teachers="false", max_epochs=1,
    )
    run_stage(CONFIGS / "train.json", overrides=overrides)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["task"] == "multi-label" and report["num_samples"] == 8 and set(report["per_class"]) == set(names)


def test_rgb_image_into_a_one_channel_network_names_the_file(demo, tmp_path):
    from PIL import Image

    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8), mode="RGB").save(rgb)
    preprocessing = _workflow("train.json", _overrides(tmp_path, demo / "mc")).parser.get_parsed_content(
        "validate#preprocessing"
    )
    with pytest.raises(Exception) as info:
        preprocessing({"image": str(rgb), "label": 0})
    assert str(rgb) in _messages(info.value) and "3 channels but 1 are expected" in _messages(info.value)


@pytest.mark.slow
def test_evaluation_reads_the_trained_settings_and_data(trained, tmp_path):
    """evaluate.json given no data and no settings scores the trained run's test split (8 cases, not the demo's
    100) with the recorded image size and class names; a class count that disagrees with the record is refused."""
    record = json.loads((trained / "models" / "model.json").read_text())
    assert record["num_classes"] == 4 and record["class_names"] == ["disc", "square", "ring", "cross"]
    plain = {"bundle_root": str(BUNDLE), "ckpt_dir": str(trained / "models"), "output_dir": str(tmp_path / "ev")}
    run_stage([CONFIGS / "train.json", CONFIGS / "evaluate.json"], overrides=plain)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 8
    with pytest.raises(Exception) as info:
        run_stage([CONFIGS / "train.json", CONFIGS / "evaluate.json"], overrides={**plain, "image_size": 32})
    assert "image_size: trained with 64, this run has 32" in _messages(info.value)


@pytest.mark.slow
def test_your_data_as_the_readme_says(tmp_path):
    """The README's "Your data" commands, as written, on a multi-label CSV with patients and a test split, at image
    size 40: evaluation and inference read the trained settings, and their probabilities agree image by image."""
    check_your_data_classification(
        BUNDLE, tmp_path,
        "--max_epochs 1 --teacher_max_epochs 1 --warmup_epochs 1 --batch_size 8 --image_size 40",
        trained={"image_size": 40, "intensity_range": [0, 255]},
    )


@pytest.mark.slow
def test_a_stage_alone_checks_the_teachers_record(trained, demo):
    """Every teacher stage records its input settings and data beside its weights; the student stage run alone with
    another image size is refused before training, naming the teacher's value and this run's."""
    record = json.loads((trained / "models" / "teacher_0.json").read_text())
    assert record["image_size"] == 64 and record["datalist"] == str(demo / "mc" / "dataset.json")
    before = (trained / "models" / "model.pt").stat().st_mtime_ns
    with pytest.raises(Exception) as info:
        run_stage(
            [CONFIGS / "train.json", CONFIGS / "train_student.json"],
            overrides=_overrides(trained, demo / "mc", image_size=32, max_epochs=1),
        )
    message = _messages(info.value)
    assert "teacher_0.pt was trained with other settings" in message
    assert "image_size: trained with 64, this run has 32" in message
    assert (trained / "models" / "model.pt").stat().st_mtime_ns == before


@pytest.mark.slow
def test_exported_bundle_runs_without_medkd_ext(trained, demo, tmp_path):
    """scripts/export_bundle.py: the unzipped copy gives the repository's probabilities on PNG, 2D NIfTI and
    single-frame DICOM files (with and without extension) where medkd_ext cannot be imported."""
    images = sorted((demo / "mc" / "images").glob("*.png"))[:2]
    inputs = classification_inputs(tmp_path / "clinic_images", images)
    check_exported_bundle("roskd_classification", trained / "models" / "model.pt", inputs, tmp_path)


@pytest.fixture(scope="module")
def full_teachers(demo, tmp_path_factory) -> Path:
    """The teachers of the single-teacher mode (trained on the whole training split, one epoch), trained once."""
    root = tmp_path_factory.mktemp("roskd_full_teachers")
    overrides = _overrides(root, demo / "mc", method="hinton_kd", max_epochs=1, teacher_max_epochs=1)
    run_stage(CONFIGS / "train.json", overrides)
    return root / "models"



@pytest.mark.slow
@pytest.mark.parametrize("method", list(STUDY_TERMS))
def test_each_kd_study_method_trains_the_student_from_one_key(method, full_teachers, demo, tmp_path):
    """--distill_method <m> runs the single-teacher mode (the DenseNet teacher hinton_teacher, trained on the whole
    training split; none for one and dml) with the method's trainer and loss terms; the checkpoint is the plain
    ResNet-18 that evaluate.json scores, and its record names the method."""
    import shutil

    from medkd_ext.engines import stage_workflow

    shutil.copytree(full_teachers, tmp_path / "models", ignore=shutil.ignore_patterns("model.*", "state"))
    values = _overrides(tmp_path, demo / "mc", distill_method=method, max_epochs=1, train_teachers=False)
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update(values)
    base = parser.get()
    entries = parser.get_parsed_content("stages")
    stages = [s for entry in entries for s in (entry if isinstance(entry, list) else [entry])]
    stage = next(s for s in stages if s.name == "student")
    workflow = stage_workflow(base, stage, CONFIGS)
    workflow.initialize()
    teachers = workflow.parser.get_parsed_content("teachers")
    assert len(teachers) == (0 if method in ("one", "dml") else 1)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    seen = trained_terms(trainer)
    assert STUDY_TERMS[method] <= seen, (method, seen)
    run_stage(CONFIGS / "train.json", values)
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    assert record["distill_method"] == method
    assert (tmp_path / "models" / "distill_init.pt").is_file() == (method in ("fitnet", "fsp"))
    assert record["method"] == ("student_only" if method in ("one", "dml") else "hinton_kd")
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_samples"] == 8


@pytest.mark.parametrize("record, width", [(None, 16), ({"num_classes": 4}, 64), ({"student_width": 0.5}, 32)])
def test_inference_builds_the_student_width_of_its_record(tmp_path, record, width):
    """The student's width in inference: the record's ``student_width``; without a record (the
    model-zoo checks from the bundle folder) the demo's 0.25; a record from before ``student_width`` existed stands for
    the full-width students trained then."""
    from medkd_ext.engines import settings_path

    ckpt = tmp_path / "model.pt"
    if record is not None:
        settings_path(ckpt).write_text(json.dumps(record))
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"ckpt_file": str(ckpt), "bundle_root": str(BUNDLE), "dataset_dir": str(tmp_path)})
    assert parser.get_parsed_content("network_def").conv1.out_channels == width
