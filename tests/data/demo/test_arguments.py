from __future__ import annotations

import numpy as np
import pytest

from medkd_ext.data.demo.arguments import check_count, check_seed, check_size


def test_check_seed():
    assert check_seed(np.int64(3)) == 3 and type(check_seed(np.int64(3))) is int
    for bad in (-1, 1.0, True, "0", None):
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            check_seed(bad)


def test_check_count_names_the_argument():
    assert check_count("n_test", 0, 0) == 0
    with pytest.raises(ValueError, match=r"n_cases must be an integer >= 1, got 0\."):
        check_count("n_cases", 0, 1)
    with pytest.raises(ValueError, match="n_cases must be an integer >= 1, got True"):
        check_count("n_cases", True, 1)


def test_check_size():
    assert check_size(16, 3, 8) == (16, 16, 16)
    assert check_size([np.int32(20), 24], 2, 16) == (20, 24)
    with pytest.raises(ValueError, match="sequence of 3 integers"):
        check_size((16, 16), 3, 8)
    with pytest.raises(ValueError, match="size must hold integers >= 8"):
        check_size((16, 4, 16), 3, 8)
    with pytest.raises(ValueError, match="size must hold integers >= 1"):
        check_size((16, True, 16), 3, 1)
    with pytest.raises(ValueError, match="size must be an integer or a sequence"):
        check_size("16", 1, 1)
