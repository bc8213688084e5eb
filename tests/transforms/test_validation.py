from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose

from medkd_ext.transforms import EnsureImageChannelsd, ValidateCased, ValidateClassLabeld, describe_source


def _meta(t: torch.Tensor, filename: str) -> MetaTensor:
    return MetaTensor(t, meta={"filename_or_obj": filename})


def _case(image=None, label=None):
    image = torch.rand(1, 6, 6, 4) if image is None else image
    label = torch.zeros(1, 6, 6, 4) if label is None else label
    return {"image": _meta(image, "/data/img_007.nii.gz"), "label": _meta(label, "/data/lbl_007.nii.gz")}


def test_valid_case_passes_unchanged():
    label = torch.zeros(1, 6, 6, 4)
    label[0, 2:4, 2:4] = 2
    data = _case(image=torch.rand(2, 6, 6, 4), label=label)
    out = ValidateCased(num_classes=3)(data)
    assert out["image"] is data["image"] and out["label"] is data["label"]


def test_non_finite_image_names_file_and_count():
    image = torch.rand(1, 6, 6, 4)
    image[0, 0, 0, 0] = float("nan")
    image[0, 1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"file '/data/img_007.nii.gz' \(key 'image'\) has 2 non-finite voxel"):
        ValidateCased()(_case(image=image))


def test_spatial_shape_mismatch_names_both_files():
    with pytest.raises(ValueError) as e:
        ValidateCased()(_case(label=torch.zeros(1, 6, 6, 5)))
    msg = str(e.value)
    assert "img_007.nii.gz" in msg and "lbl_007.nii.gz" in msg and "(6, 6, 4)" in msg and "(6, 6, 5)" in msg


def test_label_values_outside_classes_and_non_integer():
    label = torch.zeros(1, 6, 6, 4)
    label[0, 0, 0, 0] = 3
    label[0, 0, 0, 1] = -1
    with pytest.raises(ValueError, match=r"lbl_007.nii.gz.*values \[-1.0, 3.0\] outside the integer classes \[0, 3\)"):
        ValidateCased(num_classes=3)(_case(label=label))
    label = torch.zeros(1, 6, 6, 4)
    label[0, 0, 0, 0] = 0.5
    with pytest.raises(ValueError, match=r"values \[0.5\]"):
        ValidateCased(num_classes=3)(_case(label=label))
    ValidateCased()(_case(label=label))  # no num_classes: values not checked


def test_one_hot_label_channel_count():
    one_hot = torch.zeros(3, 6, 6, 4)
    one_hot[0] = 1
    ValidateCased(num_classes=3)(_case(label=one_hot))
    with pytest.raises(ValueError, match="3 channels"):
        ValidateCased(num_classes=2)(_case(label=one_hot))


def test_meta_dict_fallback_and_key_fallback():
    data = {
        "image": np.zeros((1, 4, 4), dtype=np.float32),
        "image_meta_dict": {"filename_or_obj": "/d/x.png"},
        "label": np.zeros((1, 4, 5)),
    }
    with pytest.raises(ValueError, match=r"file '/d/x.png' \(key 'image'\).*key 'label' has \(4, 5\)"):
        ValidateCased()(data)
    assert describe_source({"image": torch.zeros(1)}, "image") == "key 'image'"


def test_image_only_case_and_missing_keys():
    ValidateCased(keys=["image"], label_key=None)({"image": torch.zeros(1, 4, 4)})
    with pytest.raises(KeyError):
        ValidateCased()({"image": torch.zeros(1, 4, 4)})
    ValidateCased(allow_missing_keys=True, num_classes=2)({"image": torch.zeros(1, 4, 4)})


def test_error_inside_compose_keeps_message():
    image = torch.full((1, 4, 4), float("nan"))
    with pytest.raises(RuntimeError) as e:
        Compose([ValidateCased(keys=["image"], label_key=None)])({"image": _meta(image, "/d/bad.nii")})
    assert isinstance(e.value.__cause__, ValueError) and "/d/bad.nii" in str(e.value.__cause__)


@pytest.mark.parametrize("label", [2, np.int64(0), torch.tensor(1), torch.tensor([2]), 1.0])
def test_class_label_valid(label):
    data = {"image": _meta(torch.zeros(1, 4, 4), "/d/a.png"), "label": label}
    assert ValidateClassLabeld(num_classes=3)(data)["label"] is label


@pytest.mark.parametrize(
    "label, match", [(3, "is 3;"), (-1, "is -1"), (1.5, "is 1.5"), (torch.tensor([0, 1]), r"is \[0, 1\]")]
)
def test_class_label_invalid_names_image_file(label, match):
    data = {"image": _meta(torch.zeros(1, 4, 4), "/d/a.png"), "label": label}
    with pytest.raises(ValueError, match=match) as e:
        ValidateClassLabeld(num_classes=3)(data)
    assert "'/d/a.png'" in str(e.value) and "[0, 3)" in str(e.value)


