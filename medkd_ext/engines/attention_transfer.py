"""The attention-transfer bundle's helpers (``bundles/attention_transfer_densenet``): DenseNet checkpoints and
trainable layers.

A teacher is any DenseNet-121 checkpoint: one written by this project (MONAI key names) or a torchvision-style one
(``features.denseblock1.denselayer1.norm1.weight``, ``classifier.weight``), whose keys are renamed to MONAI's. The
transfer-learning baseline of the attention-transfer paper trains all layers or only the last ``N``
(:func:`unfreeze_last_layers`), and every student may start from the weights of a pre-trained DenseNet that fit it
(:func:`load_matching_weights`: a DenseNet-121 checkpoint gives DenseNet-40 its stem and first two dense blocks).
On the demo the in-domain teacher learns from another, larger dataset of the same modality and findings
(:func:`teacher_datalist`), as the paper's teacher learns from MIMIC-CXR for CheXpert students.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medkd_ext.engines.settings import warn_if_reused_otherwise
from medkd_ext.engines.stages import Stage, _flatten, check_stage_output, stage_hint
from medkd_ext.networks.checkpoint import _strip_wrapper_prefixes, apply_state_dict, read_state_dict
from medkd_ext.networks.frozen import unwrap_network
from medkd_ext.utils import is_positive_int

logger = logging.getLogger(__name__)

__all__ = [
    "check_attention_maps",
    "distillation_teacher",
    "from_torchvision_densenet",
    "load_densenet_teacher",
    "load_matching_weights",
    "stage_will_train",
    "teacher_cases",
    "teacher_datalist",
    "unfreeze_last_layers",
    "warn_reused",
]

_CLASSIFIER = "class_layers.out.weight"
# torchvision "denselayer1.norm1.weight" (older: "denselayer1.norm.1.weight"); MONAI "denselayer1.layers.norm1.weight"
_TV_DENSE_LAYER = re.compile(r"^(.*\.denselayer\d+)\.(norm|relu|conv)\.?([12])\.(.+)$")
_LAYER_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def from_torchvision_densenet(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of a torchvision-style DenseNet state dict to those of MONAI's ``DenseNet``.

    ``...denselayer<i>.norm1.*`` (or ``norm.1``) becomes ``...denselayer<i>.layers.norm1.*`` (same for ``conv1``,
    ``norm2``, ``conv2``) and ``classifier.*`` becomes ``class_layers.out.*``. Keys already in MONAI's form are kept,
    so the function is idempotent.

    Args:
        state_dict: the checkpoint's ``{key: tensor}``.

    Returns:
        a new dict with the renamed keys, in the same order.
    """
    renamed: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _TV_DENSE_LAYER.match(key)
        if match:
            key = f"{match.group(1)}.layers.{match.group(2)}{match.group(3)}.{match.group(4)}"
        elif key.startswith("classifier."):
            key = "class_layers.out." + key[len("classifier.") :]
        renamed[key] = value
    return renamed


def _read_checkpoint(path: Path, device: str | torch.device | None, stage_hint: str | None) -> dict[str, torch.Tensor]:
    """A DenseNet checkpoint with MONAI key names (``{"epoch", "state_dict"}`` layouts accepted)."""
    key = None
    try:
        state = read_state_dict(path, device=device, stage_hint=stage_hint)
    except ValueError as error:
        if "key=" not in str(error):
            raise
        key = "state_dict"  # e.g. checkpoints saved as {"epoch": ..., "state_dict": ...}
        state = read_state_dict(path, device=device, stage_hint=stage_hint, key=key)
    stripped, _ = _strip_wrapper_prefixes(state)
    return from_torchvision_densenet(stripped)


