"""bundles/attention_transfer_densenet: stage smoke runs, bundle checks, attention transfer and bad-input errors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from PIL import Image

from medkd_ext.data import make_classification_demo, make_pretraining_demo
from medkd_ext.engines import loss_terms_output, run_stage
from medkd_ext.networks import FeatureTaps, save_state_dict
from tests.bundles.bundle_checks import (
    REPO,
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

BUNDLE = REPO / "bundles" / "attention_transfer_densenet"
CONFIGS = BUNDLE / "configs"


def _cause(error: BaseException, kind: type[BaseException]) -> BaseException:
    """The first exception of type ``kind`` in the cause/context chain (MONAI wraps errors of config items)."""
    seen = error
    while seen is not None and not isinstance(seen, kind):
        seen = seen.__cause__ or seen.__context__
    assert seen is not None, f"no {kind.__name__} in the chain of {error!r}"
    return seen


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("at_demo")
    make_classification_demo(root / "data", seed=1, n_cases=32, n_test=8, size=32)
    make_pretraining_demo(root / "pretrain", seed=1, n_cases=16, n_test=0, size=32)
    return root


def overrides(root: Path, **extra) -> dict:
    values = {
        "dataset_dir": str(root / "data"),
        "ckpt_dir": str(root / "models"),
        "output_dir": str(root / "eval"),
        "image_size": 64,  # the smallest at which attention transfer does something: DenseNet-121's maps are 2x2
        "batch_size": 8,
        "max_epochs": 1,
        "teacher_max_epochs": 1,
        "pretrain_dataset_dir": str(root / "pretrain"),
        "pretrain_max_epochs": 1,
        "device": "cpu",
    }
    values.update(extra)
    return values


def parser_for(files: list[str], values: dict) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / f) for f in files])
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update(values)
    return parser


def _stage(parser: ConfigParser, name: str):
    return next(s for s in parser.get_parsed_content("stages") if s.name == name)


@pytest.fixture(scope="module")
def trained(demo) -> Path:
    """train.json with defaults but tiny data: trains the missing teacher first, then the DenseNet-40 student."""
    run_stage(CONFIGS / "train.json", overrides(demo))
    return demo


def test_metadata():
    check_metadata(BUNDLE)


@pytest.mark.slow
def test_train_runs_teacher_first_then_skips_it(trained):
    teacher, student = trained / "models" / "teacher.pt", trained / "models" / "model.pt"
    assert teacher.is_file() and student.is_file()
    assert (trained / "eval" / "teacher").is_dir()  # the teacher stage logs under the student's output_dir
    state = torch.load(teacher, weights_only=True)
    assert "features.denseblock4.denselayer16.layers.conv2.weight" in state  # a DenseNet-121
    assert "features.denseblock3.denselayer1.layers.conv1.weight" not in torch.load(student, weights_only=True)
    before = teacher.stat().st_mtime_ns
    warnings: list[str] = []  # the bundle's logging.conf replaces the root handlers (pytest's caplog among them)
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("medkd_ext.engines.settings").addHandler(handler)
    try:
        run_stage(CONFIGS / "train.json", overrides(trained))
        assert teacher.stat().st_mtime_ns == before and not warnings
        # reused, as reuse_outputs says, but a teacher trained on other data than this run's is named as such
        own = str(trained / "data" / "dataset.json")
        run_stage(CONFIGS / "train.json", overrides(trained, teacher_datalist=own))
    finally:
        logging.getLogger("medkd_ext.engines.settings").removeHandler(handler)
    assert teacher.stat().st_mtime_ns == before
    assert len(warnings) == 1 and "the teacher" in warnings[0] and "reused without training" in warnings[0]
    assert f"teacher_datalist: trained with '{trained / 'data_related' / 'dataset.json'}', this run has '{own}'" in (
        warnings[0])


@pytest.mark.slow
def test_pretraining_then_the_teacher_on_the_related_site(trained):
    """The paper's two sources: a network pre-trained on the generic demo (the ImageNet role, pretrained.pt, 8
    pattern classes), then the in-domain teacher trained on the demo's related site (another hospital's larger
    dataset of the same findings, the MIMIC-CXR role), not on the student's dataset."""
    from medkd_ext.engines import recorded

    models = trained / "models"
    assert recorded(models / "pretrained.pt", "teacher_num_classes") == 8
    assert recorded(models / "pretrained.pt", "pretrain_datalist") == str(trained / "pretrain" / "dataset.json")
    teacher_data = Path(recorded(models / "teacher.pt", "teacher_datalist"))
    assert teacher_data == trained / "data_related" / "dataset.json"
    related, target = (json.loads(p.read_text()) for p in (teacher_data, trained / "data" / "dataset.json"))
    assert related["site"] == "related" and target["site"] == "target"
    assert related["labels"] == target["labels"] and len(related["training"]) == 48  # 1.5 x the 32 target cases
    assert not {e["patient"] for e in related["training"]} & {e["patient"] for e in target["training"]}
    assert recorded(models / "teacher.pt", "teacher_data_parts") == {"source": 0.8, "validation": 0.2}


