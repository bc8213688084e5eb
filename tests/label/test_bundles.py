"""medkd_ext.label.bundles, in this environment (no MONAI Label): the task type read from a bundle's metadata, and a
bundle that cannot be served refused with its file named."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from medkd_ext.label.bundles import BundleModel, task_type

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("pred", "expected"),
    [({"type": "image", "format": "labels"}, "segmentation"), ({"type": "image", "format": "segmentation"},
                                                              "segmentation"),
     ({"type": "probabilities", "format": "classes"}, "classification"), ({"type": "vector", "format": "classes"},
                                                                          "classification")],
)
def test_task_type_from_metadata(pred, expected):
    assert task_type({"network_data_format": {"outputs": {"pred": pred}}}) == expected


def test_an_unknown_output_is_refused_naming_the_file():
    with pytest.raises(ValueError, match=r"m.json: network_data_format.outputs.pred is .*'image'.*'magnitude'"):
        task_type({"network_data_format": {"outputs": {"pred": {"type": "image", "format": "magnitude"}}}}, "m.json")


def test_an_untrained_bundle_is_refused_naming_its_checkpoint(tmp_path):
    bundle = tmp_path / "joint_teacher_seg"
    shutil.copytree(REPO / "bundles" / "joint_teacher_seg", bundle, ignore=shutil.ignore_patterns("models", "eval"))
    with pytest.raises(FileNotFoundError, match=r"models/model.pt is missing: train it first"):
        BundleModel(bundle)
    with pytest.raises(FileNotFoundError, match=r"configs/inference.json is missing"):
        BundleModel(tmp_path)
