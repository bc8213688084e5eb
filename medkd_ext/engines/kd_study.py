"""The methods of the KD study, selectable in the classification bundles by one key, ``distill_method``.

Sarfraz, Arani and Zonooz, "Knowledge distillation beyond model compression" (ICPR 2020) compare nine methods under
one protocol with the settings of their Table I, which are the defaults here:

============ =========================================================================================================
key          objective (``CE`` = the bundle's supervised loss; features tapped at the study's blocks, see below)
============ =========================================================================================================
``hinton``   ``(1 - alpha) CE + alpha T^2 KL(teacher || student)`` on the outputs, alpha 0.9, T 4 (Hinton et al.)
``fitnet``   two stages: the student up to block 2 regresses the teacher's block-2 features through a 1x1
             regressor (FitNet, stage weights W = [0, 1, 0]), then ``hinton`` from that initialisation
``fsp``      two stages: the student matches the teacher's FSP matrices of blocks 1, 2, 3 (each between the
             block's input and output, weights W = [1, 3, 1]; Yim et al.), then ``hinton``
``bss``      ``hinton`` plus KD on boundary-supporting adversarial samples (Heo et al.): attack size 32, 10 steps,
             max eps 16 (of 255), T 4, with Heo's weight decaying to 0 at 75% of training
``at``       ``CE + beta/2 sum_j AT_j`` at blocks 1, 2, 3, beta 1000 (Zagoruyko and Komodakis, ``mode="map"``)
``sp``       ``CE + gamma SP`` at block 3, gamma 3000 (Tung and Mori)
``rkd_d``    ``CE + 25 RKD-distance`` on the block-3 features pooled to an embedding (Park et al.)
``rkd_a``    ``CE + 50 RKD-angle`` on the same embedding
``rkd_da``   ``CE + 25 RKD-distance + 50 RKD-angle``
``one``      ONE (Lan et al.): a 3-branch student whose gated ensemble teaches each branch, T 3; no teacher
``dml``      deep mutual learning (Zhang et al.) of a cohort of 2 students, T 4; no teacher
============ =========================================================================================================

The study's networks have three blocks; ours have four stages (ResNet-18, DenseNet-121) or fewer (DenseNet-40), so
"block 3" is the last stage and blocks 1-3 the last three stages at increasing depth (:func:`study_layers`); student
and teacher meet at the same relative depth. The maps of two families differ in channels and resolution: FitNet's
regressor maps the student's channels to the teacher's and the larger map is pooled to the smaller; FSP maps each
student map to the teacher's channels by a learnt 1x1 convolution (trained in the initialisation stage with the
student), an adaptation the study, whose student and teacher share a family, does not need.

The two-stage methods add a stage, ``distill_init`` (``configs/distill/init.json``), before the student's: it trains
the student on :func:`init_loss_terms` alone (no labels), for the student's number of epochs with its optimizer (the
study: 100 epochs at learning rate 0.001), and writes ``init_ckpt``, which the student stage loads
(:func:`load_init`) before training with ``hinton``.

The bundles merge ``configs/distill/<method>.json`` after their student stage's overlay for the methods that change
the trainer or the network (:func:`method_overlays`: ``bss``, ``one``, ``dml``); the others only change the loss terms
(:func:`study_loss_terms`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monai.networks.nets import DenseNet, ResNet
from torch import nn

from medkd_ext.engines.distillation import LABEL, LossTerm
from medkd_ext.losses import (
    AttentionTransferLoss,
    FitNetLoss,
    FSPLoss,
    KDLoss,
    RKDAngleLoss,
    RKDDistanceLoss,
    SimilarityPreservingLoss,
)
from medkd_ext.networks.densenet40 import DenseNet40
from medkd_ext.networks.frozen import unwrap_network
from medkd_ext.networks.one import ONENetwork

__all__ = [
    "KD_METHODS",
    "ONLINE_METHODS",
    "STUDY_SETTINGS",
    "check_choice",
    "check_distill_method",
    "feature_channels",
    "init_loss_terms",
    "load_init",
    "two_stage",
    "deployed_network",
    "method_overlays",
    "needs_teacher",
    "study_layers",
    "study_loss_terms",
]

KD_METHODS: dict[str, str] = {
    "hinton": "Hinton KD on the outputs (alpha 0.9, T 4)",
    "fitnet": "two stages: hint regression at block 2 (FitNet), then Hinton KD",
    "fsp": "two stages: FSP matrices of blocks 1-3 (weights 1, 3, 1), then Hinton KD",
    "bss": "Hinton KD plus boundary-supporting adversarial samples (Heo et al.; attack size 32, 10 steps, eps 16/255)",
    "at": "attention transfer at blocks 1-3 (beta 1000)",
    "sp": "similarity preserving at block 3 (gamma 3000)",
    "rkd_d": "relational KD, distance term (weight 25) at block 3",
    "rkd_a": "relational KD, angle term (weight 50) at block 3",
    "rkd_da": "relational KD, distance (25) and angle (50) terms at block 3",
    "one": "on-the-fly native ensemble: 3 branches and a gate, T 3; no external teacher",
    "dml": "deep mutual learning of a cohort of 2 students, T 4; no external teacher",
}
"""``distill_method`` values: the KD study's nine methods (RKD in three variants)."""

