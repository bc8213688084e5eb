import pytest

from medkd_ext.transforms import spatial_size


def test_one_int_for_every_axis_or_one_per_axis():
    assert spatial_size(64, 2) == [64, 64]
    assert spatial_size(32, 3) == [32, 32, 32]
    assert spatial_size([96, 80], 2) == [96, 80]


@pytest.mark.parametrize("bad", [0, -4, True, [64], [64, 64, 64], [64, 0], "64", 64.0])
def test_bad_sizes_name_the_id(bad):
    with pytest.raises(ValueError, match=r"crop_size must be a positive int or a list of 2 positive ints"):
        spatial_size(bad, 2, "crop_size")
