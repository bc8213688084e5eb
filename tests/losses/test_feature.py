from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medkd_ext.losses import CosineAlignLoss, FeatureAlignLoss, FitNetLoss, FSPLoss
from tests.losses._checks import check_loss_contract

DIMS = [2, 3]


def _shape(b, c, dims, n=4):
    return (b, c) + (n,) * dims


def _set_identity(conv: torch.nn.Module) -> None:
    with torch.no_grad():
        conv.weight.zero_()
        for i in range(conv.weight.shape[0]):
            conv.weight[(i, i) + (0,) * (conv.weight.ndim - 2)] = 1.0
        conv.bias.zero_()


# ---------------------------------------------------------------- FitNetLoss


def test_fitnet_hand_computed():
    loss = FitNetLoss(1, 1, spatial_dims=2)
    with torch.no_grad():
        loss.regressor.weight.fill_(2.0)
        loss.regressor.bias.fill_(1.0)
    s = torch.tensor([[[[1.0, 2.0]]]])
    t = torch.zeros(1, 1, 1, 2)
    assert loss(s, t).item() == pytest.approx((9 + 25) / 2)


@pytest.mark.parametrize("dims", DIMS)
def test_fitnet_zero_with_identity_regressor(dims):
    loss = FitNetLoss(3, 3, dims)
    _set_identity(loss.regressor)
    x = torch.randn(_shape(2, 3, dims))
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("dims", DIMS)
def test_fitnet_contract_and_regressor_learns(dims):
    loss = FitNetLoss(3, 5, dims)
    check_loss_contract(loss, torch.randn(_shape(2, 3, dims)), torch.randn(_shape(2, 5, dims)))
    assert loss.regressor.weight.grad is not None and loss.regressor.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in loss.parameters()) == 3 * 5 + 5


def test_fitnet_errors():
    loss = FitNetLoss(3, 5, 2)
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 5, 8, 8\)"):
        loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 8, 8))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(1, 5, 4, 4\)"):
        loss(torch.zeros(2, 3, 4, 4), torch.zeros(1, 5, 4, 4))
    with pytest.raises(ValueError, match="teacher_channels=5"):
        loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4, 4))
    with pytest.raises(ValueError, match="dimensions"):
        loss(torch.zeros(2, 3, 4, 4, 4), torch.zeros(2, 5, 4, 4, 4))
    with pytest.raises(ValueError, match="spatial_dims"):
        FitNetLoss(3, 5, 4)
    with pytest.raises(ValueError, match="student_channels"):
        FitNetLoss(0, 5, 2)


# ---------------------------------------------------------------- FSPLoss


def test_fsp_hand_computed():
    # student G = (1*3 + 2*4) / 2 = 5.5, teacher G = 1 -> (4.5)^2
    s = [torch.tensor([[[[1.0, 2.0]]]]), torch.tensor([[[[3.0, 4.0]]]])]
    t = [torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2)]
    assert FSPLoss()(s, t).item() == pytest.approx(4.5**2)


def test_fsp_sums_pairs_and_averages_batch():
    # three maps -> two pairs; two samples -> mean over batch
    s = [torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]]), torch.ones(2, 1, 1, 2), torch.full((2, 1, 1, 2), 2.0)]
    t = [torch.zeros(2, 1, 1, 2)] * 3
    # sample 0: G1 = 1.5, G2 = 2 -> 2.25 + 4; sample 1: G1 = 0, G2 = 2 -> 4
    assert FSPLoss()(s, t).item() == pytest.approx((6.25 + 4.0) / 2)


def test_fsp_matrix_pools_larger_map():
    f1 = torch.arange(16.0).view(1, 1, 4, 4)
    f2 = torch.ones(1, 2, 2, 2)
    expected = FSPLoss.fsp_matrix(F.avg_pool2d(f1, 2), f2)
    torch.testing.assert_close(FSPLoss.fsp_matrix(f1, f2), expected)
    assert expected.shape == (1, 1, 2)
    assert expected[0, 0, 0].item() == pytest.approx(7.5)


@pytest.mark.parametrize("dims", DIMS)
def test_fsp_contract_zero_and_mixed_sizes(dims):
    s = [torch.randn(_shape(2, 3, dims, 4)), torch.randn(_shape(2, 4, dims, 2)), torch.randn(_shape(2, 2, dims, 2))]
    t = [torch.randn(_shape(2, 3, dims, 8)), torch.randn(_shape(2, 4, dims, 4)), torch.randn(_shape(2, 2, dims, 4))]
    check_loss_contract(FSPLoss(), s, t)
    assert FSPLoss()(s, [x.clone() for x in s]).item() == pytest.approx(0.0, abs=1e-7)


