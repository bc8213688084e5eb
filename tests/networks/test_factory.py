from __future__ import annotations

import pytest
import torch

from medkd_ext.networks import SegUNet, TResUNet, segmentation_network


@pytest.mark.parametrize("arch, cls", [("unet", SegUNet), ("tresunet", TResUNet)])
def test_architectures_by_name(arch, cls):
    net = segmentation_network(arch, spatial_dims=3, in_channels=1, out_channels=2, width=4)
    assert isinstance(net, cls)
    assert net(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2, 32, 32, 32)
    assert len(net.feature_layers) == len(net.feature_channels)


def test_unknown_architecture_and_width():
    with pytest.raises(ValueError, match="arch must be one of"):
        segmentation_network("vnet")
    with pytest.raises(ValueError, match="width"):
        segmentation_network("unet", width=0)