def test_multi_hot_labels():
    image = _meta(torch.zeros(1, 4, 4), "/d/cxr.png")
    t = ValidateClassLabeld(num_classes=3, multi_label=True)
    t({"image": image, "label": [0, 1, 1]})
    t({"image": image, "label": torch.tensor([1.0, 0.0, 0.0])})
    with pytest.raises(ValueError, match=r"/d/cxr.png.*multi-hot vector of num_classes=3"):
        t({"image": image, "label": [0, 1]})
    with pytest.raises(ValueError, match="multi-hot"):
        t({"image": image, "label": [0, 2, 1]})
    with pytest.raises(ValueError, match="must be numbers"):
        t({"image": image, "label": "0,1,1"})


def test_ensure_channels_repeats_gray_and_keeps_meta():
    gray = _meta(torch.arange(16.0).reshape(1, 4, 4), "/d/g.png")
    out = EnsureImageChannelsd("image", channels=3)({"image": gray})["image"]
    assert out.shape == (3, 4, 4)
    assert all(torch.equal(out[c], gray[0]) for c in range(3))
    assert out.meta["filename_or_obj"] == "/d/g.png"
    rgb = torch.rand(3, 4, 4)
    assert EnsureImageChannelsd("image", 3)({"image": rgb})["image"] is rgb
    arr = np.ones((1, 2, 2, 2))
    assert EnsureImageChannelsd("image", 2)({"image": arr})["image"].shape == (2, 2, 2, 2)


def test_ensure_channels_error_names_file_and_counts():
    rgba = _meta(torch.zeros(4, 4, 4), "/d/rgba.png")
    with pytest.raises(ValueError, match=r"'/d/rgba.png'.*has 4 channels but 3 are expected"):
        EnsureImageChannelsd("image", 3)({"image": rgba})
    with pytest.raises(ValueError, match="channels must be a positive int"):
        EnsureImageChannelsd("image", 0)


def test_image_channels_refuses_another_spatial_dimension_naming_the_file():
    from monai.data import MetaTensor

    volume = MetaTensor(torch.zeros(1, 8, 8, 4), meta={"filename_or_obj": "/data/mri.nii.gz"})
    expected = r"/data/mri.nii.gz' \(key 'image'\) is 3D \(shape \(8, 8, 4\)\) but the network is 2D"
    with pytest.raises(ValueError, match=expected):
        EnsureImageChannelsd("image", channels=1, spatial_dims=2)({"image": volume})
    with pytest.raises(ValueError, match=r"is 2D .* but the network is 3D"):
        EnsureImageChannelsd("image", channels=1, spatial_dims=3)({"image": torch.zeros(1, 8, 8)})
    out = EnsureImageChannelsd("image", channels=3, spatial_dims=3)({"image": volume})["image"]
    assert out.shape == (3, 8, 8, 4)


def test_case_layout_spatial_dims_and_image_channels():
    two_channels = _case(image=torch.rand(2, 6, 6, 4))
    ValidateCased(channels=2, spatial_dims=3)(two_channels)  # the label's one channel is not an image channel
    with pytest.raises(ValueError, match=r"img_007.nii.gz' \(key 'image'\) has 2 channels .* \(in_channels=1\)"):
        ValidateCased(channels=1)(two_channels)
    flat = {"image": _meta(torch.rand(1, 6, 6), "/data/slice.nii.gz"), "label": _meta(torch.zeros(1, 6, 6), "/l")}
    expected = r"slice.nii.gz' \(key 'image'\) is 2D \(shape \(6, 6\)\) but the network is 3D"
    with pytest.raises(ValueError, match=expected):
        ValidateCased(num_classes=2, spatial_dims=3)(flat)
    ValidateCased(num_classes=2, channels=1)(flat)  # no spatial_dims: any dimension
    image_only = ValidateCased(keys="image", label_key=None, channels=1, spatial_dims=3)
    image_only({"image": torch.zeros(1, 4, 4, 4)})
    with pytest.raises(ValueError, match="has 3 channels"):
        image_only({"image": torch.zeros(3, 4, 4, 4)})
    with pytest.raises(ValueError, match="channels must be a positive int or None, got 0"):
        ValidateCased(channels=0)


def test_check_cases_runs_every_case_once_and_stops_at_a_bad_one():
    """``check_cases``: the loading and validation transforms over every case before any stage trains (a case
    listed twice is checked once); the first bad case raises the transform's own error."""
    from medkd_ext.transforms import check_cases

    seen = []

    def record(case):
        seen.append(case["image"])
        return case

    cases = [{"image": "a.png", "label": 0}, {"image": "b.png", "label": 1}, {"image": "a.png", "label": 0}]
    assert check_cases(cases, [record]) == 2 and seen == ["a.png", "b.png"]
    check = ValidateClassLabeld(keys="label", num_classes=2)
    with pytest.raises(RuntimeError) as raised:
        check_cases([{"image": "a.png", "label": 0}, {"image": "c.png", "label": 7}], [check])
    assert "is 7" in str(raised.value.__cause__ or raised.value)
