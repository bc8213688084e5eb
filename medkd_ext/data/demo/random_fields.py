"""Smooth random fields: the texture and the shape deformations of the synthetic demo images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["smooth_noise"]


def smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: Sequence[float] | float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation.

    Args:
        rng: source of the white noise (one ``standard_normal`` draw of ``shape``).
        shape: shape of the field.
        sigma: standard deviation of the Gaussian filter in voxels, one value or one per axis.
    """
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    std = field.std()
    return field / std if std > 0 else field
