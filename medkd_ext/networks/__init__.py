"""Networks and network utilities shared by the medkd bundles.

Feature taps (forward hooks by module name), frozen teachers, the domain discriminator with gradient reversal,
DenseNet-40 and atomic, checked checkpoints.
"""

from __future__ import annotations

from medkd_ext.losses.adversarial import GradientReversal
from medkd_ext.networks.attention_maps import attention_map, attention_overlay, write_attention_maps
from medkd_ext.networks.checkpoint import apply_state_dict, load_state_dict, read_state_dict, save_state_dict
from medkd_ext.networks.densenet40 import DenseNet40, densenet_at_layer, new_planes
from medkd_ext.networks.discriminator import DomainDiscriminator
from medkd_ext.networks.factory import SEGMENTATION_ARCHITECTURES, segmentation_network
from medkd_ext.networks.frozen import FrozenTeacher, freeze, unwrap_network
from medkd_ext.networks.fusion import CrossAttentionFusion, JointTeacher, token_grid
from medkd_ext.networks.mobilenet import MOBILENET_V2_SETTING, InvertedResidual, MobileNetV2
from medkd_ext.networks.multihead import MultiHeadSegNet
from medkd_ext.networks.one import ONE_FAMILIES, ONE_OUTPUTS, ONENetwork
from medkd_ext.networks.segunet import SegUNet, check_spatial_size
from medkd_ext.networks.taps import FeatureTaps, module_names
from medkd_ext.networks.tresunet import TResUNet

__all__ = [
    "ONE_FAMILIES",
    "ONE_OUTPUTS",
    "ONENetwork",
    "MOBILENET_V2_SETTING",
    "InvertedResidual",
    "MobileNetV2",
    "SEGMENTATION_ARCHITECTURES",
    "segmentation_network",
    "MultiHeadSegNet",
    "SegUNet",
    "TResUNet",
    "check_spatial_size",
    "CrossAttentionFusion",
    "JointTeacher",
    "token_grid",
    "DenseNet40",
    "DomainDiscriminator",
    "FeatureTaps",
    "FrozenTeacher",
    "GradientReversal",
    "densenet_at_layer",
    "freeze",
    "load_state_dict",
    "read_state_dict",
    "apply_state_dict",
    "module_names",
    "new_planes",
    "save_state_dict",
    "unwrap_network",
    "attention_map",
    "attention_overlay",
    "write_attention_maps",
]
