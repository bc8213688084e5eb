from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medkd_ext.losses import KDLoss, MultiTeacherKDLoss
from tests.losses._checks import check_loss_contract

SHAPES = [(3, 4), (2, 3, 5, 4), (2, 3, 3, 4, 2)]


def _kl_reference(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    """T^2 * KL with torch's F.kl_div on (N, C) rows, N = batch x spatial positions."""
    c = student.shape[1]
    s = student.movedim(1, -1).reshape(-1, c)
    q = F.softmax(teacher.movedim(1, -1).reshape(-1, c) / t, dim=1)
    return t * t * F.kl_div(F.log_softmax(s / t, dim=1), q, reduction="batchmean")


def _bernoulli_reference(student: torch.Tensor, q: torch.Tensor, t: float) -> torch.Tensor:
    p = torch.sigmoid(student / t)
    kl = q * torch.log(q / p) + (1 - q) * torch.log((1 - q) / (1 - p))
    return t * t * kl.mean()  # averaged over classes too, as BCEWithLogitsLoss averages them


def test_kd_hand_computed():
    # teacher/T = [ln 3, 0] -> q = [0.75, 0.25]; student uniform -> p = [0.5, 0.5]
    t = 2.0
    teacher = torch.tensor([[2 * math.log(3.0), 0.0]])
    student = torch.zeros(1, 2)
    expected = t * t * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    assert KDLoss(temperature=t)(student, teacher).item() == pytest.approx(expected, rel=1e-6)


def test_kd_multi_label_hand_computed():
    # class 0: sigmoid(t/T) = 0.8 vs 0.5; class 1: equal -> contributes 0; the mean over the 2 classes
    t = 3.0
    teacher = torch.tensor([[t * math.log(4.0), 0.7]])
    student = torch.tensor([[0.0, 0.7]])
    expected = t * t * (0.8 * math.log(1.6) + 0.2 * math.log(0.4)) / 2
    value = KDLoss(temperature=t, multi_label=True)(student, teacher)
    assert value.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("loss", [KDLoss(2.0, multi_label=True), MultiTeacherKDLoss(2.0, multi_label=True)])
def test_multi_label_kd_weighs_against_bce_alike_for_any_number_of_classes(loss):
    """Repeating every class leaves both BCE (averaged over classes) and the multi-label KD term unchanged, so
    ``alpha`` balances them the same way for 2 classes or 14, as it balances KL and cross-entropy in multi-class."""
    torch.manual_seed(4)
    s, t, y = torch.randn(3, 2), torch.randn(3, 2), torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    teacher = [t] if isinstance(loss, MultiTeacherKDLoss) else t
    teacher7 = [t.repeat(1, 7)] if isinstance(loss, MultiTeacherKDLoss) else t.repeat(1, 7)
    bce = torch.nn.BCEWithLogitsLoss()
    torch.testing.assert_close(bce(s.repeat(1, 7), y.repeat(1, 7)), bce(s, y))
    torch.testing.assert_close(loss(s.repeat(1, 7), teacher7), loss(s, teacher))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_equals_torch_kl_div(shape, temperature):
    torch.manual_seed(0)
    s, t = torch.randn(shape), torch.randn(shape) * 3
    torch.testing.assert_close(KDLoss(temperature)(s, t), _kl_reference(s, t, temperature))


@pytest.mark.parametrize("shape", SHAPES)
def test_kd_multi_label_matches_reference(shape):
    torch.manual_seed(1)
    s, t = torch.randn(shape), torch.randn(shape)
    expected = _bernoulli_reference(s, torch.sigmoid(t / 2.0), 2.0)
    torch.testing.assert_close(KDLoss(2.0, multi_label=True)(s, t), expected)


def test_kd_invariant_to_constant_per_row():
    torch.manual_seed(2)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    shift = torch.tensor([[3.0], [-7.0], [0.5], [100.0]])
    loss = KDLoss(4.0)
    torch.testing.assert_close(loss(s + shift, t), loss(s, t))
    torch.testing.assert_close(loss(s, t - shift), loss(s, t))


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_kd_zero_for_equal_inputs(shape, multi_label):
    x = torch.randn(shape)
    assert KDLoss(4.0, multi_label=multi_label)(x, x.clone()).abs().item() < 1e-6


@pytest.mark.parametrize("multi_label", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_kd_contract(shape, multi_label):
    check_loss_contract(KDLoss(4.0, multi_label=multi_label), torch.randn(shape), torch.randn(shape))


def test_kd_stable_for_extreme_logits():
    s = torch.tensor([[1000.0, -1000.0, 0.0]])
    t = torch.tensor([[-1000.0, 1000.0, 0.0]])
    assert torch.isfinite(KDLoss(1.0)(s, t))
    assert torch.isfinite(KDLoss(1.0, multi_label=True)(s, t))


def test_kd_errors():
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        KDLoss()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0.0)
    with pytest.raises(ValueError, match="dimensions"):
        KDLoss()(torch.zeros(3), torch.zeros(3))
    with pytest.raises(TypeError, match="teacher"):
        KDLoss()(torch.zeros(2, 3), [torch.zeros(2, 3)])


# ---------------------------------------------------------------- MultiTeacherKDLoss


def _teachers(shape, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g) * 2 for _ in range(k)]


