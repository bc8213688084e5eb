"""medkd_ext/engines/acceleration.py: the CUDA speed settings from config ids, all off on the CPU."""

from __future__ import annotations

import pytest
import torch

from medkd_ext.engines import acceleration


def test_everything_is_off_on_the_cpu_even_when_asked():
    settings = acceleration("cpu", amp="true", channels_last=True, spatial_dims=2)
    assert settings == {"amp": False, "amp_kwargs": {}, "non_blocking": False, "to_kwargs": {},
                        "memory_format": torch.preserve_format, "pin_memory": False}


def test_cuda_settings():
    cuda = torch.device("cuda:0")  # a device object; nothing runs on it
    settings = acceleration(cuda, amp=True, amp_dtype="bfloat16", channels_last=True, spatial_dims=2)
    assert settings["amp"] and settings["amp_kwargs"] == {"dtype": torch.bfloat16}
    assert settings["non_blocking"] and settings["pin_memory"]
    assert settings["to_kwargs"] == {"memory_format": torch.channels_last}
    assert settings["memory_format"] == torch.channels_last
    # channels_last is for 2D networks; amp off leaves autocast without arguments
    settings = acceleration(cuda, amp="false", channels_last=True, spatial_dims=3)
    assert not settings["amp"] and settings["amp_kwargs"] == {} and settings["to_kwargs"] == {}
    # auto: bfloat16 where the GPU has it, else float16 (a machine without CUDA has no bfloat16 GPU)
    expected = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    assert acceleration(cuda, amp=True)["amp_kwargs"] == {"dtype": expected}


@pytest.mark.parametrize("kwargs,message", [({"amp": "fast"}, "amp must be true or false"),
                                            ({"channels_last": "yes please"}, "channels_last must be true or false"),
                                            ({"amp_dtype": "int8"}, "amp_dtype must be 'auto'")])
def test_wrong_values_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        acceleration("cpu", **kwargs)