@pytest.mark.slow
@pytest.mark.parametrize("student_net", ["DenseNet121", "medkd_ext.networks.DenseNet40"])
def test_teacher_and_students_start_from_the_pretrained_weights(trained, tmp_path, student_net):
    """With a learning rate of 0 the trained networks keep their starting weights: the teacher's and every student's
    convolutions are the pre-trained network's (DenseNet-40: its stem and first two dense blocks), with transfer
    learning (baseline) and with attention transfer; --pretrained_ckpt null starts from random weights."""
    pretrained = torch.load(trained / "models" / "pretrained.pt", weights_only=True)
    models = tmp_path / "models"
    models.mkdir()
    for name in ("pretrained.pt", "pretrained.json"):
        (models / name).write_bytes((trained / "models" / name).read_bytes())
    common = {"ckpt_dir": str(models), "output_dir": str(tmp_path / "eval"), "learning_rate": 0.0,
              "student_net": student_net}
    keys = ("features.conv0.weight", "features.denseblock2.denselayer3.layers.conv1.weight")
    for baseline in (False, True):
        run_stage(CONFIGS / "train.json", overrides(trained, baseline=baseline, **common))
        checkpoints = ["model.pt"] + ([] if baseline else ["teacher.pt"])
        for name in checkpoints:
            state = torch.load(models / name, weights_only=True)
            for key in keys:
                assert torch.equal(state[key], pretrained[key]), (baseline, name, key)
    fresh = tmp_path / "fresh"
    run_stage(CONFIGS / "train.json", overrides(trained, baseline=True, pretrained_ckpt=None,
                                                **{**common, "ckpt_dir": str(fresh)}))
    assert not (fresh / "pretrained.pt").exists()
    assert not torch.equal(torch.load(fresh / "model.pt", weights_only=True)[keys[0]], pretrained[keys[0]])


@pytest.mark.slow
def test_the_pretrained_network_is_a_cross_domain_teacher(trained, tmp_path):
    """The paper's Teacher_ImageNet column: attention transfer from the pre-trained network itself (its 8 generic
    classes: teacher_num_classes 8), without training a teacher."""
    values = overrides(trained, teacher_ckpt=str(trained / "models" / "pretrained.pt"), teacher_num_classes=8,
                       train_teacher_if_missing=False, ckpt_file=str(tmp_path / "model.pt"),
                       output_dir=str(tmp_path / "eval"))
    run_stage(CONFIGS / "train.json", values)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "eval" / "metrics.json").is_file()


@pytest.mark.slow
def test_check_properties(trained):
    assert check_properties(BUNDLE, "train.json", "train", overrides(trained)) == []
    assert check_properties(BUNDLE, ["train.json", "train_teacher.json"], "train", overrides(trained)) == []
    assert check_properties(BUNDLE, ["train.json", "evaluate.json"], "train", overrides(trained)) == []
    assert check_properties(BUNDLE, "inference.json", "infer", overrides(trained)) == []


@pytest.mark.slow
def test_evaluate_writes_report(trained):
    run_stage([CONFIGS / "train.json", CONFIGS / "evaluate.json"], overrides(trained))
    report = json.loads((trained / "eval" / "metrics.json").read_text())
    assert report["num_samples"] == 8  # the demo's test list
    assert 0.0 <= report["f1_weighted"] <= 1.0


