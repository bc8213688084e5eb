from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medkd_ext.losses import EnsembleKDLoss, KDLoss, MutualLearningLoss
from tests.losses._checks import check_loss_contract


def _kl(target_logits: torch.Tensor, student_logits: torch.Tensor, t: float) -> torch.Tensor:
    q = F.softmax(target_logits / t, dim=1)
    return (q * (q.log() - F.log_softmax(student_logits / t, dim=1))).sum(1).mean()


def test_mutual_learning_loss_is_the_mean_peer_kl_times_t_squared():
    torch.manual_seed(0)
    s, p1, p2 = torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4)
    value = MutualLearningLoss(temperature=4.0)(s, [p1, p2])
    expected = 16.0 * (_kl(p1, s, 4.0) + _kl(p2, s, 4.0)) / 2
    torch.testing.assert_close(value, expected)
    # a cohort of two: one peer, as a tensor or a list; T = 1 is the paper's plain KL
    torch.testing.assert_close(MutualLearningLoss(1.0)(s, p1), _kl(p1, s, 1.0))
    torch.testing.assert_close(MutualLearningLoss(4.0)(s, [p1]), MutualLearningLoss(4.0)(s, p1))


@pytest.mark.parametrize("shape", [(3, 4), (2, 3, 5, 5), (2, 3, 4, 4, 4)])
def test_mutual_learning_loss_contract(shape):
    torch.manual_seed(1)
    loss = MutualLearningLoss(4.0)
    value = check_loss_contract(loss, torch.randn(shape), [torch.randn(shape), torch.randn(shape)])
    assert value > 0
    same = torch.randn(shape)
    assert loss(same, [same.clone()]).abs() < 1e-5


def test_ensemble_kd_loss_sums_the_branch_kls_to_the_ensemble():
    torch.manual_seed(2)
    branches = [torch.randn(6, 3) for _ in range(3)]
    ensemble = torch.randn(6, 3)
    loss = EnsembleKDLoss(temperature=3.0)
    expected = sum(9.0 * _kl(ensemble, b, 3.0) for b in branches)
    torch.testing.assert_close(loss(branches, ensemble), expected)
    torch.testing.assert_close(loss(torch.stack(branches, dim=1), ensemble), expected)
    torch.testing.assert_close(loss(branches, ensemble), sum(KDLoss(3.0)(b, ensemble) for b in branches))


def test_ensemble_kd_loss_contract_and_detached_ensemble():
    torch.manual_seed(3)
    check_loss_contract(EnsembleKDLoss(3.0), [torch.randn(4, 5), torch.randn(4, 5)], torch.randn(4, 5))
    weights = torch.rand(4, 2, requires_grad=True)
    branches = [torch.randn(4, 5, requires_grad=True) for _ in range(2)]
    ensemble = weights[:, :1] * branches[0] + weights[:, 1:] * branches[1]
    EnsembleKDLoss(3.0)(branches, ensemble).backward()
    assert weights.grad is None  # the ensemble is a target: no gradient to the gate
    assert all(b.grad is not None and b.grad.abs().sum() > 0 for b in branches)


def test_multi_label_variant_uses_bernoulli_kl():
    torch.manual_seed(4)
    s, p = torch.randn(3, 5), torch.randn(3, 5)
    torch.testing.assert_close(MutualLearningLoss(2.0, multi_label=True)(s, [p]), KDLoss(2.0, multi_label=True)(s, p))
    torch.testing.assert_close(EnsembleKDLoss(2.0, multi_label=True)([s], p), KDLoss(2.0, multi_label=True)(s, p))


def test_temperature_is_settable_and_validated():
    loss = MutualLearningLoss(4.0)
    loss.temperature = 2.0
    assert loss.kd.temperature == 2.0 and loss.temperature == 2.0
    with pytest.raises(ValueError, match="temperature"):
        loss.temperature = 0.0
    with pytest.raises(ValueError, match="temperature"):
        EnsembleKDLoss(-1.0)


def test_bad_inputs_give_clear_errors():
    s = torch.randn(3, 4)
    with pytest.raises(ValueError, match="at least one peer"):
        MutualLearningLoss()(s, [])
    with pytest.raises(ValueError, match="must be equal"):
        MutualLearningLoss()(s, [torch.randn(3, 5)])
    with pytest.raises(TypeError, match="list or tuple"):
        MutualLearningLoss()(s, {"a": s})
    with pytest.raises(ValueError, match="at least one branch"):
        EnsembleKDLoss()([], s)
    with pytest.raises(ValueError, match="must be equal"):
        EnsembleKDLoss()([torch.randn(3, 5)], s)