@pytest.mark.parametrize("shape", SHAPES)
def test_multi_exponential_is_weighted_sum_of_kd(shape):
    s, teachers = torch.randn(shape), _teachers(shape, 3)
    loss = MultiTeacherKDLoss(2.0, generator=torch.Generator().manual_seed(5))
    value = loss(s, teachers)
    kd = KDLoss(2.0)
    expected = sum(w * kd(s, t) for w, t in zip(loss.last_weights, teachers))
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("multi_label", [False, True])
def test_multi_uniform_equals_kl_to_averaged_distribution(multi_label):
    shape = (3, 4, 2, 2)
    s, teachers = torch.randn(shape), _teachers(shape, 3, seed=1)
    loss = MultiTeacherKDLoss(2.0, weighting="uniform", multi_label=multi_label)
    value = loss(s, teachers)
    if multi_label:
        q = torch.stack([torch.sigmoid(t / 2.0) for t in teachers]).mean(0)
        expected = _bernoulli_reference(s, q, 2.0)
    else:
        q = torch.stack([F.softmax(t / 2.0, dim=1) for t in teachers]).mean(0)
        log_p = F.log_softmax(s / 2.0, dim=1).movedim(1, -1).reshape(-1, 4)
        expected = 4.0 * F.kl_div(log_p, q.movedim(1, -1).reshape(-1, 4), reduction="batchmean")
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(loss.last_weights, torch.full((3,), 1 / 3))
    # not the same as averaging the per-teacher KLs
    per_teacher = sum(KDLoss(2.0, multi_label=multi_label)(s, t) for t in teachers) / 3
    assert value < per_teacher


def test_multi_multi_label_weighted_bernoulli():
    shape = (2, 5)
    s, teachers = torch.randn(shape), _teachers(shape, 2, seed=3)
    loss = MultiTeacherKDLoss(1.5, multi_label=True, generator=torch.Generator().manual_seed(0))
    value = loss(s, teachers)
    expected = sum(
        w * _bernoulli_reference(s, torch.sigmoid(t / 1.5), 1.5) for w, t in zip(loss.last_weights, teachers)
    )
    torch.testing.assert_close(value, expected)


def test_multi_weights_positive_normalised_and_unbiased():
    k = 4
    loss = MultiTeacherKDLoss(1.0, generator=torch.Generator().manual_seed(123))
    s, teachers = torch.randn(2, 3), _teachers((2, 3), k)
    draws = []
    for _ in range(2000):
        loss(s, teachers)
        draws.append(loss.last_weights)
    draws = torch.stack(draws)
    assert (draws > 0).all()
    torch.testing.assert_close(draws.sum(1), torch.ones(2000, dtype=draws.dtype))
    assert torch.allclose(draws.mean(0), torch.full((k,), 1 / k, dtype=draws.dtype), atol=0.02)
    # one teacher dominates at a time (Dirichlet(1) weights), unlike uniform weighting
    assert draws.max(1).values.mean() > 0.45


def test_multi_weights_fresh_each_call_and_reproducible():
    s, teachers = torch.randn(2, 3), _teachers((2, 3), 3)
    loss = MultiTeacherKDLoss(2.0, generator=torch.Generator().manual_seed(7))
    assert loss.last_weights is None
    v1 = loss(s, teachers)
    w1 = loss.last_weights.clone()
    v2 = loss(s, teachers)
    w2 = loss.last_weights.clone()
    assert w1.shape == (3,) and not torch.allclose(w1, w2) and not torch.isclose(v1, v2)
    assert w1.sum().item() == pytest.approx(1.0) and (w1 > 0).all()
    again = MultiTeacherKDLoss(2.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(again(s, teachers), v1)
    torch.testing.assert_close(again.last_weights, w1)
    # without a generator the global RNG is used, so torch.manual_seed makes it reproducible
    torch.manual_seed(11)
    a = MultiTeacherKDLoss(2.0)(s, teachers)
    torch.manual_seed(11)
    torch.testing.assert_close(MultiTeacherKDLoss(2.0)(s, teachers), a)


def test_multi_single_teacher_equals_kd():
    s, t = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    for weighting in ("exponential", "uniform"):
        torch.testing.assert_close(MultiTeacherKDLoss(3.0, weighting=weighting)(s, [t]), KDLoss(3.0)(s, t))


@pytest.mark.parametrize("weighting", ["exponential", "uniform"])
@pytest.mark.parametrize("shape", SHAPES)
def test_multi_contract(shape, weighting):
    loss = MultiTeacherKDLoss(2.0, weighting=weighting)
    check_loss_contract(loss, torch.randn(shape), _teachers(shape, 3))


def test_multi_zero_when_all_teachers_equal_student():
    s = torch.randn(2, 3, 4, 4)
    assert MultiTeacherKDLoss(2.0)(s, [s.clone(), s.clone()]).abs().item() < 1e-6


def test_multi_errors():
    s = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="empty"):
        MultiTeacherKDLoss(1.0)(s, [])
    with pytest.raises(ValueError, match=r"\(2, 3\).*teacher\[1\].*\(2, 4\)"):
        MultiTeacherKDLoss(1.0)(s, [torch.zeros(2, 3), torch.zeros(2, 4)])
    with pytest.raises(TypeError, match="list or tuple"):
        MultiTeacherKDLoss(1.0)(s, torch.zeros(2, 2, 3))
    with pytest.raises(ValueError, match="weighting"):
        MultiTeacherKDLoss(1.0, weighting="softmax")
    with pytest.raises(TypeError, match="generator"):
        MultiTeacherKDLoss(1.0, generator=0)
    with pytest.raises(ValueError, match="temperature"):
        MultiTeacherKDLoss(-1.0)