@pytest.mark.slow
def test_inference_writes_probabilities(trained):
    out = trained / "infer"
    run_stage(CONFIGS / "inference.json", overrides(trained, output_dir=str(out)), workflow_type="infer")
    entries = json.loads((out / "probabilities.json").read_text())
    assert len(entries) == 40  # every PNG under dataset_dir
    assert all(abs(sum(e["probabilities"].values()) - 1.0) < 1e-4 for e in entries)
    assert all(os.path.isfile(e["image"]) for e in entries)


@pytest.mark.slow
def test_attention_maps_have_input_geometry(trained, tmp_path):
    """Test images of 40x40, resized to the trained 32x32 for the networks: the maps are brought back to 40x40."""
    content = json.loads((trained / "data" / "dataset.json").read_text())
    cases = []
    for item in content["test"][:2]:
        with Image.open(trained / "data" / item["image"]) as img:
            big = tmp_path / Path(item["image"]).name
            img.resize((40, 40)).save(big)
        cases.append({"image": str(big), "label": item["label"]})
    training = [{**item, "image": str(trained / "data" / item["image"])} for item in content["training"]]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": training, "test": cases}))
    values = overrides(trained, num_attention_cases=2, datalist=str(tmp_path / "dataset.json"))
    run_stage([CONFIGS / "train.json", CONFIGS / "attention_maps.json"], values)
    files = sorted((trained / "eval" / "attention_maps").glob("*.png"))
    assert len(files) == 4 and {f.name.split("_")[-2] for f in files} == {"teacher", "student"}
    for f in files:
        with Image.open(f) as img:
            assert img.mode == "RGB" and img.size == (40, 40)


@pytest.mark.slow
def test_net_in_out_and_export(trained, tmp_path):
    check_net_in_out(BUNDLE)
    check_export(BUNDLE, trained / "models" / "model.pt", tmp_path, (1, 3, 64, 64))


def test_tapped_layers_have_32_new_planes(demo):
    parser = parser_for(["train.json"], overrides(demo))
    for net_id, layer_id, name in (
        ("network_def", "student_layer", "features.denseblock2.denselayer11.layers"),
        ("teacher_def", "teacher_layer", "features.denseblock4.denselayer15.layers"),
    ):
        layer = parser.get_parsed_content(layer_id)
        assert layer == name  # the penultimate layer of the last dense block
        net = parser.get_parsed_content(net_id).eval()
        with FeatureTaps(net, layer) as taps, torch.no_grad():
            net(torch.rand(1, 3, 64, 64))
        assert taps[layer].shape[1] == 32


def test_densenet121_student_by_key(demo):
    parser = parser_for(["train.json"], overrides(demo, student_net="DenseNet121"))
    assert type(parser.get_parsed_content("network_def")).__name__ == "DenseNet121"
    assert parser.get_parsed_content("student_layer") == "features.denseblock4.denselayer15.layers"


def test_at_loss_reaches_student_not_teacher(demo, tmp_path):
    teacher_ckpt = tmp_path / "teacher.pt"
    # 64 pixels: the teacher's map is 2x2; at 1x1 each normalised plane is a sign and has no gradient
    values = overrides(demo, teacher_ckpt=str(teacher_ckpt), train_teacher_if_missing=False, image_size=64)
    parser = parser_for(["train.json"], values)
    save_state_dict(parser.get_parsed_content("teacher_def"), teacher_ckpt)
    parser.update({"ce_term#weight": 0.0, "train#handlers": [], "train#data": "$@validate#data[:8]"})
    trainer = parser.get_parsed_content("train#trainer")
    student, teacher = trainer.network, trainer.teachers["teacher"]
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    trainer.run()
    assert loss_terms_output(trainer.state.output)["at"] > 0
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert student.features.conv0.weight.grad.abs().sum() > 0  # the AT layer's input path learns
    tapped = student.features.denseblock2.denselayer11.layers.conv2.weight.grad
    assert tapped.abs().sum() > 0
    # layers after the tapped one get no gradient from attention transfer alone
    assert student.features.denseblock2.denselayer12.layers.conv2.weight.grad.abs().sum() == 0
    assert student.class_layers.out.weight.grad.abs().sum() == 0


