"""Building the segmentation networks of the joint-teacher bundle by architecture name."""

from __future__ import annotations

from torch import nn

from medkd_ext.utils import check_positive_int

__all__ = ["SEGMENTATION_ARCHITECTURES", "segmentation_network"]

SEGMENTATION_ARCHITECTURES = ("unet", "tresunet")


def segmentation_network(
    arch: str, spatial_dims: int = 3, in_channels: int = 1, out_channels: int = 2, width: int = 16
) -> nn.Module:
    """A segmentation network with the feature interface (``feature_layers``, ``feature_channels``).

    Args:
        arch: ``"unet"`` (:class:`SegUNet`, channels ``(w, 2w, 4w, 8w)``, strides ``(2, 2, 2)``) or ``"tresunet"``
            (:class:`TResUNet`, ResNet-50 layout with base width ``w``, 64 being the paper's ResNet-50; instance
            normalisation, since 3D batches are small).
        spatial_dims: 2 or 3.
        in_channels: image channels.
        out_channels: classes including background.
        width: base width ``w``.
    """
    check_positive_int(width, "segmentation_network", "width")
    if arch == "unet":
        from medkd_ext.networks.segunet import SegUNet

        channels = (width, 2 * width, 4 * width, 8 * width)
        return SegUNet(spatial_dims, in_channels, out_channels, channels=channels, strides=(2, 2, 2))
    if arch == "tresunet":
        from medkd_ext.networks.tresunet import TResUNet

        # instance norm: 3D training batches hold one or two patches, too few for batch statistics
        return TResUNet(spatial_dims, in_channels, out_channels, base_width=width, norm="instance")
    raise ValueError(f"segmentation_network: arch must be one of {SEGMENTATION_ARCHITECTURES}, got {arch!r}.")
