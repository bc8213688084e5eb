"""Distillation losses shared by the medkd bundles, one module per family.

Every loss is a ``torch.nn.Module`` called as ``loss(student, teacher)`` that works for 2D and 3D inputs,
returns a scalar, never mutates its inputs and never sends gradients into the teacher tensors. Losses with
learnable adapters (``FitNetLoss``, ``FeatureAlignLoss``) own them: give their parameters to the optimizer.
"""

from __future__ import annotations

from medkd_ext.losses.adversarial import GradientReversal, dann_lambda, grad_reverse
from medkd_ext.losses.attention import AttentionTransferLoss
from medkd_ext.losses.bss import (
    BSS_TARGETS,
    BoundarySupportingSamples,
    boundary_supporting_attack,
    sample_target_classes,
    select_base_samples,
)
from medkd_ext.losses.feature import CosineAlignLoss, FeatureAlignLoss, FitNetLoss, FSPLoss
from medkd_ext.losses.online import EnsembleKDLoss, MutualLearningLoss
from medkd_ext.losses.relational import (
    RKDAngleLoss,
    RKDDistanceLoss,
    RKDLoss,
    SimilarityKLLoss,
    SimilarityPreservingLoss,
)
from medkd_ext.losses.response import KDLoss, MultiTeacherKDLoss

__all__ = [
    "AttentionTransferLoss",
    "CosineAlignLoss",
    "FSPLoss",
    "FeatureAlignLoss",
    "FitNetLoss",
    "GradientReversal",
    "KDLoss",
    "MultiTeacherKDLoss",
    "RKDAngleLoss",
    "RKDDistanceLoss",
    "RKDLoss",
    "SimilarityKLLoss",
    "SimilarityPreservingLoss",
    "dann_lambda",
    "grad_reverse",
    "BSS_TARGETS",
    "BoundarySupportingSamples",
    "boundary_supporting_attack",
    "sample_target_classes",
    "select_base_samples",
    "EnsembleKDLoss",
    "MutualLearningLoss",
]