def test_the_head_tap_class_layers_conv1_trains_from_the_command_line_ids(trained, tmp_path):
    """``--student_layer class_layers.conv1`` (DenseNet-40's 32-plane head convolution, the paper's Table VI head):
    the student stage runs end to end with it, and attention transfer alone reaches that convolution and what lies
    before it, not the classifier after it."""
    values = overrides(trained, student_layer="class_layers.conv1", ckpt_file=str(tmp_path / "model.pt"),
                       output_dir=str(tmp_path / "eval"))
    run_stage(CONFIGS / "train.json", values)
    assert (tmp_path / "model.pt").is_file() and (tmp_path / "eval" / "metrics.json").is_file()
    parser = parser_for(["train.json"], values)
    parser.update({"ce_term#weight": 0.0, "train#handlers": [], "train#data": "$@validate#data[:8]"})
    trainer = parser.get_parsed_content("train#trainer")
    trainer.run()
    student = trainer.network
    assert loss_terms_output(trainer.state.output)["at"] > 0
    assert student.class_layers.conv1.weight.grad.abs().sum() > 0
    assert student.features.conv0.weight.grad.abs().sum() > 0
    assert student.class_layers.out.weight.grad.abs().sum() == 0


def test_baseline_is_cross_entropy_alone_without_teacher(demo):
    parser = parser_for(
        ["train.json"], overrides(demo, baseline=True, trainable_layers=1, teacher_ckpt="/nonexistent/teacher.pt")
    )
    terms = parser.get_parsed_content("loss_terms")
    assert [t.name for t in terms] == ["ce"]
    assert parser.get_parsed_content("teachers") == {}
    assert not _stage(parser, "teacher").enabled  # no teacher stage
    optimizer = parser.get_parsed_content("optimizer")
    network = parser.get_parsed_content("network")
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(network.class_layers.out.weight), id(network.class_layers.out.bias)}


def test_the_checks_before_the_stages_leave_the_pretraining_data_alone(demo, tmp_path):
    """The checks train.json makes before any stage (cases, teacher, reused teacher) do not resolve
    pretrain_dataset_dir: a run with --pretrained_ckpt null or a user's ImageNet weights never generates the generic
    pretraining demo (an expression that fails when resolved stands in for it)."""
    values = overrides(demo, ckpt_dir=str(tmp_path / "models"), pretrained_ckpt=None, pretrain_dataset_dir="$1 / 0")
    parser = parser_for(["train.json"], values)
    for key in ("preflight_cases", "check_teacher", "check_reused", "check_attention_maps", "stages"):
        parser.get_parsed_content(key)
    with pytest.raises(RuntimeError) as raised:
        parser.get_parsed_content("pretrain_datalist")  # the stand-in does fail when resolved
    assert _cause(raised.value, ZeroDivisionError)


def test_missing_teacher_names_file_and_stage(demo, tmp_path):
    missing = tmp_path / "none.pt"
    parser = parser_for(["train.json"], overrides(demo, teacher_ckpt=str(missing), train_teacher_if_missing=False))
    assert not _stage(parser, "teacher").enabled
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("teacher")
    message = str(_cause(info.value, FileNotFoundError))
    assert str(missing) in message and "train_teacher.json" in message


@pytest.mark.parametrize("kind", ["architecture", "classes"])
def test_teacher_checkpoint_that_does_not_fit(demo, tmp_path, kind):
    from monai.networks.nets import DenseNet121

    from medkd_ext.networks import DenseNet40

    ckpt = tmp_path / "teacher.pt"
    if kind == "architecture":
        other = DenseNet40(2, 3, 4)
    else:
        other = DenseNet121(spatial_dims=2, in_channels=3, out_channels=7)
    save_state_dict(other, ckpt)
    parser = parser_for(["train.json"], overrides(demo, teacher_ckpt=str(ckpt), train_teacher_if_missing=False))
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("teacher")
    message = str(_cause(info.value, ValueError))
    assert str(ckpt) in message
    if kind == "architecture":
        assert "does not fit DenseNet121" in message and "missing key" in message
    else:
        assert "7 output classes" in message and "teacher_num_classes=7" in message


