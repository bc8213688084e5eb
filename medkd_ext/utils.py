"""Small helpers shared by the subpackages of ``medkd_ext``: argument checks and tensor utilities.

Each is defined here once and imported where it is needed (networks, losses, engines, transforms, metrics).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

__all__ = [
    "adaptive_avg_pool",
    "check_positive_int",
    "check_positive_ints",
    "clone_inference_tensors",
    "global_avg_pool",
    "interpolation_mode",
    "is_positive_int",
]

_INTERPOLATION_MODES = {1: "linear", 2: "bilinear", 3: "trilinear"}
_ADAPTIVE_AVG_POOLS = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def is_positive_int(value: Any) -> bool:
    """Whether ``value`` is a Python ``int`` of at least 1; ``bool`` is not accepted as an int."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive_int(value: Any, owner: str, name: str) -> int:
    """Return ``value`` if :func:`is_positive_int`, else raise ``ValueError`` naming the argument and the value.

    Args:
        value: the argument to check.
        owner: the class or function that takes the argument, first word of the message.
        name: the argument's name.

    Returns:
        ``value``, unchanged.

    Raises:
        ValueError: ``"<owner>: <name> must be a positive int, got <value!r>."``
    """
    if not is_positive_int(value):
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}.")
    return value


def check_positive_ints(values: Any, owner: str, name: str) -> tuple[int, ...]:
    """Return ``tuple(values)`` if it is non-empty and every entry :func:`is_positive_int`, else raise ``ValueError``.

    Args:
        values: the argument to check, a sequence of ints.
        owner: the class or function that takes the argument, first word of the message.
        name: the argument's name.

    Returns:
        the entries of ``values`` as a tuple.

    Raises:
        ValueError: ``"<owner>: <name> must be a non-empty sequence of positive ints, got <values!r>."``
    """
    entries = tuple(values) if isinstance(values, Iterable) and not isinstance(values, (str, bytes)) else ()
    if not entries or not all(is_positive_int(v) for v in entries):
        raise ValueError(f"{owner}: {name} must be a non-empty sequence of positive ints, got {values!r}.")
    return entries


def interpolation_mode(spatial_dims: int) -> str:
    """The ``torch.nn.functional.interpolate`` mode that is linear in every axis: ``"linear"``, ``"bilinear"`` or
    ``"trilinear"`` for ``spatial_dims`` 1, 2 or 3.

    Raises:
        ValueError: ``spatial_dims`` is not 1, 2 or 3.
    """
    if isinstance(spatial_dims, bool) or spatial_dims not in _INTERPOLATION_MODES:
        raise ValueError(f"interpolation_mode: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
    return _INTERPOLATION_MODES[spatial_dims]


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """Mean over all spatial positions: ``(B, C, *spatial) -> (B, C)``; ``(B, D)`` is returned unchanged."""
    return x.flatten(2).mean(2) if x.ndim > 2 else x


def adaptive_avg_pool(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Adaptive average pooling of ``(B, C, *spatial)`` to ``size`` (1, 2 or 3 spatial dimensions).

    ``x`` itself is returned when its spatial size is already ``size``.
    """
    size = tuple(int(s) for s in size)
    if tuple(x.shape[2:]) == size:
        return x
    if len(size) not in _ADAPTIVE_AVG_POOLS:
        raise ValueError(f"adaptive_avg_pool: size must have 1, 2 or 3 entries, got {size!r}.")
    return _ADAPTIVE_AVG_POOLS[len(size)](x, size)


def _map_tensors(data: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``fn`` to every tensor in a (nested) tensor / tuple / namedtuple / list / mapping structure."""
    if isinstance(data, torch.Tensor):
        return fn(data)
    if isinstance(data, Mapping):
        return type(data)((k, _map_tensors(v, fn)) for k, v in data.items())
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(_map_tensors(v, fn) for v in data))
    if isinstance(data, (tuple, list)):
        return type(data)(_map_tensors(v, fn) for v in data)
    return data


def _clone_if_inference(tensor: torch.Tensor) -> torch.Tensor:
    if not tensor.is_inference():
        return tensor
    # a clone made outside inference mode is an ordinary tensor, which autograd may save for backward
    with torch.inference_mode(False):
        return tensor.clone()


def clone_inference_tensors(data: Any) -> Any:
    """Replace every inference tensor in ``data`` by an ordinary clone; other tensors and values are kept as they are.

    Tensors made under ``torch.inference_mode()`` (a frozen teacher's outputs and features) cannot be saved for
    backward, so they cannot enter most losses of a network that is trained. Their clones, made outside inference
    mode (also when this is called inside it), can; they have the same values and no autograd history.

    Args:
        data: a tensor, or a (nested) tuple, namedtuple, list or mapping holding tensors.

    Returns:
        ``data`` with the same structure (containers are rebuilt with their own type).
    """
    return _map_tensors(data, _clone_if_inference)
