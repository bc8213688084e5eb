from __future__ import annotations

import pytest
import torch

import medkd_ext.losses.adversarial as adversarial
import medkd_ext.networks as networks
from medkd_ext.networks import DomainDiscriminator


def test_gradient_reversal_is_reexported():
    assert networks.GradientReversal is adversarial.GradientReversal
    assert isinstance(DomainDiscriminator(4, 2).grl, adversarial.GradientReversal)


@pytest.mark.parametrize(
    "spatial_dims, shape",
    [(2, (3, 4, 16, 16)), (2, (2, 4, 1, 1)), (2, (2, 4, 5, 7)), (3, (2, 4, 6, 5, 1)), (1, (2, 4, 9))],
)
@pytest.mark.parametrize("num_domains", [1, 3])
def test_output_shape(spatial_dims, shape, num_domains):
    disc = DomainDiscriminator(4, spatial_dims, hidden_channels=(8, 8, 4), num_domains=num_domains)
    out = disc(torch.randn(shape))
    assert out.shape == (shape[0], num_domains)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("norm", [None, "instance", ("group", {"num_groups": 2})])
def test_other_norms(norm):
    disc = DomainDiscriminator(3, 3, hidden_channels=(4,), norm=norm, dropout=0.2)
    assert disc(torch.randn(2, 3, 4, 4, 4)).shape == (2, 1)


def _reference_logits(disc: DomainDiscriminator, x: torch.Tensor) -> torch.Tensor:
    return disc.out(disc.flatten(disc.pool(disc.blocks(x))))  # the same network without gradient reversal


@pytest.mark.parametrize("lambda_", [1.0, 0.25, 0.0])
def test_gradient_to_features_is_reversed_and_scaled(lambda_):
    torch.manual_seed(0)
    disc = DomainDiscriminator(3, 2, hidden_channels=(4, 4), grl_lambda=1.0).eval()
    disc.grl.lambda_ = lambda_
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    out = disc(x)
    (grad_x,) = torch.autograd.grad(out.sum(), x)
    x_ref = x.detach().clone().requires_grad_(True)
    ref = _reference_logits(disc, x_ref)
    torch.testing.assert_close(out, ref)
    (grad_ref,) = torch.autograd.grad(ref.sum(), x_ref)
    assert grad_ref.abs().sum() > 0
    torch.testing.assert_close(grad_x, -lambda_ * grad_ref)


def test_discriminator_parameters_get_ordinary_gradients():
    torch.manual_seed(0)
    disc = DomainDiscriminator(3, 2, hidden_channels=(4,)).eval()
    x = torch.randn(2, 3, 8, 8)
    disc(x).sum().backward()
    grad = disc.out.weight.grad.clone()
    disc.zero_grad()
    _reference_logits(disc, x).sum().backward()
    torch.testing.assert_close(disc.out.weight.grad, grad)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"in_channels": 0}, "in_channels"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"hidden_channels": ()}, "hidden_channels"),
        ({"hidden_channels": (8, 0)}, "hidden_channels"),
        ({"hidden_channels": [8, True]}, r"hidden_channels must be .* positive ints, got \[8, True\]"),
        ({"num_domains": 0}, "num_domains"),
        ({"grl_lambda": -1.0}, "grl_lambda"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"in_channels": 4, "spatial_dims": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        DomainDiscriminator(**args)


def test_wrong_input_rank():
    with pytest.raises(ValueError, match=r"spatial_dims=3.*\(2, 4, 8, 8\)"):
        DomainDiscriminator(4, 3)(torch.randn(2, 4, 8, 8))