ONLINE_METHODS = ("one", "dml")
"""Methods without an external teacher."""

TWO_STAGE_METHODS = ("fitnet", "fsp")
"""Methods with an initialisation stage (``distill_init``) before the student's Hinton KD."""

STUDY_SETTINGS: dict[str, Any] = {
    "alpha": 0.9,
    "temperature": 4.0,
    "at_beta": 1000.0,
    "sp_gamma": 3000.0,
    "rkd_distance_weight": 25.0,
    "rkd_angle_weight": 50.0,
    "one_temperature": 3.0,
    "one_branches": 3,
    "dml_temperature": 4.0,
    "bss_attack_size": 32,
    "bss_steps": 10,
    "bss_max_epsilon": 16 / 255,
    "fitnet_weights": [0.0, 1.0, 0.0],
    "fsp_weights": [1.0, 3.0, 1.0],
}
"""Table I of the KD study: the defaults of every method."""

_OVERLAYS = {"bss": "distill/bss.json", "one": "distill/one.json", "dml": "distill/dml.json"}


def check_distill_method(method: str | None) -> str | None:
    """``method`` if it is ``None`` (the bundle's own method) or a key of :data:`KD_METHODS`, else ``ValueError``."""
    if method is None or method in KD_METHODS:
        return method
    raise ValueError(
        f"distill_method must be one of {', '.join(KD_METHODS)} (or null: the bundle's own method), got {method!r}."
    )


def check_choice(method: str | None, baseline: bool = False) -> str | None:
    """``method`` checked (:func:`check_distill_method`), and refused beside a bundle's ``baseline`` (a student
    trained alone): the two keys select different methods."""
    method = check_distill_method(method)
    if method is not None and baseline:
        raise ValueError(
            f"distill_method {method!r} and baseline true both choose how the student trains: give one of them "
            "(baseline true: the student alone with cross-entropy)."
        )
    return method


def needs_teacher(method: str | None) -> bool:
    """Whether ``method`` distils from a trained teacher (every method but the online ones)."""
    return check_distill_method(method) not in ONLINE_METHODS


def method_overlays(method: str | None) -> list[str]:
    """The overlay files (relative to a bundle's ``configs``) that ``method`` merges after the student stage's."""
    return [_OVERLAYS[method]] if check_distill_method(method) in _OVERLAYS else []


def _last_relu(module: nn.Module, prefix: str) -> str:
    names = [name for name, m in module.named_children() if isinstance(m, nn.ReLU)]
    if not names:
        raise ValueError(f"{prefix} has no ReLU layer to tap.")
    return f"{prefix}.{names[-1]}"