def teacher_datalist(datalist: str | os.PathLike) -> str:
    """The datalist the in-domain teacher trains on by default: the demo's related site for the demo, else ``datalist``.

    When ``datalist`` is the ``dataset.json`` of a classification demo of the ``"target"`` site written by
    :func:`medkd_ext.data.make_classification_demo` (its folder's manifest says so), the teacher's data are that
    demo's ``"related"`` site, generated on first use in the sibling folder ``<folder>_related`` with the same
    dimensions, task, classes and image size and 1.5 times the training images (the paper's teacher learns from
    MIMIC-CXR, a larger dataset of the same modality, for students trained on CheXpert). Any other datalist (your
    data) is returned as is: the teacher then trains on its ``teacher_part``. Give ``teacher_datalist`` to train the
    teacher on a dataset of your own.
    """
    from medkd_ext.data.demo.cache import DEMO_MANIFEST_NAME

    path = Path(datalist)
    try:
        manifest = json.loads((path.parent / DEMO_MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return str(datalist)
    params = manifest.get("params") if isinstance(manifest, dict) else None
    if (
        path.name != "dataset.json"
        or manifest.get("task") != "classification"
        or not isinstance(params, dict)
        or params.get("site", "target") != "target"
    ):
        return str(datalist)
    from medkd_ext.data import make_classification_demo

    related = {k: v for k, v in params.items() if k not in ("site", "n_cases", "n_test")}
    paths = make_classification_demo(
        path.parent.with_name(path.parent.name + "_related"), site="related",
        n_cases=max(1, (3 * int(params["n_cases"])) // 2), n_test=0, **related,
    )
    return str(paths["dataset_json"])


def load_densenet_teacher(
    network: nn.Module,
    path: str | os.PathLike,
    device: str | torch.device | None = None,
    stage_hint: str | None = None,
    classes_key: str = "teacher_num_classes",
    settings: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Load a DenseNet teacher checkpoint (MONAI or torchvision key names) into ``network``, with clear errors.

    The number of classes of the checkpoint's classifier is compared with the network's first, so that a teacher
    trained for another label set is reported as such, naming the config key to set (attention transfer uses the
    teacher's features only, so a cross-domain teacher with other classes is fine once that key matches). Every
    other difference (another architecture, other input channels, spatial dimensions) is reported by
    :func:`medkd_ext.networks.load_state_dict` with the keys concerned.

    Args:
        network: the teacher network (e.g. MONAI ``DenseNet121``), possibly wrapped.
        path: the checkpoint file.
        device: ``map_location`` for reading.
        stage_hint: what writes this file, added to the messages (e.g. ``"run configs/train_teacher.json"``).
        classes_key: config key that sets the teacher's number of classes, named in the class-count message.
        settings: this run's input settings, checked against the record the teacher stage wrote beside ``path``
            (:func:`medkd_ext.engines.check_stage_output`); a teacher from elsewhere has none and is not checked.

    Returns:
        ``network`` with the checkpoint's weights.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file, another class count, or a checkpoint that does not fit the architecture.
    """
    path = Path(path)
    hint = f" ({stage_hint})" if stage_hint else ""
    if settings is not None and path.is_file():
        check_stage_output(path, settings, stage_hint or "")
    state = _read_checkpoint(path, device, stage_hint)
    target = unwrap_network(network).state_dict()
    if _CLASSIFIER in state and _CLASSIFIER in target and state[_CLASSIFIER].ndim == 2:
        found, expected = state[_CLASSIFIER].shape[0], target[_CLASSIFIER].shape[0]
        if found != expected:
            raise ValueError(
                f"Teacher checkpoint '{path}' has {found} output classes but the teacher network has {expected}; "
                f"set {classes_key}={found} (attention transfer only uses the teacher's features) or give the "
                f"checkpoint of a teacher trained for {expected} classes{hint}."
            )
    return apply_state_dict(network, state, source=path, stage_hint=stage_hint)


def distillation_teacher(
    network: nn.Module,
    path: str | os.PathLike,
    device: str | torch.device | None,
    settings: Mapping[str, Any] | None,
    stages: Any,
    bundle_root: str | os.PathLike | None,
    distill_method: str | None,
    is_baseline: bool = False,
) -> nn.Module | None:
    """The teacher the student stage distils from (``train.json``'s ``teacher``): ``None`` for the baseline and for
    the online methods, which have no trained teacher; else ``path`` loaded into ``network`` by
    :func:`load_densenet_teacher`, a missing file named with the stage that writes it (``stages``)."""
    from medkd_ext.engines.kd_study import needs_teacher  # kd_study's overlays name this module's functions

    if is_baseline or not needs_teacher(distill_method):
        return None
    hint = stage_hint(stages, path, bundle_root) + ", or give teacher_ckpt"
    return load_densenet_teacher(network, path, device, hint, settings=settings)


def _enabled(stages: Any, name: str) -> bool:
    return any(s.name == name and s.enabled for s in _flatten(stages) if isinstance(s, Stage))


def stage_will_train(stages: Any, name: str, output: str | os.PathLike | None) -> bool:
    """Whether ``train.json``'s stage ``name`` is enabled and will train, its ``output`` not existing (the
    pre-training and teacher stages reuse their checkpoint when it exists)."""
    return _enabled(stages, name) and output is not None and not os.path.isfile(output)


def teacher_cases(
    datalist: str | os.PathLike,
    part: str,
    fractions: Mapping[str, float],
    seed: int = 0,
    class_columns: list[str] | None = None,
) -> list[dict[str, Any]]:
    """The cases the teacher stage trains and validates on: ``part`` and ``"validation"`` of ``teacher_datalist``
    (:func:`medkd_ext.data.datalist_part`), for the checks made before any stage runs."""
    from medkd_ext.data import datalist_part

    return [
        case
        for name in (part, "validation")
        for case in datalist_part(datalist, name, fractions, seed, class_columns=class_columns, name="teacher_datalist")
    ]


def warn_reused(
    stages: Any, teacher_ckpt: str | os.PathLike | None, teacher_data_settings: Mapping[str, Any]
) -> list[str]:
    """Before any stage runs: warn about a ``teacher.pt`` that the teacher stage will reuse without training although
    this bundle made it with other data or initial weights than this run's, or an earlier version made it
    (:func:`medkd_ext.engines.warn_if_reused_otherwise`); returns what was said. (``pretrained.pt`` is not checked:
    its datalist, the generic demo, would be generated for the check even when pre-training does not run.)"""
    if not _enabled(stages, "teacher") or teacher_ckpt is None or not os.path.isfile(teacher_ckpt):
        return []
    advice = "Delete it, or give another --teacher_ckpt, to train it on the data and initial weights of this run."
    return warn_if_reused_otherwise(teacher_ckpt, teacher_data_settings, "the teacher", advice)


def _backbone_key(key: str) -> str:
    """A key of a network built around a DenseNet backbone as the backbone names it: the trunk and branches of
    :class:`medkd_ext.networks.ONENetwork` (``trunk.features_conv0.weight``, ``branches.1.features_denseblock2...``)."""
    key = re.sub(r"^(trunk|branches\.\d+)\.", "", key)
    return re.sub(r"^features_", "features.", key)


def load_matching_weights(
    network: nn.Module, path: str | os.PathLike | None, device: str | torch.device | None = None
) -> nn.Module:
    """Initialise ``network`` with the weights of a checkpoint whose keys and shapes match (pre-training).

    This is the paper's "initialised with ImageNet weights" for any DenseNet student: a DenseNet-121 checkpoint
    (MONAI or torchvision keys) gives DenseNet-40 its stem, first dense block, transition and second dense block;
    a classifier of another class count is left as initialised. A ONE network (the KD study's ``one``) gets them in
    its trunk and in every branch.

    Args:
        network: the network to initialise, possibly wrapped.
        path: the checkpoint file; ``None`` leaves ``network`` as it is (random initialisation).
        device: ``map_location`` for reading.

    Returns:
        ``network`` (so that a config can build and initialise a network in one expression).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file, or no tensor of the checkpoint fits the network.
    """
    if path is None:
        return network
    path = Path(path)
    state = _read_checkpoint(path, device, None)
    target = unwrap_network(network)
    current = target.state_dict()
    fitting = {}
    for key, value in current.items():
        found = state.get(key, state.get(_backbone_key(key)))
        if found is not None and found.shape == value.shape:
            fitting[key] = found
    if not fitting:
        raise ValueError(
            f"Checkpoint '{path}' shares no key of the same shape with {type(target).__name__} "
            f"(checkpoint keys start {sorted(state)[:3]}, network keys {sorted(current)[:3]}); give a DenseNet "
            "checkpoint with the network's spatial_dims and in_channels, or pretrained_ckpt=null."
        )
    current.update(fitting)
    target.load_state_dict(current)
    logger.info("%s: %d of %d tensors initialised from %s", type(target).__name__, len(fitting), len(current), path)
    return network


def unfreeze_last_layers(network: nn.Module, num_layers: int | None = None) -> list[nn.Parameter]:
    """Make only the last ``num_layers`` layers of ``network`` trainable; return the trainable parameters.

    A layer is a convolution or a fully-connected layer, counted as in a DenseNet's name (DenseNet-121: 120
    convolutions and the classifier). Every parameter registered from the ``num_layers``-th layer from the end
    onwards (those layers and the normalisation layers among and after them) is trainable, the rest frozen:
    the attention-transfer paper's transfer-learning baseline unfreezes the last 34 layers of DenseNet-121
    (transition 3, dense block 4 and the classifier). ``None`` makes every parameter trainable. The BatchNorm
    layers before them are frozen as well: their running statistics are kept (they run in eval mode even when the
    trainer puts the network in training mode), so the frozen part computes what it computed before training.

    Args:
        network: the network, possibly wrapped.
        num_layers: number of last layers to train, ``1 <= num_layers <=`` number of layers, or ``None``.

    Returns:
        the parameters with ``requires_grad=True``, for the optimizer.

    Raises:
        ValueError: ``num_layers`` out of range.
    """
    inner = unwrap_network(network)
    modules = list(inner.modules())
    layer_positions = [i for i, m in enumerate(modules) if isinstance(m, _LAYER_TYPES)]
    if num_layers is None:
        first = 0
    else:
        if not is_positive_int(num_layers) or num_layers > len(layer_positions):
            raise ValueError(
                f"unfreeze_last_layers: num_layers must be an int from 1 to {len(layer_positions)} (the conv/linear "
                f"layers of {type(inner).__name__}) or None for all layers, got {num_layers!r}."
            )
        first = layer_positions[-num_layers]
    trainable: list[nn.Parameter] = []
    for i, module in enumerate(modules):
        for param in module.parameters(recurse=False):
            param.requires_grad_(i >= first)
            if i >= first:
                trainable.append(param)
        if isinstance(module, _NORM_TYPES):
            _keep_statistics_frozen(module, frozen=i < first)
    return trainable


_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def _eval_mode(module: nn.Module, args: tuple) -> None:
    """Forward pre-hook of a frozen normalisation layer: it normalises with its running statistics and does not
    update them, whatever ``train()`` the trainer called on the network."""
    module.training = False


def _keep_statistics_frozen(module: nn.Module, frozen: bool) -> None:
    handle = getattr(module, "_medkd_frozen_statistics", None)
    if handle is not None:
        handle.remove()
        module._medkd_frozen_statistics = None
    if frozen:
        module._medkd_frozen_statistics = module.register_forward_pre_hook(_eval_mode)


def check_attention_maps(
    student: nn.Module,
    teacher: nn.Module,
    student_layer: str,
    teacher_layer: str,
    input_size: int | list[int],
    spatial_dims: int,
    in_channels: int,
) -> list[int]:
    """Refuse, before any stage trains, an input size at which attention transfer does nothing.

    An attention map of one position is constant once L2-normalised (eq. 1), so the attention term would have no
    gradient and the "distilled" student would be the cross-entropy baseline under another name: DenseNet-121's
    attention-transfer layer is at 1/32 of the input, so a 32x32 crop gives it 1x1 maps (64x64 gives 2x2, the paper's
    256x256 gives 8x8). Both networks run once on a zero input of ``input_size`` (the crop the networks see) to read
    their maps' sizes.

    Args:
        student: the student network; ``student_layer`` its attention-transfer layer.
        teacher: the teacher network; ``teacher_layer`` its attention-transfer layer.
        input_size: the network input's size (``crop_size``), one int for every axis or one per axis.
        spatial_dims: 2 or 3.
        in_channels: input channels.

    Returns:
        the teacher's map size.

    Raises:
        ValueError: naming the layer, its map size and the smallest input size that gives more than one position.
    """
    from medkd_ext.networks.taps import FeatureTaps
    from medkd_ext.transforms import spatial_size

    size = list(spatial_size(input_size, spatial_dims))
    shapes = {}
    for role, network, layer in (("teacher", teacher, teacher_layer), ("student", student, student_layer)):
        inner = unwrap_network(network)
        device = next(inner.parameters()).device
        was_training = inner.training
        inner.eval()
        try:
            with torch.no_grad(), FeatureTaps(inner, [layer]) as taps:
                inner(torch.zeros(1, in_channels, *size, device=device))
                shapes[role] = (layer, list(taps[layer].shape[2:]))
        finally:
            inner.train(was_training)
    flat = [(role, layer, shape) for role, (layer, shape) in shapes.items() if int(torch.tensor(shape).prod()) <= 1]
    if flat:
        role, layer, shape = flat[0]
        factor = max(n // max(m, 1) for n, m in zip(size, shape, strict=True))
        raise ValueError(
            f"crop_size {size}: the {role}'s attention-transfer layer '{layer}' gives {'x'.join(map(str, shape))} "
            f"maps, whose one position is constant once normalised, so attention transfer would do nothing. Use a "
            f"crop_size (and image_size) of at least {2 * factor} (maps of 2 positions per axis; the paper's 256 "
            "gives 8x8), or --baseline true to train with cross-entropy alone."
        )
    return shapes["teacher"][1]
