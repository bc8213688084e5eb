"""DenseNet-40: the light DenseNet student of the attention-transfer paper, built from MONAI's DenseNet.

Table VI of the attention-transfer paper (S. Akbarian, L. Seyyed-Kalantari, F. Khalvati and E. Dolatabadi,
"Evaluating Knowledge Transfer in Neural Network for Medical Images", arXiv:2008.13574, 2020): the DenseNet-121 stem,
dense block 1 (6 layers), transition 1, dense block 2 (12 layers), an 8x8 adaptive average pool, two 1x1
convolutions, a 1x1 adaptive average pool and a fully-connected classifier. Module names match MONAI's ``DenseNet121``
(``features.conv0``, ``features.denseblock2.denselayer12``, ``class_layers.out``), so the same layer names and hooks
serve teacher and student, and the stem and first two dense blocks of a DenseNet-121 checkpoint fit this network.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv, Pool
from monai.networks.layers.utils import get_act_layer, get_norm_layer
from monai.networks.nets import DenseNet
from torch import nn

from medkd_ext.networks.frozen import unwrap_network
from medkd_ext.utils import check_positive_int, check_positive_ints

__all__ = ["DenseNet40", "densenet_at_layer", "new_planes"]


class DenseNet40(DenseNet):
    """Light DenseNet (attention-transfer paper, Appendix A, Table VI), for 1D/2D/3D inputs.

    ``features``: MONAI's DenseNet stem (7x7 conv stride 2, BN, ReLU, 3x3 max-pool stride 2), dense blocks of
    ``block_config`` layers joined by transitions (BN-ReLU-1x1 conv halving the channels, 2x2 average pool), and
    ``norm5``, exactly as in :class:`monai.networks.nets.DenseNet`. ``class_layers``: ReLU, ``pool_size``-wide adaptive
    average pool (8x8, or 8x8x8 in 3D), one 1x1 convolution per ``mid_channels`` entry (followed by BN when its
    ``mid_norm`` entry is true, else with a bias; then ReLU), global average pool, flatten and a linear layer ``out``
    giving logits (softmax/sigmoid belong to the loss or post-processing).

    With the defaults the features end with ``64 + 6*32 = 256 -> 128 + 12*32 = 512`` channels at 1/8 of the input
    size (32x32 for a 256x256 image). The paper reports 1,364,142 trainable parameters and does not give the head's
    widths; the default head, 512 -> 32 (1x1 convolution with bias) -> 1024 (1x1 convolution with BN) and a linear
    layer to 14 classes, has exactly that count in 2D with 3 input channels (1,364,142 for ``out_channels=14``,
    ChestX-ray8's labels; 1,365,167 for 15, 1,354,917 for 5). Its ``class_layers.conv1`` gives 32 planes at 8x8,
    the size of DenseNet-121's attention maps in the paper's Fig. 2: a second attention-transfer tap
    (``student_layer``), beside the default one in the last dense block that the paper's text names.

    For attention transfer, :func:`densenet_at_layer` names the penultimate dense layer of the last dense block
    (``"features.denseblock2.denselayer11"`` here, ``"features.denseblock4.denselayer15"`` in DenseNet-121).

    Args:
        spatial_dims: number of spatial dimensions of the input.
        in_channels: number of input channels.
        out_channels: number of classes (logits).
        init_features: channels of the stem convolution.
        growth_rate: channels added by each dense layer (``k``).
        block_config: layers per dense block; (6, 12) is DenseNet-121 without its last two blocks.
        bn_size: bottleneck width factor (``bn_size * growth_rate`` channels in each layer's 1x1 conv).
        mid_channels: output channels of the 1x1 convolutions after the ``pool_size`` pooling.
        mid_norm: one flag per ``mid_channels`` entry: BN after that convolution (``True``, no bias) or a bias
            (``False``); default ``(False, True)``, and ``True`` for every entry when ``mid_channels`` is not the
            default.
        pool_size: output size of the first adaptive average pool (8 in the paper).
        act: activation type and arguments, as in MONAI's DenseNet.
        norm: normalisation type and arguments, as in MONAI's DenseNet.
        dropout_prob: dropout rate after each dense layer, in ``[0, 1)``.

    Shapes:
        input ``(B, in_channels, *spatial)``, each spatial size >= 8 (better a multiple of 8); output
        ``(B, out_channels)``.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        init_features: int = 64,
        growth_rate: int = 32,
        block_config: Sequence[int] = (6, 12),
        bn_size: int = 4,
        mid_channels: Sequence[int] = (32, 1024),
        mid_norm: Sequence[bool] | None = None,
        pool_size: int = 8,
        act: str | tuple = ("relu", {"inplace": True}),
        norm: str | tuple = "batch",
        dropout_prob: float = 0.0,
    ) -> None:
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"DenseNet40: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        for name, value in (
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("init_features", init_features),
            ("growth_rate", growth_rate),
            ("bn_size", bn_size),
            ("pool_size", pool_size),
        ):
            check_positive_int(value, "DenseNet40", name)
        blocks = check_positive_ints(block_config, "DenseNet40", "block_config")
        mids = check_positive_ints(mid_channels, "DenseNet40", "mid_channels")
        if mid_norm is None:
            mid_norm = (False, True) if tuple(mids) == (32, 1024) else (True,) * len(mids)
        norms = [bool(flag) for flag in mid_norm]
        if len(norms) != len(mids):
            raise ValueError(
                f"DenseNet40: mid_norm needs one flag per mid_channels entry ({len(mids)}), got {list(mid_norm)!r}."
            )
        if not 0.0 <= dropout_prob < 1.0:
            raise ValueError(f"DenseNet40: dropout_prob must be in [0, 1), got {dropout_prob}.")

        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            init_features=init_features,
            growth_rate=growth_rate,
            block_config=blocks,
            bn_size=bn_size,
            act=act,
            norm=norm,
            dropout_prob=dropout_prob,
        )
        self.growth_rate = growth_rate

        channels = init_features
        for i, num_layers in enumerate(blocks):
            channels += num_layers * growth_rate
            if i < len(blocks) - 1:
                channels //= 2
        self.feature_channels = channels

        conv_type = Conv[Conv.CONV, spatial_dims]
        layers: list[tuple[str, nn.Module]] = [
            ("relu", get_act_layer(name=act)),
            ("pool", Pool[Pool.ADAPTIVEAVG, spatial_dims](pool_size)),
        ]
        for i, (width, with_norm) in enumerate(zip(mids, norms, strict=True), start=1):
            layers.append((f"conv{i}", conv_type(channels, width, kernel_size=1, bias=not with_norm)))
            if with_norm:
                layers.append((f"norm{i}", get_norm_layer(name=norm, spatial_dims=spatial_dims, channels=width)))
            layers.append((f"relu{i}", get_act_layer(name=act)))
            channels = width
        layers += [
            ("global_pool", Pool[Pool.ADAPTIVEAVG, spatial_dims](1)),
            ("flatten", nn.Flatten(1)),
            ("out", nn.Linear(channels, out_channels)),
        ]
        self.class_layers = nn.Sequential(OrderedDict(layers))

        # same initialisation as MONAI's DenseNet, for the replaced head
        for module in self.class_layers.modules():
            if isinstance(module, conv_type):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
            elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
            elif isinstance(module, nn.Linear):
                nn.init.constant_(module.bias, 0)