def test_unknown_tapped_layer_lists_valid_ones(demo, tmp_path):
    teacher_ckpt = tmp_path / "teacher.pt"
    values = overrides(demo, teacher_ckpt=str(teacher_ckpt), student_layer="features.denseblock2.denselayer99")
    parser = parser_for(["train.json"], values)
    save_state_dict(parser.get_parsed_content("teacher_def"), teacher_ckpt)
    with pytest.raises(Exception) as info:
        parser.get_parsed_content("train#trainer")
    message = str(_cause(info.value, ValueError))
    assert "features.denseblock2.denselayer99" in message
    assert "features.denseblock2.denselayer11" in message and "features.denseblock2.denselayer12" in message


def test_image_with_wrong_channel_count(demo, tmp_path):
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.zeros((32, 32, 4), dtype=np.uint8), mode="RGBA").save(rgba)
    preprocessing = parser_for(["train.json"], overrides(demo)).get_parsed_content("validate#preprocessing")
    with pytest.raises(Exception) as info:
        preprocessing({"image": str(rgba), "label": 0})
    message = str(_cause(info.value, ValueError))
    assert str(rgba) in message and "4 channels but 3 are expected" in message


def test_paper_overlay(demo):
    parsers = stage_parsers(BUNDLE, {"dataset_dir": str(demo / "data")}, ["train.json", "paper.json"])
    assert list(parsers) == ["pretrain", "teacher", "student", "evaluate"]
    for name in ("teacher", "student"):  # the overlay given to train.json reaches the teacher stage too
        parser = parsers[name]
        assert parser["learning_rate"] == 5e-5 and parser["batch_size"] == 32 and parser["image_size"] == 256
        assert parser.get_parsed_content("train#trainer#max_epochs") == 128
        assert parser.get_parsed_content("lr_scheduler").step_size == 16
    assert parsers["student"].get_parsed_content("at_term#weight") == 1 / 20.0
    assert parsers["student"].get_parsed_content("crop_size") == 224  # "resized to 256x256, center cropped"


@pytest.mark.slow
def test_paper_json_runs_end_to_end_with_only_sizes_reduced(demo, tmp_path):
    """``paper.json`` (DenseNet-121 teacher, DenseNet-40 student, Adam 5e-5, beta 20) for one epoch per stage at
    96 px cropped to 80 (DenseNet-121's attention maps 2x2), then the evaluation reading the crop from
    ``model.json``."""
    values = overrides(demo, ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"), image_size=96,
                       crop_size=80, batch_size=8)
    run_stage([CONFIGS / "train.json", CONFIGS / "paper.json"], values)
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    assert (record["image_size"], record["crop_size"]) == (96, 80)
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["num_samples"] == 8


def test_every_id_given_to_train_json_reaches_every_stage(demo, tmp_path):
    given = {"seed": 4, "learning_rate": 0.003, "data_parts#train": 0.1, "data_parts#validation": 0.3}
    given["train#random_transforms#1#prob"] = 0.1
    parsers = stage_parsers(BUNDLE, overrides(demo, teacher_ckpt=str(tmp_path / "t.pt"), **given))
    assert list(parsers) == ["pretrain", "teacher", "student", "evaluate"]
    for name, parser in parsers.items():
        assert parser.get_parsed_content("seed") == 4, name
        assert parser.get_parsed_content("train#random_transforms")[1].prob == 0.1, name
        if name != "evaluate":  # the evaluation reads the data of the trained model from its record (model.json)
            assert parser.get_parsed_content("data_parts") == {"source": 0.6, "train": 0.1, "validation": 0.3}, name
    teacher = parsers["teacher"]
    assert type(teacher.get_parsed_content("network")).__name__ == "DenseNet121"
    assert teacher.get_parsed_content("optimizer").defaults["lr"] == 0.003
    assert teacher.get_parsed_content("stage_ckpt") == str(tmp_path / "t.pt")
    assert teacher.get_parsed_content("train#trainer#max_epochs") == 1
    # the teacher learns on its own part of the data, the student on the student's
    parts = {n: {d["image"] for d in parsers[n].get_parsed_content("train#data")} for n in ("teacher", "student")}
    assert parts["teacher"] and parts["student"] and not parts["teacher"] & parts["student"]
    assert all("/data_related/" in image for image in parts["teacher"])  # the demo's related site
    pretrain = parsers["pretrain"]
    network = pretrain.get_parsed_content("network")
    assert type(network).__name__ == "DenseNet121" and network.class_layers.out.out_features == 8
    assert pretrain.get_parsed_content("stage_ckpt") == str(demo / "models" / "pretrained.pt")
    assert pretrain.get_parsed_content("train#trainer#max_epochs") == 1
    assert pretrain.get_parsed_content("optimizer").defaults["lr"] == 0.003
    assert {d["image"].split("/")[-3] for d in pretrain.get_parsed_content("train#data")} == {"pretrain"}


