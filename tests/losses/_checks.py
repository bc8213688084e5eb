"""Checks every distillation loss must pass: scalar output, gradient to the student only, inputs untouched,
teachers produced under ``torch.inference_mode`` accepted."""

from __future__ import annotations

import torch


def _tensors(x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return list(x) if isinstance(x, (list, tuple)) else [x]


def _leaf(x, requires_grad: bool):
    if isinstance(x, (list, tuple)):
        return [t.detach().clone().requires_grad_(requires_grad) for t in x]
    return x.detach().clone().requires_grad_(requires_grad)


def check_loss_contract(loss: torch.nn.Module, student, teacher) -> torch.Tensor:
    """Run ``loss`` on leaf copies of the inputs and assert the contract shared by every loss; return the value."""
    student, teacher = _leaf(student, True), _leaf(teacher, True)
    before = [t.detach().clone() for t in _tensors(student) + _tensors(teacher)]
    value = loss(student, teacher)
    assert isinstance(value, torch.Tensor) and value.ndim == 0
    assert torch.isfinite(value)
    value.backward()
    for t in _tensors(teacher):
        assert t.grad is None or not t.grad.any(), "gradient reached a teacher tensor"
    grads = [s.grad for s in _tensors(student)]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads), "no gradient reached the student"
    for x, x0 in zip(_tensors(student) + _tensors(teacher), before):
        assert torch.equal(x.detach(), x0), "an input was mutated"
    # teacher outputs computed under inference_mode (frozen teachers) must be usable as they are
    with torch.inference_mode():
        frozen = [t.detach().clone() for t in _tensors(teacher)]
    frozen = frozen if isinstance(teacher, (list, tuple)) else frozen[0]
    s2 = _leaf(student, True)
    value2 = loss(s2, frozen)
    value2.backward()
    if not hasattr(loss, "last_weights"):  # stochastic losses draw new weights
        torch.testing.assert_close(value2.detach(), value.detach())
    return value.detach()