_DENSE_BLOCK = re.compile(r"(?:^|\.)denseblock(\d+)$")


def densenet_at_layer(network: nn.Module, new_planes_only: bool = False) -> str:
    """Module name of the penultimate dense layer of the last dense block (the attention-transfer layer).

    The attention-transfer paper transfers "between the one layer before the last layer of the last dense blocks"
    of teacher and student (Section IV-B, Fig. 2: 32 feature planes). Works for MONAI's ``DenseNet121/169/201/264``,
    :class:`DenseNet40` and torchvision-style DenseNets (any module path ending in ``denseblock<N>``), also inside
    ``DataParallel``/``FrozenTeacher`` wrappers.

    A MONAI ``_DenseLayer`` returns ``torch.cat([x, new], 1)``: its input followed by the ``growth_rate`` planes it
    adds. To get only the new planes, either tap the layer and apply :func:`new_planes`, or tap the returned name with
    ``new_planes_only=True``, which is the layer's inner ``layers`` sequence (MONAI only) whose output is exactly the
    new planes, before concatenation.

    Args:
        network: a DenseNet, possibly wrapped.
        new_planes_only: return ``"<layer>.layers"`` (MONAI's bottleneck sequence) instead of the layer itself.

    Returns:
        e.g. ``"features.denseblock4.denselayer15"`` for DenseNet-121, ``"features.denseblock2.denselayer11"`` for
        DenseNet-40.

    Raises:
        ValueError: the network has no ``denseblock<N>`` module, its last block has fewer than two layers, or
            ``new_planes_only`` is asked of a layer without a ``layers`` sub-module.
    """
    inner = unwrap_network(network)
    blocks = []
    for name, module in inner.named_modules():
        match = _DENSE_BLOCK.search(name)
        if match:
            blocks.append((int(match.group(1)), name, module))
    if not blocks:
        raise ValueError(
            f"densenet_at_layer: {type(inner).__name__} has no module named like 'features.denseblock<N>'; "
            "give a MONAI/torchvision DenseNet or DenseNet40, or name the layer yourself (see module_names)."
        )
    _, block_name, block = max(blocks, key=lambda item: item[0])
    layers = list(block.named_children())
    if len(layers) < 2:
        raise ValueError(
            f"densenet_at_layer: the last dense block {block_name!r} has {len(layers)} layer(s); "
            "the penultimate layer needs at least 2."
        )
    layer_name, layer = layers[-2]
    name = f"{block_name}.{layer_name}"
    if new_planes_only:
        if not isinstance(getattr(layer, "layers", None), nn.Module):
            raise ValueError(
                f"densenet_at_layer: {name!r} ({type(layer).__name__}) has no 'layers' sub-module (not a MONAI "
                "_DenseLayer); use new_planes_only=False and new_planes(features, growth_rate) instead."
            )
        name += ".layers"
    return name


def new_planes(features: torch.Tensor, growth_rate: int = 32) -> torch.Tensor:
    """The planes a dense layer added: the last ``growth_rate`` channels of its output ``cat([input, new], 1)``.

    Args:
        features: output of a dense layer, ``(B, C, *spatial)`` with ``C >= growth_rate``.
        growth_rate: channels added per dense layer (32 in DenseNet-121 and DenseNet-40).

    Returns:
        a view ``(B, growth_rate, *spatial)``.
    """
    check_positive_int(growth_rate, "new_planes", "growth_rate")
    if features.ndim < 2 or features.shape[1] < growth_rate:
        raise ValueError(
            f"new_planes: features must be (B, C, ...) with C >= growth_rate={growth_rate}, "
            f"got shape {tuple(features.shape)}."
        )
    return features[:, -growth_rate:]