def study_layers(network: nn.Module) -> tuple[str, list[str]]:
    """The module names where the KD study's methods tap ``network``: ``(input of block 1, [block 1, 2, 3])``.

    ============================== =========================== ==================================================
    network                        input of block 1            blocks 1, 2, 3
    ============================== =========================== ==================================================
    MONAI ``ResNet`` (ResNet-18)   ``layer1``                  ``layer2``, ``layer3``, ``layer4``
    MONAI ``DenseNet`` (121, ...)  ``features.denseblock1``    ``features.denseblock2``, ``features.denseblock3``,
                                   (the block before)          ``features.norm5`` (the last dense block, normalised)
    ``DenseNet40``                 ``features.pool0``          ``features.denseblock1``, ``features.norm5``, the
                                                               last ReLU of ``class_layers`` (its 1x1 convolutions)
    ============================== =========================== ==================================================

    Raises:
        ValueError: another architecture (the message lists these).
    """
    net = unwrap_network(network)
    if isinstance(net, ONENetwork):
        raise ValueError("study_layers: give the plain student network, not its ONENetwork.")
    if isinstance(net, DenseNet40):
        head = _last_relu(net.class_layers, "class_layers")
        return "features.pool0", ["features.denseblock1", "features.norm5", head]
    if isinstance(net, DenseNet):
        blocks = sorted(
            int(name[len("denseblock") :]) for name, _ in net.features.named_children() if name.startswith("denseblock")
        )
        if len(blocks) >= 3:
            n = blocks[-1]
            first = f"features.denseblock{n - 3}" if n >= 4 else "features.pool0"
            return first, [f"features.denseblock{n - 2}", f"features.denseblock{n - 1}", "features.norm5"]
    if isinstance(net, ResNet):
        return "layer1", ["layer2", "layer3", "layer4"]
    raise ValueError(
        f"the KD study's methods tap MONAI ResNet, DenseNet (three dense blocks or more) and DenseNet40 networks, "
        f"not {type(net).__name__}; choose a supported student/teacher or leave distill_method null."
    )


def study_loss_terms(
    method: str,
    supervised_loss: Callable,
    student: nn.Module,
    teacher: nn.Module | None,
    multi_label: bool = False,
    settings: dict[str, Any] | None = None,
) -> list[LossTerm]:
    """The loss terms of a teacher-student ``method`` of the study (for ``DistillationTrainer`` or, with ``bss``,
    ``BSSDistillationTrainer``, which adds its boundary term to these).

    Args:
        method: a key of :data:`KD_METHODS` other than the online ones.
        supervised_loss: the bundle's supervised loss (cross-entropy, or BCE with logits for multi-label).
        student: the student network (its architecture decides the tapped layers).
        teacher: the teacher network (likewise).
        multi_label: per-class Bernoulli KD instead of softmax KD (``hinton``).
        settings: values replacing :data:`STUDY_SETTINGS` entries (the bundle's ``temperature``, ``alpha``, ...).
    """
    method = check_distill_method(method)
    if method in ONLINE_METHODS or method is None:
        raise ValueError(f"study_loss_terms: {method!r} has no teacher-student loss terms; its trainer holds them.")
    if teacher is None:
        raise ValueError(f"distill_method {method!r} needs a teacher; none was loaded.")
    s = {**STUDY_SETTINGS, **(settings or {})}
    ce = LossTerm("ce", supervised_loss, teacher=LABEL)
    if method in ("hinton", "bss", *TWO_STAGE_METHODS):  # the two-stage methods' second stage is Hinton's
        alpha = float(s["alpha"])
        kd = KDLoss(float(s["temperature"]), multi_label=multi_label)
        return [LossTerm("ce", supervised_loss, weight=1 - alpha, teacher=LABEL), LossTerm("kd", kd, weight=alpha)]
    _, student_blocks = study_layers(student)
    _, teacher_blocks = study_layers(teacher)
    if method == "at":
        weight = float(s["at_beta"]) / 2
        return [ce] + [
            LossTerm(f"at_{i + 1}", AttentionTransferLoss(p=2, mode="map"), weight=weight, student=sb, teacher=tb)
            for i, (sb, tb) in enumerate(zip(student_blocks, teacher_blocks, strict=True))
        ]
    block = {"student": student_blocks[2], "teacher": teacher_blocks[2]}
    if method == "sp":
        return [ce, LossTerm("sp", SimilarityPreservingLoss(), weight=float(s["sp_gamma"]), **block)]
    terms = [ce]
    if method in ("rkd_d", "rkd_da"):
        terms.append(
            LossTerm("rkd_distance", RKDDistanceLoss(), weight=float(s["rkd_distance_weight"]), embed=True, min_batch=2,
                     **block)
        )
    if method in ("rkd_a", "rkd_da"):
        terms.append(
            LossTerm("rkd_angle", RKDAngleLoss(), weight=float(s["rkd_angle_weight"]), embed=True, min_batch=3, **block)
        )
    return terms


