from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medkd_ext.losses import AttentionTransferLoss
from tests.losses._checks import check_loss_contract

SHAPES = [(2, 3, 4, 4), (2, 3, 3, 4, 2)]


def _zagoruyko(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The reference implementation's formula, p = 2."""

    def at(x):
        return F.normalize(x.pow(2).mean(1).view(x.size(0), -1))

    return (at(s) - at(t)).pow(2).mean()


def test_map_hand_computed():
    # a_s = [1, 0], a_t = [1, 1]/sqrt(2): mean of squared differences = (2 - sqrt(2)) / 2
    s = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[1.0, -1.0]]]])
    expected = (2 - math.sqrt(2)) / 2
    assert AttentionTransferLoss()(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_map_p1_hand_computed():
    # p = 1: a_s = mean_c |A| = [1, 0] ; a_t = [2, 2] -> normalised [1, 1]/sqrt(2)
    s = torch.tensor([[[[2.0, 0.0]], [[0.0, 0.0]]]])
    t = torch.tensor([[[[2.0, -2.0]], [[2.0, 2.0]]]])
    expected = (2 - math.sqrt(2)) / 2
    assert AttentionTransferLoss(p=1)(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_plane_hand_computed():
    # planes s: [1, 0], [0, 1]; t: [1, 0], [3, 0] -> distances 0 and sqrt(2); mean over C = sqrt(2)/2
    s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])
    t = torch.tensor([[[[1.0, 0.0]], [[3.0, 0.0]]]])
    assert AttentionTransferLoss(mode="plane")(s, t).item() == pytest.approx(math.sqrt(2) / 2, rel=1e-6)


def test_plane_uses_signed_planes_not_powers():
    # eq. 1 normalises the plane itself: a sign flip of a teacher plane changes the loss (|.|^p would not)
    s = torch.tensor([[[[1.0, 2.0]]]])
    loss = AttentionTransferLoss(mode="plane")
    assert loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(s, -s).item() == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
def test_map_equals_reference_code(shape):
    torch.manual_seed(0)
    s, t = torch.randn(shape), torch.randn(shape)
    torch.testing.assert_close(AttentionTransferLoss()(s, t), _zagoruyko(s, t))


@pytest.mark.parametrize("shape", SHAPES)
def test_map_invariances(shape):
    torch.manual_seed(1)
    s, t = torch.randn(shape), torch.randn(shape[:1] + (5,) + shape[2:])
    loss = AttentionTransferLoss()
    ref = loss(s, t)
    torch.testing.assert_close(loss(3.7 * s, t), ref)
    torch.testing.assert_close(loss(s, 0.01 * t), ref)
    torch.testing.assert_close(loss(s[:, [2, 0, 1]], t), ref)
    torch.testing.assert_close(loss(s, t[:, [4, 3, 2, 1, 0]]), ref)


@pytest.mark.parametrize("shape", SHAPES)
def test_plane_invariant_to_positive_scaling_of_each_plane(shape):
    torch.manual_seed(2)
    s, t = torch.randn(shape), torch.randn(shape)
    scale = torch.tensor([0.5, 2.0, 9.0]).view(1, 3, *([1] * (len(shape) - 2)))
    loss = AttentionTransferLoss(mode="plane")
    torch.testing.assert_close(loss(s * scale, t), loss(s, t))
    torch.testing.assert_close(loss(s, t * scale), loss(s, t))
    # permuting the channels of one side only is not an invariance in this mode
    assert not torch.isclose(loss(s[:, [1, 2, 0]], t), loss(s, t))


@pytest.mark.parametrize("mode", ["map", "plane"])
@pytest.mark.parametrize("shape", SHAPES)
def test_zero_for_equal_inputs(shape, mode):
    x = torch.randn(shape)
    assert AttentionTransferLoss(mode=mode)(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("mode", ["map", "plane"])
@pytest.mark.parametrize("shape", SHAPES)
def test_contract(shape, mode):
    check_loss_contract(AttentionTransferLoss(mode=mode), torch.randn(shape), torch.randn(shape))


def test_finite_gradient_at_equal_inputs_plane_mode():
    x = torch.randn(2, 3, 4, 4)
    s = x.clone().requires_grad_(True)
    AttentionTransferLoss(mode="plane")(s, x).backward()
    assert torch.isfinite(s.grad).all()


def test_map_different_spatial_size_pools_teacher_map():
    torch.manual_seed(3)
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 6, 8, 8)
    loss = AttentionTransferLoss()
    a_t = F.avg_pool2d(t.pow(2).mean(1, keepdim=True), 2)
    a_t = F.normalize(a_t.flatten(1), dim=1)
    a_s = F.normalize(s.pow(2).mean(1).flatten(1), dim=1)
    torch.testing.assert_close(loss(s, t), (a_s - a_t).pow(2).mean())
    # symmetric case: the student is the larger one
    check_loss_contract(loss, t[:, :3], s)


def test_plane_different_spatial_size_3d():
    torch.manual_seed(4)
    s, t = torch.randn(2, 3, 2, 2, 2), torch.randn(2, 3, 4, 4, 4)
    loss = AttentionTransferLoss(mode="plane")
    expected = loss(s, F.avg_pool3d(t, 2))
    torch.testing.assert_close(loss(s, t), expected)
    check_loss_contract(loss, s, t)


def test_errors():
    loss = AttentionTransferLoss(mode="plane")
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 5, 4, 4\)"):
        loss(torch.zeros(2, 3, 4, 4), torch.zeros(2, 5, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(3, 3, 4, 4\)"):
        AttentionTransferLoss()(torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 3, 4, 4\).*\(2, 3, 4, 4, 4\)"):
        AttentionTransferLoss()(torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="dimensions"):
        AttentionTransferLoss()(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="mode"):
        AttentionTransferLoss(mode="channel")
    with pytest.raises(ValueError, match="p must be"):
        AttentionTransferLoss(p=0)
