"""The joint-teacher bundle's helpers (``bundles/joint_teacher_seg``): the joint teacher's fused widths, the patch
size check run before any stage trains, and the loss terms of curriculum multi-level distillation (stage 3;
Ceausescu et al.)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

from medkd_ext.engines.distillation import LABEL, LossTerm
from medkd_ext.losses import CosineAlignLoss, FeatureAlignLoss, SimilarityKLLoss

__all__ = ["DISTILLATION_SITES", "check_patch_size", "joint_fused_channels", "multilevel_distillation_terms"]

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


def joint_fused_channels(teacher: nn.Module, student: nn.Module) -> list[int]:
    """The joint teacher's channels per fused level, for any pairing of teacher and student architectures.

    The joint teacher fuses the teachers' levels (as many as the teachers have) and the student stage pairs its levels
    with the student's from the bottleneck upwards; each fused level shared with the student takes the student's
    width (so ``L_sim`` compares equal channel counts and ``L_feat`` maps like to like), and a fused level finer than
    every student level keeps the teacher's width. UNet teachers (4 levels) with a TResUNet student (5) fuse 4 levels
    at the student's last 4 widths; TResUNet teachers (5 levels, ``[64, 256, 512, 1024, 512]`` at width 64) with a
    UNet student (4 levels, ``[32, 64, 128, 256]``) fuse ``[64, 32, 64, 128, 256]``.

    Args:
        teacher: a teacher network (``feature_channels``), as the joint teacher's teachers are built.
        student: the student network (``feature_channels``).
    """
    _, t_channels = _levels(teacher, "teacher")
    _, s_channels = _levels(student, "student")
    shared = min(len(t_channels), len(s_channels))
    return list(t_channels[: len(t_channels) - shared]) + list(s_channels[len(s_channels) - shared :])


def _multiple(size: int, divisor: int) -> int:
    return -(-size // divisor) * divisor


def check_patch_size(
    roi_size: Sequence[int], teacher: nn.Module, student: nn.Module, discriminator: nn.Module | None = None
) -> None:
    """Refuse, before any stage trains, a patch size that a network of the run cannot train on.

    Each network needs every size a multiple of its ``divisor`` and more than one voxel at its coarsest level
    (instance normalisation); the source teachers' domain discriminator (stage 1b) sees the teacher's
    second-coarsest level (``feature_layers[-2]``) and needs more than one voxel after its strided blocks
    (:meth:`medkd_ext.networks.DomainDiscriminator.accepts`).

    Args:
        roi_size: the training patch size (``roi_size``).
        teacher: a teacher network as the run builds them (``teacher_def``).
        student: the student network (``student_def``).
        discriminator: the source teachers' discriminator (any ``in_channels``), or ``None`` without source teachers.

    Raises:
        ValueError: naming the network, the level, the size it gets and the smallest cubic ``roi_size`` that works.
    """
    roi = [int(n) for n in roi_size]

    def problems(size: list[int]) -> list[str]:
        found = []
        for role, network in (("teacher", teacher), ("student", student)):
            name = f"the {role} ({type(network).__name__}, --{role}_arch)"
            divisor = int(getattr(network, "divisor", 1))
            if any(n % divisor for n in size):
                found.append(f"{name} needs every size to be a multiple of {divisor}")
                continue
            strides = getattr(network, "feature_strides", None) or [divisor]
            coarsest = [n // strides[-1] for n in size]
            if math.prod(coarsest) <= 1:
                found.append(f"{name} reduces it to {coarsest} at its coarsest level, where instance normalisation "
                             "needs more than one voxel")
        strides = getattr(teacher, "feature_strides", None)
        if discriminator is not None and strides and len(strides) >= 2 and not found:
            level = [n // strides[-2] for n in size]
            if not discriminator.accepts(level):
                layer = teacher.feature_layers[-2]
                found.append(
                    f"the source teachers' domain discriminator sees {type(teacher).__name__}'s level '{layer}' "
                    f"(stride {strides[-2]}, {level} voxels), which its {len(discriminator.blocks)} stride-2 blocks "
                    f"reduce to {discriminator.output_size(level)}, where instance normalisation needs more than one "
                    "voxel"
                )
        return found

    found = problems(roi)
    if not found:
        return
    step = math.lcm(*(int(getattr(n, "divisor", 1)) for n in (teacher, student)))
    smallest = _multiple(max(roi), step)
    while problems([smallest] * len(roi)) and smallest < 4096:
        smallest += step
    raise ValueError(
        f"roi_size {roi} is too small: " + "; ".join(found) + f". The smallest cubic roi_size that works with these "
        f"networks is {[smallest] * len(roi)}; give --roi_size \"{[smallest] * len(roi)}\" (and volumes are padded "
        "to it), or smaller networks."
    )


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