def test_fsp_errors():
    a, b = torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4)
    with pytest.raises(ValueError, match="at least 2"):
        FSPLoss()([a], [a])
    with pytest.raises(ValueError, match="same number"):
        FSPLoss()([a, a], [a, a, a])
    with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\(2, 3, 5\)"):
        FSPLoss()([a, a], [a, b])
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(1, 3, 4, 4\)"):
        FSPLoss()([a, a], [torch.zeros(1, 3, 4, 4)] * 2)
    with pytest.raises(TypeError, match="list or tuple"):
        FSPLoss()(a, a)


# ---------------------------------------------------------------- FeatureAlignLoss


def test_feature_align_hand_computed():
    # 1x2 teacher map [1, 3] resized (bilinear, align_corners=False) to 1x1 -> 2; student 0 -> MSE 4
    loss = FeatureAlignLoss(1, 1, 2)
    _set_identity(loss.align)
    value = loss(torch.zeros(1, 1, 1, 1), torch.tensor([[[[1.0, 3.0]]]]))
    assert value.item() == pytest.approx(4.0)


@pytest.mark.parametrize("dims", DIMS)
def test_feature_align_zero_with_identity_conv(dims):
    loss = FeatureAlignLoss(3, 3, dims)
    _set_identity(loss.align)
    x = torch.randn(_shape(2, 3, dims))
    assert loss(x, x.clone()).item() == pytest.approx(0.0, abs=1e-7)
    # constant teacher maps stay constant through the resize
    t = torch.ones(_shape(2, 3, dims, 8))
    assert loss(torch.ones(_shape(2, 3, dims, 4)), t).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("dims", DIMS)
def test_feature_align_resizes_like_interpolate(dims):
    loss = FeatureAlignLoss(2, 3, dims)
    s, t = torch.randn(_shape(2, 2, dims, 4)), torch.randn(_shape(2, 3, dims, 6))
    mode = "bilinear" if dims == 2 else "trilinear"
    aligned = F.interpolate(loss.align(t), size=s.shape[2:], mode=mode, align_corners=False)
    torch.testing.assert_close(loss(s, t), F.mse_loss(s, aligned))


@pytest.mark.parametrize("dims", DIMS)
def test_feature_align_contract_conv_learns(dims):
    loss = FeatureAlignLoss(2, 3, dims)
    check_loss_contract(loss, torch.randn(_shape(2, 2, dims, 4)), torch.randn(_shape(2, 3, dims, 2)))
    assert loss.align.weight.grad is not None and loss.align.weight.grad.abs().sum() > 0


def test_feature_align_errors():
    loss = FeatureAlignLoss(2, 3, 3)
    with pytest.raises(ValueError, match=r"\(2, 2, 4, 4, 4\).*\(1, 3, 4, 4, 4\)"):
        loss(torch.zeros(2, 2, 4, 4, 4), torch.zeros(1, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="teacher_channels=3"):
        loss(torch.zeros(2, 2, 4, 4, 4), torch.zeros(2, 2, 4, 4, 4))
    with pytest.raises(ValueError, match="dimensions"):
        loss(torch.zeros(2, 2, 4, 4), torch.zeros(2, 3, 4, 4))


# ---------------------------------------------------------------- CosineAlignLoss


def test_cosine_align_hand_computed():
    # pooled s = [1, 0], t = [1, 1] -> 1 - 1/sqrt(2); second sample identical direction -> 0
    s = torch.tensor([[1.0, 0.0], [2.0, 2.0]]).view(2, 2, 1, 1).expand(2, 2, 3, 3)
    t = torch.tensor([[1.0, 1.0], [1.0, 1.0]]).view(2, 2, 1, 1).expand(2, 2, 2, 2)
    expected = (1 - 1 / math.sqrt(2)) / 2
    assert CosineAlignLoss()(s, t).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("dims", DIMS)
def test_cosine_align_contract_zero_and_scale(dims):
    s, t = torch.randn(_shape(2, 3, dims)), torch.randn(_shape(2, 3, dims, 2))
    loss = CosineAlignLoss()
    check_loss_contract(loss, s, t)
    torch.testing.assert_close(loss(5 * s, 0.1 * t), loss(s, t))
    assert loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    check_loss_contract(loss, torch.randn(2, 3), torch.randn(2, 3))


def test_cosine_align_errors():
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 5, 4, 4\)"):
        CosineAlignLoss()(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match="eps"):
        CosineAlignLoss(eps=0)
