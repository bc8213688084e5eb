from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Resized
from PIL import Image
from torch import nn

from medkd_ext.networks import attention_map, attention_overlay, write_attention_maps


class TinyNet(nn.Module):
    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.features = conv(1, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        f = self.features(x)
        return self.head(f.flatten(2).mean(-1))


def test_attention_map_values():
    feats = torch.zeros(2, 3, 2, 2)
    feats[0, :, 0, 1] = 2.0
    feats[0, 0, 1, 1] = 1.0
    maps = attention_map(feats)
    assert maps.shape == (2, 1, 2, 2)
    # mean_c |A|^2: (0, 4, 0, 1/3) scaled to [0, 1]; the constant second sample gives zeros
    assert torch.allclose(maps[0, 0], torch.tensor([[0.0, 1.0], [0.0, 1 / 12]]))
    assert torch.equal(maps[1], torch.zeros(1, 2, 2))
    assert attention_map(feats, spatial_size=(5, 7)).shape == (2, 1, 5, 7)
    with pytest.raises(ValueError, match="spatial_size"):
        attention_map(feats, spatial_size=(5, 7, 9))


def test_overlay_keeps_cold_pixels():
    image = np.arange(12, dtype=float).reshape(3, 4)
    heat = np.zeros((3, 4))
    heat[0, 0] = 1.0
    out = attention_overlay(image, heat, alpha=0.5)
    assert out.shape == (3, 4, 3) and out.dtype == np.uint8
    gray = np.rint(image / 11 * 255)
    assert np.array_equal(out[1:, :, 0], gray[1:].astype(np.uint8))
    assert out[0, 0, 0] == 128  # half black image, half white-hot colour
    with pytest.raises(ValueError, match="shape"):
        attention_overlay(image, np.zeros((4, 3)))


def test_png_overlay_in_input_geometry(tmp_path):
    image = np.zeros((20, 30), dtype=np.uint8)  # H=20, W=30: not square, to catch a transposition
    image[2:6, 20:28] = 255
    path = tmp_path / "case_0.png"
    Image.fromarray(image).save(path)
    pre = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Resized("image", (16, 16))])
    net = TinyNet(2)
    with torch.no_grad():
        net.features.weight.fill_(1.0)
        net.features.bias.zero_()
    files = write_attention_maps({"student": net}, {"student": "features"}, [pre({"image": str(path)})],
                                 tmp_path / "out", preprocessing=pre)
    assert [f.name for f in files] == ["case_0_student_attention.png"]
    overlay = np.asarray(Image.open(files[0]))
    assert overlay.shape == (20, 30, 3)
    red = overlay[..., 0].astype(int) - overlay[..., 2].astype(int)
    assert np.unravel_index(red.argmax(), red.shape)[1] >= 15  # the hot region is on the bright (right) side


def test_nifti_map_in_input_geometry(tmp_path):
    affine = np.diag([0.8, 1.2, 2.0, 1.0])
    affine[:3, 3] = [10.0, -5.0, 3.0]
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 10, 8)).astype(np.float32), affine), path)
    pre = Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), Resized("image", (16, 16, 16))])
    nets = {"teacher": TinyNet(3), "student": TinyNet(3)}
    files = write_attention_maps(nets, {"teacher": "features", "student": "features"}, [pre({"image": str(path)})],
                                 tmp_path / "out", preprocessing=pre)
    assert [f.name for f in files] == ["vol_teacher_attention.nii.gz", "vol_student_attention.nii.gz"]
    for f in files:
        written = nib.load(f)
        assert written.shape == (12, 10, 8)
        assert np.allclose(written.affine, affine)
        data = written.get_fdata()
        assert data.min() >= -1e-6 and data.max() <= 1 + 1e-6


def test_write_errors(tmp_path):
    with pytest.raises(ValueError, match="no layer given"):
        write_attention_maps({"a": TinyNet(2)}, {}, [], tmp_path)
    with pytest.raises(ValueError, match="no sub-module named 'nope'"):
        write_attention_maps({"a": TinyNet(2)}, {"a": "nope"}, [], tmp_path)