@pytest.mark.slow
def test_3d_train_and_attention_maps(tmp_path):
    make_classification_demo(tmp_path / "data", seed=2, spatial_dims=3, n_cases=12, n_test=2, size=16)
    make_pretraining_demo(tmp_path / "pretrain", seed=2, spatial_dims=3, n_cases=8, n_test=0, size=16)
    values = overrides(tmp_path, spatial_dims=3, image_size=64, batch_size=4, num_attention_cases=1)
    run_stage(CONFIGS / "train.json", values)
    run_stage([CONFIGS / "train.json", CONFIGS / "attention_maps.json"], values)
    maps = sorted((tmp_path / "eval" / "attention_maps").glob("*.nii.gz"))
    assert len(maps) == 2
    for f in maps:
        source = nib.load(tmp_path / "data" / "images" / (f.name.rsplit("_", 2)[0] + ".nii.gz"))
        written = nib.load(f)
        assert written.shape == source.shape == (16, 16, 16)
        assert np.allclose(written.affine, source.affine)


@pytest.mark.slow
def test_multi_label_selects_by_mean_auc(tmp_path):
    make_classification_demo(tmp_path / "data", seed=3, multi_label=True, n_cases=24, n_test=4, size=32)
    make_pretraining_demo(tmp_path / "pretrain", seed=3, n_cases=8, n_test=0, size=32)
    values = overrides(tmp_path, multi_label=True)
    parser = parser_for(["train.json"], values)
    assert parser.get_parsed_content("val_metric") == "auc_macro"
    assert isinstance(parser.get_parsed_content("loss"), torch.nn.BCEWithLogitsLoss)
    run_stage(CONFIGS / "train.json", values)
    run_stage([CONFIGS / "train.json", CONFIGS / "evaluate.json"], values)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["task"] == "multi-label" and report["num_samples"] == 4


@pytest.mark.parametrize("text", ["false", "False", "0", "no"])
def test_booleans_from_the_command_line(demo, text):
    """Every boolean id reads a command-line ``false`` (a string) as false, and ``true`` as true."""
    parser = parser_for(["train.json"], overrides(demo, multi_label=text, baseline=text, train_teacher_if_missing=text))
    assert isinstance(parser.get_parsed_content("loss"), torch.nn.CrossEntropyLoss)  # multi_label off
    assert parser.get_parsed_content("val_metric") == "f1_weighted"
    assert parser.get_parsed_content("validate#postprocessing").softmax == (True,)
    assert _stage(parser, "teacher").enabled is False  # train_teacher_if_missing off
    # baseline off: attention transfer is a term
    assert [t.name for t in parser.get_parsed_content("loss_terms")] == ["ce", "at"]
    parser = parser_for(["train.json"], overrides(demo, multi_label="true", baseline="true"))
    assert isinstance(parser.get_parsed_content("loss"), torch.nn.BCEWithLogitsLoss)
    assert [t.name for t in parser.get_parsed_content("loss_terms")] == ["ce"]
    with pytest.raises(Exception) as info:
        parser_for(["train.json"], overrides(demo, baseline="maybe")).get_parsed_content("loss_terms")
    assert "baseline must be true or false" in str(_cause(info.value, ValueError))


