"""Checks of the arguments shared by the demo generators, with a message that names the wrong value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["check_seed", "check_count", "check_size", "check_spatial_dims"]


def check_seed(seed: Any) -> int:
    """``seed`` as an ``int``; ValueError unless it is a non-negative integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def check_spatial_dims(spatial_dims: Any) -> int:
    """``spatial_dims`` as an ``int``; ValueError unless it is 2 or 3."""
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    return int(spatial_dims)


def check_count(name: str, value: Any, minimum: int) -> int:
    """``value`` (the argument ``name``) as an ``int``; ValueError unless it is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_size(size: Any, ndim: int, minimum: int) -> tuple[int, ...]:
    """An image shape of ``ndim`` integers >= ``minimum``, from one integer (repeated) or a sequence."""
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size),) * ndim
    if not isinstance(size, Sequence) or len(size) != ndim:
        raise ValueError(f"size must be an integer or a sequence of {ndim} integers, got {size!r}.")
    size = tuple(size)
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < minimum for s in size):
        raise ValueError(f"size must hold integers >= {minimum}, got {size!r}.")
    return tuple(int(s) for s in size)
