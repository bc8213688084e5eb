from __future__ import annotations

import numpy as np
import pytest

from medkd_ext.data.demo.random_fields import smooth_noise


def _neighbour_correlation(field: np.ndarray) -> float:
    return float(np.corrcoef(field[:-1].ravel(), field[1:].ravel())[0, 1])


def test_unit_std_deterministic_and_smooth():
    field = smooth_noise(np.random.default_rng(0), (32, 24), 2.0)
    assert field.shape == (32, 24)
    assert field.std() == pytest.approx(1.0)
    np.testing.assert_array_equal(field, smooth_noise(np.random.default_rng(0), (32, 24), 2.0))
    rough = smooth_noise(np.random.default_rng(0), (32, 24), 0.5)
    assert _neighbour_correlation(field) > 0.8 > _neighbour_correlation(rough)


def test_sigma_per_axis():
    field = smooth_noise(np.random.default_rng(1), (24, 24, 24), [4.0, 0.5, 0.5])
    along_0 = _neighbour_correlation(field)
    along_1 = _neighbour_correlation(np.moveaxis(field, 1, 0))
    assert along_0 > 0.9 > along_1
