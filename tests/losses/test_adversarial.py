from __future__ import annotations

import math

import pytest
import torch

from medkd_ext.losses import GradientReversal, dann_lambda, grad_reverse


def test_dann_lambda_values():
    assert dann_lambda(0.0) == 0.0
    assert dann_lambda(0.5) == pytest.approx(0.98661, abs=5e-6)
    assert dann_lambda(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    assert dann_lambda(0.5, gamma=1.0) == pytest.approx(2 / (1 + math.exp(-0.5)) - 1)
    values = [dann_lambda(p / 10) for p in range(11)]
    assert all(a < b for a, b in zip(values, values[1:])) and values[-1] < 1.0


@pytest.mark.parametrize("progress", [-0.1, 1.5, float("nan")])
def test_dann_lambda_rejects_progress_outside_unit_interval(progress):
    with pytest.raises(ValueError, match="progress"):
        dann_lambda(progress)


def test_dann_lambda_rejects_non_positive_gamma():
    with pytest.raises(ValueError, match="gamma"):
        dann_lambda(0.5, gamma=0.0)


@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 4, 4), (1, 2, 3, 4, 5)])
@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_gradient_reversal_identity_forward_and_reversed_gradient(shape, lam):
    x = torch.randn(shape, requires_grad=True)
    layer = GradientReversal(lam)
    y = layer(x)
    assert torch.equal(y, x)
    upstream = torch.randn(shape)
    (y * upstream).sum().backward()
    torch.testing.assert_close(x.grad, -lam * upstream)


def test_gradient_reversal_lambda_is_settable_by_handler():
    layer = GradientReversal()
    assert layer.lambda_ == 1.0
    layer.lambda_ = dann_lambda(0.5)
    x = torch.ones(3, requires_grad=True)
    layer(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full((3,), -dann_lambda(0.5)))
    assert "lambda_=" in repr(layer)


def test_grad_reverse_functional_and_upstream_graph():
    w = torch.tensor(2.0, requires_grad=True)
    x = w * torch.ones(4)
    grad_reverse(x, 0.5).pow(2).sum().backward()
    # d/dw sum((w)^2) = 2 * w * 4 = 16, reversed and scaled by 0.5
    assert w.grad.item() == pytest.approx(-8.0)


def test_gradient_reversal_does_not_mutate_input():
    x = torch.randn(2, 3)
    x0 = x.clone()
    GradientReversal(0.7)(x)
    assert torch.equal(x, x0)


def test_gradient_reversal_rejects_negative_lambda():
    with pytest.raises(ValueError, match="lambda_"):
        GradientReversal(-0.1)
