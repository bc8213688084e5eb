"""Image sizes as the classification bundles take them: one int for every axis, or one per axis."""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

__all__ = ["spatial_size"]


def spatial_size(size: int | Sequence[int], spatial_dims: int, name: str = "image_size") -> list[int]:
    """``size`` for every spatial axis: an int ``n`` gives ``[n] * spatial_dims``; a list is checked and kept.

    Args:
        size: an int, or a list of ``spatial_dims`` ints (all positive).
        spatial_dims: 2 or 3.
        name: the config id, named in the error.

    Raises:
        ValueError: a non-positive size, or a list of another length.
    """
    values = [size] * int(spatial_dims) if isinstance(size, Integral) and not isinstance(size, bool) else size
    if (
        not isinstance(values, Sequence)
        or isinstance(values, str)
        or len(values) != int(spatial_dims)
        or not all(isinstance(v, Integral) and not isinstance(v, bool) and v > 0 for v in values)
    ):
        raise ValueError(
            f"{name} must be a positive int or a list of {spatial_dims} positive ints (one per axis), got {size!r}."
        )
    return [int(v) for v in values]
