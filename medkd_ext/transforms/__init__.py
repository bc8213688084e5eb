"""Custom MONAI transforms used by the bundles: case validation and image-channel fitting; image sizes; DICOM-SEG
output."""

from __future__ import annotations

from .dicom_seg import OUTPUT_FORMATS, SaveDicomSegd, check_output_format, write_dicom_seg
from .sizes import spatial_size
from .validation import EnsureImageChannelsd, ValidateCased, ValidateClassLabeld, check_cases, describe_source

__all__ = [
    "OUTPUT_FORMATS",
    "EnsureImageChannelsd",
    "SaveDicomSegd",
    "ValidateCased",
    "ValidateClassLabeld",
    "check_cases",
    "check_output_format",
    "describe_source",
    "spatial_size",
    "write_dicom_seg",
]