def deployed_network(network: nn.Module) -> nn.Module:
    """The network a checkpoint holds: an ``ONENetwork``'s single-branch student (the plain architecture, sharing
    its weights: the study reports it), else ``network`` itself."""
    inner = unwrap_network(network)
    return inner.student if isinstance(inner, ONENetwork) else network


def two_stage(method: str | None) -> bool:
    """Whether ``method`` has the initialisation stage ``distill_init`` (FitNet, FSP)."""
    return check_distill_method(method) in TWO_STAGE_METHODS


def feature_channels(network: nn.Module, layers: list[str], in_channels: int, size: list[int]) -> list[int]:
    """The channels of ``network``'s outputs at ``layers`` for an input of ``in_channels`` x ``size`` (a forward pass
    of a copy, on the CPU)."""
    import copy

    import torch

    from medkd_ext.networks.taps import FeatureTaps

    net = copy.deepcopy(unwrap_network(network)).cpu().eval()
    with FeatureTaps(net, layers) as taps, torch.no_grad():
        net(torch.zeros((2, in_channels, *size)))
        return [int(taps.features[layer].shape[1]) for layer in layers]


def init_loss_terms(
    method: str,
    student: nn.Module,
    teacher: nn.Module,
    in_channels: int,
    size: list[int],
    settings: dict[str, Any] | None = None,
) -> list[LossTerm]:
    """The loss terms of the initialisation stage of a two-stage ``method`` (no supervised term, as in the study).

    ``fitnet``: :class:`~medkd_ext.losses.FitNetLoss` at block 2 (regressor from the student's to the teacher's
    channels, the larger map pooled to the smaller). ``fsp``: :class:`~medkd_ext.losses.FSPLoss` over the maps
    entering block 1 and leaving blocks 1, 2, 3, pair weights 1, 3, 1, with 1x1 adapters from the student's channels
    to the teacher's. ``size`` is the spatial size of the network's input (for the channel counts).
    """
    if not two_stage(method):
        raise ValueError(f"init_loss_terms: {method!r} has no initialisation stage (only {TWO_STAGE_METHODS}).")
    s = {**STUDY_SETTINGS, **(settings or {})}
    spatial_dims = len(size)
    s_first, s_blocks = study_layers(student)
    t_first, t_blocks = study_layers(teacher)
    if method == "fitnet":
        weights = [float(w) for w in s["fitnet_weights"]]
        terms = []
        for i, (sb, tb) in enumerate(zip(s_blocks, t_blocks, strict=True)):
            if weights[i] == 0:
                continue
            (sc,) = feature_channels(student, [sb], in_channels, size)
            (tc,) = feature_channels(teacher, [tb], in_channels, size)
            loss = FitNetLoss(sc, tc, spatial_dims, resize=True)
            terms.append(LossTerm(f"fitnet_{i + 1}", loss, weight=weights[i], student=sb, teacher=tb))
        return terms
    s_maps, t_maps = [s_first, *s_blocks], [t_first, *t_blocks]
    loss = FSPLoss(
        pair_weights=s["fsp_weights"],
        student_channels=feature_channels(student, s_maps, in_channels, size),
        teacher_channels=feature_channels(teacher, t_maps, in_channels, size),
        spatial_dims=spatial_dims,
    )
    return [LossTerm("fsp", loss, student=s_maps, teacher=t_maps)]


def load_init(network: nn.Module, method: str | None, init_ckpt: str) -> nn.Module:
    """Load the initialisation stage's weights into the student (two-stage methods); otherwise leave it."""
    if two_stage(method):
        from medkd_ext.networks.checkpoint import load_state_dict

        device = next(network.parameters()).device
        load_state_dict(network, init_ckpt, device, stage_hint=f"written by the distill_init stage of {method}")
    return network
