"""The CUDA speed settings of every bundle, from a few config ids, all off on the CPU."""

from __future__ import annotations

import logging
from typing import Any

import torch

from medkd_ext.engines.stages import as_flag

__all__ = ["AMP_DTYPES", "acceleration"]

logger = logging.getLogger(__name__)

AMP_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


def acceleration(
    device: str | torch.device,
    amp: bool | str = False,
    amp_dtype: str = "auto",
    channels_last: bool | str = False,
    spatial_dims: int = 2,
) -> dict[str, Any]:
    """What a bundle's trainers, evaluators, loaders and network take from the ids ``amp``, ``amp_dtype`` and
    ``channels_last`` on ``device``.

    On CUDA: mixed precision when ``amp`` is true, in bfloat16 where the GPU supports it (``amp_dtype`` ``"auto"``),
    else float16 (MONAI's trainers then scale the loss with a gradient scaler); ``channels_last`` memory format for 2D
    networks and their inputs when asked; ``non_blocking`` host-to-device copies from pinned loader memory. On the CPU
    everything is off (a requested ``amp`` or ``channels_last`` is noted in the log and ignored), so the same config
    runs on both.

    Args:
        device: the bundle's ``device``.
        amp: mixed precision on CUDA (``true``/``false``, also as command-line strings).
        amp_dtype: ``"auto"``, ``"bfloat16"`` or ``"float16"``.
        channels_last: the channels-last memory format on CUDA, for 2D networks (ignored for 3D).
        spatial_dims: 2 or 3.

    Returns:
        ``amp`` (bool), ``amp_kwargs`` (``{"dtype": ...}`` for ``torch.autocast``), ``non_blocking`` (bool),
        ``to_kwargs`` (``{"memory_format": torch.channels_last}`` or ``{}``, for the trainers' batch copies),
        ``memory_format`` (for ``network.to``) and ``pin_memory`` (bool, for the loaders).

    Raises:
        ValueError: ``amp``/``channels_last`` not true or false, or an unknown ``amp_dtype``.
    """
    use_amp = as_flag(amp, "amp")
    use_channels_last = as_flag(channels_last, "channels_last")
    if amp_dtype != "auto" and amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be 'auto', 'bfloat16' or 'float16', got {amp_dtype!r}.")
    cuda = torch.device(device).type == "cuda"
    if not cuda and (use_amp or use_channels_last):
        logger.info("amp and channels_last apply on CUDA only; device %s trains in float32, contiguous.", device)
    use_amp = use_amp and cuda
    use_channels_last = use_channels_last and cuda and int(spatial_dims) == 2
    if amp_dtype == "auto":
        bf16 = cuda and torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        dtype = torch.bfloat16 if bf16 else torch.float16
    else:
        dtype = AMP_DTYPES[amp_dtype]
    memory_format = torch.channels_last if use_channels_last else torch.preserve_format
    return {
        "amp": use_amp,
        "amp_kwargs": {"dtype": dtype} if use_amp else {},
        "non_blocking": cuda,
        "to_kwargs": {"memory_format": torch.channels_last} if use_channels_last else {},
        "memory_format": memory_format,
        "pin_memory": cuda,
    }
