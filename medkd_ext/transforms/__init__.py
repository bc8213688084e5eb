"""Custom MONAI transforms used by the bundles: case validation and image-channel fitting; image sizes."""

from __future__ import annotations

from .sizes import spatial_size
from .validation import EnsureImageChannelsd, ValidateCased, ValidateClassLabeld, describe_source

__all__ = ["EnsureImageChannelsd", "ValidateCased", "ValidateClassLabeld", "describe_source", "spatial_size"]
