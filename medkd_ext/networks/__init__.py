"""Networks and network utilities shared by the medkd bundles.

Feature taps (forward hooks by module name), frozen teachers, the domain discriminator with gradient reversal,
DenseNet-40 and atomic, checked checkpoints.
"""

from __future__ import annotations

from medkd_ext.losses.adversarial import GradientReversal
from medkd_ext.networks.checkpoint import load_state_dict, save_state_dict
from medkd_ext.networks.densenet40 import DenseNet40, densenet_at_layer, new_planes
from medkd_ext.networks.discriminator import DomainDiscriminator
from medkd_ext.networks.frozen import FrozenTeacher, freeze, unwrap_network
from medkd_ext.networks.taps import FeatureTaps, module_names

__all__ = [
    "DenseNet40",
    "DomainDiscriminator",
    "FeatureTaps",
    "FrozenTeacher",
    "GradientReversal",
    "densenet_at_layer",
    "freeze",
    "load_state_dict",
    "module_names",
    "new_planes",
    "save_state_dict",
    "unwrap_network",
]
