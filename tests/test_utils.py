from __future__ import annotations

import re
from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch

from medkd_ext.utils import (
    adaptive_avg_pool,
    check_positive_int,
    check_positive_ints,
    clone_inference_tensors,
    global_avg_pool,
    interpolation_mode,
    is_positive_int,
)

Pair = namedtuple("Pair", ["a", "b"])


@pytest.mark.parametrize("value, expected", [
    (1, True), (7, True), (0, False), (-3, False), (True, False), (False, False), (2.0, False), ("3", False),
    (None, False), (np.int64(3), False),
])  # fmt: skip
def test_is_positive_int(value, expected):
    assert is_positive_int(value) is expected


def test_check_positive_int_returns_the_value_or_names_argument_and_value():
    assert check_positive_int(4, "Net", "width") == 4
    with pytest.raises(ValueError, match=r"^Net: width must be a positive int, got 0\.$"):
        check_positive_int(0, "Net", "width")
    with pytest.raises(ValueError, match=r"Net: width must be a positive int, got True\."):
        check_positive_int(True, "Net", "width")
    with pytest.raises(ValueError, match=r"got '8'"):
        check_positive_int("8", "Net", "width")


def test_check_positive_ints():
    assert check_positive_ints([3, 4], "Net", "blocks") == (3, 4)
    assert check_positive_ints(range(1, 3), "Net", "blocks") == (1, 2)
    for bad in ([], [3, 0], (2, True), [1.0], 5, "12", None):
        message = f"Net: blocks must be a non-empty sequence of positive ints, got {bad!r}."
        with pytest.raises(ValueError, match=re.escape(message)):
            check_positive_ints(bad, "Net", "blocks")


def test_interpolation_mode_per_dimension():
    assert [interpolation_mode(d) for d in (1, 2, 3)] == ["linear", "bilinear", "trilinear"]
    for bad in (0, 4, True, "2"):
        with pytest.raises(ValueError, match="spatial_dims must be 1, 2 or 3"):
            interpolation_mode(bad)
    for dims in (1, 2, 3):  # torch accepts each mode only for its number of spatial dimensions
        x = torch.arange(2.0**dims).view(1, 1, *[2] * dims)
        y = torch.nn.functional.interpolate(x, size=(3,) * dims, mode=interpolation_mode(dims), align_corners=True)
        assert y.flatten()[-1] == x.flatten()[-1] and y.flatten()[0] == x.flatten()[0]


def test_global_avg_pool_is_the_spatial_mean():
    x = torch.randn(2, 3, 4, 5, 6)
    torch.testing.assert_close(global_avg_pool(x), x.mean(dim=(2, 3, 4)))
    assert global_avg_pool(x).shape == (2, 3)
    embedding = torch.randn(2, 7)
    assert global_avg_pool(embedding) is embedding


@pytest.mark.parametrize("spatial", [(8,), (6, 4), (4, 4, 2)])
def test_adaptive_avg_pool_averages_blocks_and_keeps_matching_sizes(spatial):
    x = torch.randn(2, 3, *spatial)
    size = tuple(s // 2 for s in spatial)
    pooled = adaptive_avg_pool(x, size)
    assert pooled.shape == (2, 3, *size)
    # every output cell is the mean of its 2 x ... x 2 block
    blocks = x.reshape(2, 3, *[v for s in size for v in (s, 2)])
    torch.testing.assert_close(pooled, blocks.mean(dim=tuple(range(3, 3 + 2 * len(size), 2))))
    assert adaptive_avg_pool(x, spatial) is x
    with pytest.raises(ValueError, match="1, 2 or 3 entries"):
        adaptive_avg_pool(torch.randn(1, 1, 2, 2, 2, 2), (1, 1, 1, 1))


def test_clone_inference_tensors_gives_ordinary_copies_and_keeps_the_rest():
    with torch.inference_mode():
        a, b, c = torch.randn(2, 3), torch.randn(3), torch.randn(1)
    plain = torch.randn(2)
    data = {"a": a, "pair": Pair(b, plain), "list": [c, "text", 3], "od": OrderedDict(x=c)}
    out = clone_inference_tensors(data)
    assert type(out["pair"]) is Pair and type(out["od"]) is OrderedDict and out["list"][1:] == ["text", 3]
    for before, after in ((a, out["a"]), (b, out["pair"].a), (c, out["list"][0]), (c, out["od"]["x"])):
        assert before.is_inference() and not after.is_inference()
        assert after is not before and torch.equal(after, before) and not after.requires_grad
    assert out["pair"].b is plain  # an ordinary tensor is not copied
    # the copies can be saved for backward, which the inference tensors cannot
    weight = torch.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="[Ii]nference"):
        (weight * b).sum().backward()
    (weight * out["pair"].a).sum().backward()
    torch.testing.assert_close(weight.grad, b.clone())


def test_clone_inference_tensors_inside_inference_mode_still_gives_ordinary_tensors():
    with torch.inference_mode():
        x = torch.randn(2)
        copy = clone_inference_tensors(x)
    assert not copy.is_inference() and torch.equal(copy, x)
