"""Custom MONAI transforms used by the bundles: case validation and image-channel fitting."""

from __future__ import annotations

from .validation import EnsureImageChannelsd, ValidateCased, ValidateClassLabeld, describe_source

__all__ = ["EnsureImageChannelsd", "ValidateCased", "ValidateClassLabeld", "describe_source"]