@pytest.mark.slow
def test_evaluation_and_inference_read_the_trained_settings(trained, tmp_path):
    """Trained at 64 pixels on the test's own data: evaluate.json and inference.json need neither."""
    assert json.loads((trained / "models" / "model.json").read_text())["image_size"] == 64
    plain = {"ckpt_dir": str(trained / "models"), "output_dir": str(tmp_path / "ev"), "device": "cpu"}
    run_stage([CONFIGS / "train.json", CONFIGS / "evaluate.json"], plain)
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["num_samples"] == 8  # not the demo's 100
    infer = {**plain, "dataset_dir": str(trained / "data"), "output_dir": str(tmp_path / "inf")}
    run_stage(CONFIGS / "inference.json", infer, workflow_type="infer")
    assert len(json.loads((tmp_path / "inf" / "probabilities.json").read_text())) == 40
    with pytest.raises(Exception) as info:
        run_stage(CONFIGS / "inference.json", {**infer, "image_size": 96}, workflow_type="infer")
    assert "image_size: trained with 64, this run has 96" in str(_cause(info.value, ValueError))


@pytest.mark.slow
def test_your_data_as_the_readme_says(tmp_path):
    """The README's "Your data" commands, as written, on a multi-label CSV with patients and a test split, at image
    size 72: evaluation and inference read the trained settings, and their probabilities agree image by image."""
    check_your_data_classification(
        BUNDLE, tmp_path, "--max_epochs 1 --teacher_max_epochs 1 --batch_size 8 --image_size 72",
        trained={"image_size": 72, "crop_size": 72},
    )


@pytest.mark.slow
def test_exported_bundle_runs_without_medkd_ext(trained, tmp_path):
    """scripts/export_bundle.py: the unzipped copy of the DenseNet-40 student gives the repository's probabilities on
    PNG, 2D NIfTI and single-frame DICOM files (gray, repeated to the network's 3 channels) without medkd_ext."""
    images = sorted((trained / "data" / "images").glob("*.png"))[:2]
    inputs = classification_inputs(tmp_path / "clinic_images", images)
    check_exported_bundle("attention_transfer_densenet", trained / "models" / "model.pt", inputs, tmp_path)



@pytest.mark.slow
@pytest.mark.parametrize("method", list(STUDY_TERMS))
def test_each_kd_study_method_trains_the_student_from_one_key(method, trained, tmp_path):
    """--distill_method <m> (the KD study's Table I settings) trains the DenseNet-40 student with the method's trainer
    and loss terms, from the trained DenseNet-121 teacher (none for one and dml); the checkpoint is the plain student
    that evaluate.json scores, its record names the method."""
    from medkd_ext.engines import run_stage, stage_workflow
    from medkd_ext.engines.kd_study import method_overlays

    values = overrides(
        trained, distill_method=method, ckpt_dir=str(tmp_path / "models"), output_dir=str(tmp_path / "eval"),
        teacher_ckpt=str(trained / "models" / "teacher.pt"), train_teacher_if_missing=False,
        pretrained_ckpt=str(trained / "models" / "pretrained.pt"),
    )
    stage = next(s for s in parser_for(["train.json"], values).get_parsed_content("stages") if s.name == "student")
    assert stage.config == ["train_student.json", *method_overlays(method)]
    base = parser_for(["train.json"], values).get()
    workflow = stage_workflow(base, stage, CONFIGS)
    workflow.initialize()
    trainer = workflow.parser.get_parsed_content("train#trainer")
    seen = trained_terms(trainer)
    assert STUDY_TERMS[method] <= seen, (method, seen)
    run_stage(CONFIGS / "train.json", values)
    record = json.loads((tmp_path / "models" / "model.json").read_text())
    assert record["distill_method"] == method
    assert (tmp_path / "models" / "distill_init.pt").is_file() == (method in ("fitnet", "fsp"))
    assert record["student_net"] == "medkd_ext.networks.DenseNet40"
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["num_samples"] == 8


def test_distill_method_errors_name_the_key(demo):
    from medkd_ext.errors import user_message

    cases = (
        ({"distill_method": "hint"}, "distill_method must be one of"),
        ({"distill_method": "at", "baseline": True}, "baseline true both choose"),
    )
    for values, match in cases:
        with pytest.raises(Exception) as raised:
            parser_for(["train.json"], overrides(demo, **values)).get_parsed_content("initialize")
        assert match in user_message(raised.value)
