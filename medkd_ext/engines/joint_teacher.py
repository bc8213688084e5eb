"""The joint-teacher bundle's helpers (``bundles/joint_teacher_seg``): the loss terms of curriculum multi-level
distillation (stage 3; Ceausescu et al.)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from medkd_ext.engines.distillation import LABEL, LossTerm
from medkd_ext.losses import CosineAlignLoss, FeatureAlignLoss, SimilarityKLLoss

__all__ = ["multilevel_distillation_terms", "DISTILLATION_SITES"]

DISTILLATION_SITES = ("encoder", "bottleneck", "both")


def _levels(network: nn.Module, role: str) -> tuple[list[str], list[int]]:
    layers = getattr(network, "feature_layers", None)
    channels = getattr(network, "feature_channels", None)
    if not layers or channels is None or len(layers) != len(channels):
        raise ValueError(
            f"the {role} ({type(network).__name__}) must expose `feature_layers` and `feature_channels` of equal "
            "length (encoder levels from high resolution down, bottleneck last), as SegUNet, TResUNet and "
            "JointTeacher do."
        )
    return list(layers), list(channels)


def multilevel_distillation_terms(
    student: nn.Module,
    teacher: nn.Module,
    seg_loss: Callable,
    spatial_dims: int = 3,
    where: str = "both",
    lambda_seg: float = 1.0,
    lambda_con: float = 0.1,
    lambda_feat: float = 1.0,
    lambda_sim: float = 0.1,
    temperature: float = 4.0,
) -> list[LossTerm]:
    """``L = lambda_seg * L_seg + c(t) * (lambda_con * L_con + lambda_feat * L_feat + lambda_sim * L_sim)``.

    Levels are paired from the bottleneck upwards (student level ``-k`` with teacher level ``-k``), so networks
    with different numbers of encoder levels still meet at the bottleneck. ``where`` chooses the pairs that
    distillation taps: ``"encoder"`` (every encoder level), ``"bottleneck"`` or ``"both"``.

    Terms (names as logged): ``seg`` (``seg_loss(pred, label)``); ``con``, ``SimilarityKLLoss`` between the
    pooled, concatenated multi-level embeddings of the chosen levels; ``feat_<i>``, one ``FeatureAlignLoss`` per
    chosen pair (teacher mapped to the student's channels by a learnable 1x1 convolution and resized to the
    student's size; ``L_feat`` is their sum); ``sim``, ``CosineAlignLoss`` of the deepest chosen pair (which needs
    equal channel counts: give the joint teacher the student's ``feature_channels`` as its fused channels).
    The curriculum ``c(t)`` is applied by ``RampHandler(term=[...], attribute="scale")`` on every term but ``seg``,
    the temperature annealing by ``DecayHandler(term="con", attribute="loss.temperature")``.

    The ``FeatureAlignLoss`` adapters are learnable: give ``loss_parameters(terms)`` to the optimizer.
    """
    if where not in DISTILLATION_SITES:
        raise ValueError(f"where must be one of {DISTILLATION_SITES}, got {where!r}.")
    s_layers, s_channels = _levels(student, "student")
    t_layers, t_channels = _levels(teacher, "teacher")
    n = min(len(s_layers), len(t_layers))
    pairs = list(zip(s_layers[-n:], t_layers[-n:], s_channels[-n:], t_channels[-n:]))
    if where == "encoder":
        pairs = pairs[:-1]
    elif where == "bottleneck":
        pairs = pairs[-1:]
    if not pairs:
        raise ValueError(f"no level to distil at where={where!r}: the networks share {n} level(s) only.")
    s_deep, t_deep, cs_deep, ct_deep = pairs[-1]
    if cs_deep != ct_deep:
        raise ValueError(
            f"L_sim compares '{s_deep}' ({cs_deep} channels) with the teacher's '{t_deep}' ({ct_deep} channels); "
            "build the joint teacher with the student's feature_channels as its fused channels."
        )
    terms = [
        LossTerm("seg", seg_loss, weight=lambda_seg, teacher=LABEL),
        LossTerm(
            "con",
            SimilarityKLLoss(temperature),
            weight=lambda_con,
            student=[p[0] for p in pairs],
            teacher=[p[1] for p in pairs],
            embed=True,
        ),
    ]
    for i, (s_layer, t_layer, cs, ct) in enumerate(pairs):
        terms.append(
            LossTerm(
                f"feat_{i}",
                FeatureAlignLoss(cs, ct, spatial_dims),
                weight=lambda_feat,
                student=s_layer,
                teacher=t_layer,
            )
        )
    terms.append(LossTerm("sim", CosineAlignLoss(), weight=lambda_sim, student=s_deep, teacher=t_deep))
    return terms
