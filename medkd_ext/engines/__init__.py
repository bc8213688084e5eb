"""Ignite/MONAI trainers for distillation.

The RoS-KD bundle's config helpers (method selection, teacher loading, loss terms) live in the submodule
``medkd_ext.engines.roskd``, imported by that bundle's configs as ``$import medkd_ext.engines.roskd``; they are
bundle glue, not trainers, so they are not re-exported here.
"""

from medkd_ext.engines.adversarial import DomainAdversarialTrainer
from medkd_ext.engines.distillation import (
    ALL_TEACHERS,
    LABEL,
    PRED,
    DistillationTrainer,
    LossTerm,
    loss_parameters,
    loss_terms_output,
)
from medkd_ext.engines.evaluation import evaluate_segmentation
from medkd_ext.engines.multihead import MultiHeadTrainer, RoundRobin
from medkd_ext.engines.multilevel import DISTILLATION_SITES, multilevel_distillation_terms
from medkd_ext.engines.stages import locate_bundle, run_stage, run_stages

__all__ = [
    "DomainAdversarialTrainer",
    "DistillationTrainer",
    "LossTerm",
    "loss_terms_output",
    "PRED",
    "LABEL",
    "ALL_TEACHERS",
    "run_stage",
    "run_stages",
    "locate_bundle",
    "loss_parameters",
    "multilevel_distillation_terms",
    "DISTILLATION_SITES",
    "evaluate_segmentation",
    "MultiHeadTrainer",
    "RoundRobin",
]
