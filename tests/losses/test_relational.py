from __future__ import annotations

import math

import pytest
import torch

from medkd_ext.losses import (
    RKDAngleLoss,
    RKDDistanceLoss,
    RKDLoss,
    SimilarityKLLoss,
    SimilarityPreservingLoss,
)
from tests.losses._checks import check_loss_contract

# student and teacher differ in channels and spatial size: relational losses only need the batch to match
PAIRS = [((4, 3, 4, 4), (4, 5, 2, 2)), ((4, 3, 2, 3, 2), (4, 6, 4, 4, 4)), ((4, 7), (4, 2))]
RELATIONAL = [SimilarityPreservingLoss, RKDDistanceLoss, RKDAngleLoss, RKDLoss, lambda: SimilarityKLLoss(0.5)]


@pytest.mark.parametrize("make", RELATIONAL)
@pytest.mark.parametrize("shapes", PAIRS)
def test_contract(make, shapes):
    torch.manual_seed(0)
    check_loss_contract(make(), torch.randn(shapes[0]), torch.randn(shapes[1]))


@pytest.mark.parametrize("make", RELATIONAL)
@pytest.mark.parametrize("shape", [(4, 3, 4, 4), (4, 3, 2, 2, 2), (4, 5)])
def test_zero_for_equal_inputs(make, shape):
    x = torch.randn(shape)
    assert make()(x, x.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("make", RELATIONAL)
def test_batch_mismatch_names_both_shapes(make):
    with pytest.raises(ValueError, match=r"\(4, 3, 2, 2\).*\(5, 3, 2, 2\)"):
        make()(torch.zeros(4, 3, 2, 2), torch.zeros(5, 3, 2, 2))


# ---------------------------------------------------------------- SimilarityPreservingLoss


def test_sp_hand_computed():
    # G_s = I; G_t = all ones -> rows [1, 1]/sqrt(2)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    r = 1 / math.sqrt(2)
    expected = (2 * (1 - r) ** 2 + 2 * r**2) / 4
    assert SimilarityPreservingLoss()(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_sp_flattens_features_and_is_scale_invariant():
    torch.manual_seed(1)
    s, t = torch.randn(3, 2, 2, 2), torch.randn(3, 4, 3, 3)
    loss = SimilarityPreservingLoss()
    torch.testing.assert_close(loss(s, t), loss(s.flatten(1), t.flatten(1)))
    torch.testing.assert_close(loss(2.5 * s, t), loss(s, t))


# ---------------------------------------------------------------- RKD


def test_rkd_distance_hand_computed():
    # s = 0, 1, 2 -> d = 1, 2, 1, mean 4/3 -> 0.75, 1.5, 0.75; t = 0, 1, 3 -> d = 1, 3, 2, mean 2 -> 0.5, 1.5, 1
    s = torch.tensor([[0.0], [1.0], [2.0]])
    t = torch.tensor([[0.0], [1.0], [3.0]])
    expected = (0.5 * 0.25**2 + 0.0 + 0.5 * 0.25**2) / 3
    assert RKDDistanceLoss()(s, t).item() == pytest.approx(expected, rel=1e-6)


def test_rkd_distance_smooth_l1_linear_branch():
    # s = 0, 1, 10 -> d = 1, 10, 9 over mean 20/3; t = 0, 5, 6 -> d = 5, 6, 1 over mean 4: one |diff| >= 1
    s = torch.tensor([[0.0], [1.0], [10.0]])
    t = torch.tensor([[0.0], [5.0], [6.0]])
    ds = torch.tensor([1.0, 10.0, 9.0]) / (20.0 / 3)
    dt = torch.tensor([5.0, 6.0, 1.0]) / 4.0
    diff = (ds - dt).abs()
    assert (diff >= 1).any()
    expected = torch.where(diff < 1, 0.5 * diff**2, diff - 0.5).mean()
    assert RKDDistanceLoss()(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_rkd_angle_hand_computed():
    # student: right isosceles triangle (cosines 0, 1/sqrt2, 1/sqrt2); teacher: equilateral (all 0.5)
    s = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 0.0], [2.0, 0.0], [1.0, math.sqrt(3.0)]])
    r = 1 / math.sqrt(2)
    expected = (0.5 * 0.5**2 + 2 * 0.5 * (r - 0.5) ** 2) / 3
    assert RKDAngleLoss()(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert RKDAngleLoss().angles(s).shape == (6,)


@pytest.mark.parametrize("make", [RKDDistanceLoss, RKDAngleLoss, RKDLoss])
def test_rkd_invariant_to_scaling_and_translation(make):
    torch.manual_seed(2)
    s, t = torch.randn(5, 4), torch.randn(5, 6)
    loss = make()
    ref = loss(s, t)
    assert ref > 0
    torch.testing.assert_close(loss(3.0 * s + 1.5, t), ref)
    torch.testing.assert_close(loss(s, 0.2 * t - torch.arange(6.0)), ref)


def test_rkd_pools_features():
    torch.manual_seed(3)
    s, t = torch.randn(4, 3, 2, 2, 2), torch.randn(4, 5, 4, 4)
    for loss in (RKDDistanceLoss(), RKDAngleLoss()):
        torch.testing.assert_close(loss(s, t), loss(s.mean((2, 3, 4)), t.mean((2, 3))))


def test_rkd_combined_weights():
    torch.manual_seed(4)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    expected = 25 * RKDDistanceLoss()(s, t) + 50 * RKDAngleLoss()(s, t)
    torch.testing.assert_close(RKDLoss()(s, t), expected)
    expected = 2 * RKDDistanceLoss()(s, t)
    torch.testing.assert_close(RKDLoss(distance_weight=2, angle_weight=0)(s, t), expected)


def test_rkd_duplicate_samples_keep_gradients_finite():
    s = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    t = torch.randn(3, 2)
    (RKDDistanceLoss()(s, t) + RKDAngleLoss()(s, t)).backward()
    assert torch.isfinite(s.grad).all()


def test_rkd_errors():
    with pytest.raises(ValueError, match="at least 2"):
        RKDDistanceLoss()(torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least 3"):
        RKDAngleLoss()(torch.zeros(2, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="angle_weight"):
        RKDLoss(angle_weight=-1)


# ---------------------------------------------------------------- SimilarityKLLoss


def _similarity_kl_reference(s: torch.Tensor, t: torch.Tensor, temperature: float) -> float:
    """Row by row, with plain Python over j != i."""
    b = s.shape[0]
    total = 0.0
    for i in range(b):
        others = [j for j in range(b) if j != i]

        def dist(e, i=i, others=others):
            sims = [torch.nn.functional.cosine_similarity(e[i], e[j], dim=0).item() / temperature for j in others]
            z = sum(math.exp(v) for v in sims)
            return [math.exp(v) / z for v in sims]

        p_t, p_s = dist(t), dist(s)
        total += sum(a * math.log(a / b_) for a, b_ in zip(p_t, p_s))
    return total / b


def test_similarity_kl_hand_computed():
    # student at 0, 90, 180 degrees: rows 0 and 2 see similarities (0, -1) -> (sigma(1), 1 - sigma(1)), row 1 sees
    # (0, 0) -> uniform; teacher at 0, 120, 240 degrees: all similarities -1/2 -> every row uniform (T = 1)
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0], [-0.5, math.sqrt(3) / 2], [-0.5, -math.sqrt(3) / 2]])
    sig = 1 / (1 + math.exp(-1))
    row = 0.5 * math.log(0.5 / sig) + 0.5 * math.log(0.5 / (1 - sig))
    expected = 2 * row / 3
    assert SimilarityKLLoss(1.0)(s, t).item() == pytest.approx(expected, rel=1e-5)
    assert _similarity_kl_reference(s, t, 1.0) == pytest.approx(expected, rel=1e-5)


