"""Input checks and small tensor helpers shared by the distillation losses (private)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medkd_ext.utils import clone_inference_tensors

__all__: list[str] = []


def check_tensor(x: object, loss: str, name: str, min_ndim: int = 2, max_ndim: int | None = None) -> torch.Tensor:
    """Raise TypeError/ValueError unless ``x`` is a floating-point tensor with ``min_ndim <= ndim <= max_ndim``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{loss}: {name} must be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise TypeError(f"{loss}: {name} must be a floating-point tensor, got dtype {x.dtype}.")
    if x.ndim < min_ndim or (max_ndim is not None and x.ndim > max_ndim):
        expected = f"{min_ndim}" if max_ndim == min_ndim else f"{min_ndim} to {max_ndim or 'any'}"
        raise ValueError(
            f"{loss}: {name} must have {expected} dimensions (B, C, *spatial), got shape {tuple(x.shape)}."
        )
    return x


def check_same_shape(loss: str, student: torch.Tensor, teacher: torch.Tensor, what: str = "teacher") -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{loss}: student shape {tuple(student.shape)} and {what} shape {tuple(teacher.shape)} must be equal."
        )


def check_same_batch(loss: str, student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape[0] != teacher.shape[0]:
        raise ValueError(
            f"{loss}: student shape {tuple(student.shape)} and teacher shape {tuple(teacher.shape)} must have the "
            "same batch size (dimension 0)."
        )


def check_sequence(x: object, loss: str, name: str) -> Sequence[torch.Tensor]:
    if isinstance(x, torch.Tensor) or not isinstance(x, Sequence):
        raise TypeError(f"{loss}: {name} must be a list or tuple of tensors, got {type(x).__name__}.")
    return x


def as_target(teacher: torch.Tensor) -> torch.Tensor:
    """The teacher as a regression target: no autograd history, and usable in autograd even if it was created
    under ``torch.inference_mode`` (inference tensors cannot be saved for backward). The caller's tensor is
    neither changed nor cut from its own graph."""
    return clone_inference_tensors(teacher.detach())


def common_spatial_size(a: torch.Tensor, b: torch.Tensor) -> tuple[int, ...]:
    """Per-axis minimum of the spatial sizes of two ``(B, C, *spatial)`` tensors."""
    return tuple(min(i, j) for i, j in zip(a.shape[2:], b.shape[2:]))


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """``(B, B) -> (B, B - 1)``: each row without its diagonal entry."""
    b = m.shape[0]
    mask = ~torch.eye(b, dtype=torch.bool, device=m.device)
    return m[mask].view(b, b - 1)


def check_positive(value: float, loss: str, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{loss}: {name} must be a positive number, got {value!r}.")
    return float(value)