def test_similarity_kl_matches_reference_on_features():
    torch.manual_seed(5)
    s, t = torch.randn(5, 3, 2, 2), torch.randn(5, 4, 3, 3, 3)
    value = SimilarityKLLoss(0.3)(s, t)
    expected = _similarity_kl_reference(s.mean((2, 3)), t.mean((2, 3, 4)), 0.3)
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_similarity_kl_temperature_is_mutable_and_validated():
    torch.manual_seed(6)
    s, t = torch.randn(4, 3), torch.randn(4, 3)
    loss = SimilarityKLLoss(1.0)
    v1 = loss(s, t)
    loss.temperature = 0.1
    assert loss.temperature == 0.1
    assert loss(s, t).item() == pytest.approx(_similarity_kl_reference(s, t, 0.1), rel=1e-4)
    assert not torch.isclose(loss(s, t), v1)
    with pytest.raises(ValueError, match="temperature"):
        loss.temperature = 0.0
    with pytest.raises(ValueError, match="temperature"):
        SimilarityKLLoss(-2.0)
    assert "temperature" not in loss.state_dict()


def test_similarity_kl_scale_invariant_and_needs_two_samples():
    s, t = torch.randn(3, 4), torch.randn(3, 4)
    loss = SimilarityKLLoss(0.5)
    torch.testing.assert_close(loss(7 * s, t), loss(s, t))
    with pytest.raises(ValueError, match="at least 2"):
        loss(torch.zeros(1, 4), torch.zeros(1, 4))
