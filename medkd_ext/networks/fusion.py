"""The joint teacher of the multi-dataset cross-domain distillation (Ceausescu et al., stage 2).

The encoders and bottlenecks of several frozen teachers (a target teacher and one source teacher per source dataset)
are tapped at every level; at each level their feature maps are fused by cross-attention
(:class:`CrossAttentionFusion`), and a new decoder trained from scratch turns the fused multi-level features into a
segmentation (:class:`JointTeacher`). Paper: section 3.2, "Stage 2: Joint teacher via multi-level feature fusion",
Algorithm 1 lines 20-29.

Teacher interface (as :class:`~medkd_ext.networks.SegUNet` has it): ``feature_layers`` (module paths of the encoder
levels from high resolution down, bottleneck last), ``feature_channels`` (channels of those layers' outputs) and
``feature_strides`` (their downsampling factor with respect to the input).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Conv
from torch import nn

from medkd_ext.networks.frozen import FrozenTeacher, unwrap_network
from medkd_ext.networks.taps import FeatureTaps
from medkd_ext.utils import adaptive_avg_pool, check_positive_int, interpolation_mode, is_positive_int

__all__ = ["CrossAttentionFusion", "JointTeacher", "token_grid"]


def token_grid(spatial_size: Sequence[int], max_tokens: int) -> tuple[int, ...]:
    """The pooled grid on which :class:`CrossAttentionFusion` attends for a feature map of ``spatial_size``.

    A map with at most ``max_tokens`` positions is used as it is. A larger one is pooled to the grid with the most
    positions not exceeding ``max_tokens`` found by shrinking every axis by the same factor
    ``(max_tokens / prod(spatial_size)) ** (1 / D)`` and then growing the relatively smallest axes one step at a time
    while the budget allows, so the grid keeps the map's aspect ratio. No axis is larger than the map's.

    Examples (``max_tokens=512``): ``(48, 48, 48) -> (8, 8, 8)``; ``(6, 6, 6) -> (6, 6, 6)``;
    ``(96, 96, 48) -> (10, 10, 5)``; ``(64, 64) -> (23, 22)``.

    Args:
        spatial_size: the spatial size of the feature map (one int per spatial dimension).
        max_tokens: the token budget, a positive int.

    Returns:
        the grid size, one int per spatial dimension, whose product is at most ``max_tokens``.
    """
    size = tuple(int(s) for s in spatial_size)
    if not size or any(s < 1 for s in size):
        raise ValueError(f"token_grid: spatial_size must be positive ints, got {tuple(spatial_size)!r}.")
    check_positive_int(max_tokens, "token_grid", "max_tokens")
    if math.prod(size) <= max_tokens:
        return size
    factor = (max_tokens / math.prod(size)) ** (1.0 / len(size))
    grid = [max(1, min(s, math.floor(s * factor + 1e-9))) for s in size]
    while math.prod(grid) > max_tokens:  # guards against rounding up by the epsilon above
        largest = max(range(len(grid)), key=lambda d: grid[d])
        grid[largest] -= 1
    grown = True
    while grown:
        grown = False
        for d in sorted(range(len(grid)), key=lambda d: grid[d] / size[d]):
            if grid[d] < size[d] and math.prod(grid) // grid[d] * (grid[d] + 1) <= max_tokens:
                grid[d] += 1
                grown = True
                break
    return tuple(grid)


def _sincos_positions(grid: Sequence[int], dim: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Fixed sine/cosine encoding of the cell centres of ``grid`` in ``[-1, 1]``, shape ``(prod(grid), dim)``.

    Each spatial axis gets ``dim // (2 D)`` frequencies ``pi * 2^j``; the remaining channels are zero.
    """
    num_freq = max(1, dim // (2 * len(grid)))
    axes = [(torch.arange(g, device=device, dtype=torch.float32) + 0.5) / g * 2.0 - 1.0 for g in grid]
    coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))  # (T, D)
    freqs = math.pi * 2.0 ** torch.arange(num_freq, device=device, dtype=torch.float32)
    angles = (coords[:, :, None] * freqs).reshape(coords.shape[0], -1)  # (T, D * num_freq)
    encoding = torch.cat([angles.sin(), angles.cos()], dim=1)[:, :dim]
    if encoding.shape[1] < dim:
        encoding = F.pad(encoding, (0, dim - encoding.shape[1]))
    return encoding.to(dtype)


class CrossAttentionFusion(nn.Module):
    """Fuse the feature maps of K teachers at one level by cross-attention, then residual convolutions.

    For teacher maps ``x_1 .. x_K`` of one encoder level (or the bottleneck):

    1. each ``x_k`` is projected to ``embed_dim`` channels by a 1x1 convolution ``P_k`` and, if its spatial size
       differs from ``x_1``'s, resampled to it (linear/bilinear/trilinear interpolation; projecting first is the
       same map as resampling first, and cheaper);
    2. tokens: ``P_k(x_k)`` is average-pooled (adaptive) to the grid of :func:`token_grid` (at most ``max_tokens``
       positions) and flattened to ``(B, T, embed_dim)``; a fixed sine/cosine encoding of each token's position is
       added to queries and keys (not values) when ``positional_encoding`` is set, so a query can find the tokens
       of the other teachers at the same place;
    3. for every teacher ``k``: query = its layer-normalised tokens, keys/values = the layer-normalised tokens of the
       other ``K - 1`` teachers concatenated (``nn.MultiheadAttention``, ``batch_first``, one attention module per
       teacher); the ``T`` output tokens are reshaped to the grid, interpolated back to the level's full size and
       added to ``P_k(x_k)``;
    4. the K results are concatenated along channels (``K * embed_dim``) and passed through a
       :class:`~monai.networks.blocks.ResidualUnit` with ``num_res_units`` convolutions (kernel 3) to
       ``out_channels``.

    Token budget: per sample and head, the attention of teacher ``k`` scores ``T x (K - 1) T`` query/key pairs, so a
    level costs ``K (K - 1) T^2`` scores per head (O(K^2 T^2)) with ``T <= max_tokens`` whatever the level's size;
    full attention over a 48^3 level (110,592 voxels) would need ~1.2e10 scores per teacher pair and head. The
    convolutions stay at full resolution. With ``max_tokens=512``, ``K=3``, 4 heads and batch 2 the scores of one
    level are 12.6 M numbers (50 MB in float32, less with the fused attention kernel ``need_weights=False`` uses).

    Args:
        in_channels: channels of each teacher's map at this level, one entry per teacher (at least 2).
        out_channels: channels of the fused map.
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        num_heads: attention heads; must divide ``embed_dim``.
        max_tokens: the most tokens per teacher the attention sees (see above).
        embed_dim: common channels of the projected maps and the attention; default ``out_channels`` rounded up to
            a multiple of ``num_heads``.
        positional_encoding: add the sine/cosine position encoding to queries and keys.
        num_res_units: convolutions in the residual unit after the concatenation (at least 1).
        norm: normalisation of the residual unit, as in MONAI.
        act: activation of the residual unit, as in MONAI.

    Shapes:
        input: a sequence of K tensors ``(B, in_channels[k], *spatial_k)``; output
        ``(B, out_channels, *spatial_1)``.

    Raises:
        ValueError: a bad argument (named in the message); at forward time, a wrong number of maps, a map with the
            wrong channels, batch size or number of dimensions.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        out_channels: int,
        spatial_dims: int,
        num_heads: int = 4,
        max_tokens: int = 512,
        embed_dim: int | None = None,
        positional_encoding: bool = True,
        num_res_units: int = 2,
        norm: str | tuple = "instance",
        act: str | tuple = "PRELU",
    ) -> None:
        super().__init__()
        if isinstance(in_channels, (int, str)) or not isinstance(in_channels, Iterable):
            raise ValueError(
                f"CrossAttentionFusion: in_channels must be a sequence with one channel count per teacher, "
                f"got {in_channels!r}."
            )
        in_channels = tuple(in_channels)
        if len(in_channels) < 2:
            raise ValueError(
                f"CrossAttentionFusion: in_channels has {len(in_channels)} entry ({in_channels!r}); cross-attention "
                "fuses at least 2 teachers, give one channel count per teacher."
            )
        if not all(is_positive_int(c) for c in in_channels):
            raise ValueError(f"CrossAttentionFusion: in_channels must be positive ints, got {in_channels!r}.")
        check_positive_int(out_channels, "CrossAttentionFusion", "out_channels")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"CrossAttentionFusion: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        check_positive_int(num_heads, "CrossAttentionFusion", "num_heads")
        check_positive_int(max_tokens, "CrossAttentionFusion", "max_tokens")
        if embed_dim is None:
            embed_dim = math.ceil(out_channels / num_heads) * num_heads
        if not is_positive_int(embed_dim) or embed_dim % num_heads:
            raise ValueError(
                f"CrossAttentionFusion: embed_dim must be a positive multiple of num_heads={num_heads}, "
                f"got {embed_dim!r}; choose e.g. {math.ceil(out_channels / num_heads) * num_heads}."
            )
        check_positive_int(num_res_units, "CrossAttentionFusion", "num_res_units")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.spatial_dims = spatial_dims
        self.num_heads = num_heads
        self.max_tokens = max_tokens
        self.embed_dim = embed_dim
        self.positional_encoding = bool(positional_encoding)
        num_teachers = len(in_channels)
        conv = Conv[Conv.CONV, spatial_dims]
        self.project = nn.ModuleList([conv(c, embed_dim, kernel_size=1) for c in in_channels])
        self.query_norm = nn.ModuleList([nn.LayerNorm(embed_dim) for _ in range(num_teachers)])
        self.context_norm = nn.ModuleList([nn.LayerNorm(embed_dim) for _ in range(num_teachers)])
        self.attention = nn.ModuleList(
            [nn.MultiheadAttention(embed_dim, num_heads, batch_first=True) for _ in range(num_teachers)]
        )
        self.mix = ResidualUnit(
            spatial_dims, num_teachers * embed_dim, out_channels, kernel_size=3, subunits=num_res_units,
            act=act, norm=norm,
        )  # fmt: skip

    @property
    def num_teachers(self) -> int:
        """K, the number of teacher maps fused."""
        return len(self.in_channels)

    def _check_inputs(self, features: Sequence[torch.Tensor]) -> None:
        if isinstance(features, torch.Tensor) or len(features) != self.num_teachers:
            got = "a single tensor" if isinstance(features, torch.Tensor) else f"{len(features)} maps"
            raise ValueError(
                f"CrossAttentionFusion: expected a sequence of {self.num_teachers} feature maps (one per teacher), "
                f"got {got}."
            )
        batch = features[0].shape[0]
        for k, x in enumerate(features):
            if x.dim() != self.spatial_dims + 2:
                raise ValueError(
                    f"CrossAttentionFusion: map {k} must be (B, C, *spatial) with {self.spatial_dims} spatial dims, "
                    f"got shape {list(x.shape)}."
                )
            if x.shape[1] != self.in_channels[k]:
                raise ValueError(
                    f"CrossAttentionFusion: map {k} has {x.shape[1]} channels but in_channels[{k}] is "
                    f"{self.in_channels[k]}; give the teachers' maps in the order of in_channels."
                )
            if x.shape[0] != batch:
                raise ValueError(
                    f"CrossAttentionFusion: map {k} has batch size {x.shape[0]}, map 0 has {batch}; the maps must "
                    "come from the same input batch."
                )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """Fused map ``(B, out_channels, *spatial of features[0])`` from K maps ``(B, in_channels[k], *spatial_k)``."""
        self._check_inputs(features)
        size = tuple(features[0].shape[2:])
        mode = interpolation_mode(self.spatial_dims)
        projected = []
        for proj, x in zip(self.project, features):
            y = proj(x)
            if tuple(y.shape[2:]) != size:
                y = F.interpolate(y, size=size, mode=mode, align_corners=False)
            projected.append(y)

        grid = token_grid(size, self.max_tokens)
        pooled = [adaptive_avg_pool(y, grid) for y in projected]  # the maps themselves when grid == size
        tokens = [p.flatten(2).transpose(1, 2) for p in pooled]  # (B, T, E) each
        position = None
        if self.positional_encoding:
            position = _sincos_positions(grid, self.embed_dim, tokens[0].device, tokens[0].dtype)

        fused = []
        for k, y in enumerate(projected):
            query = self.query_norm[k](tokens[k])
            context = torch.cat([self.context_norm[k](t) for j, t in enumerate(tokens) if j != k], dim=1)
            keys = context
            if position is not None:
                query = query + position
                keys = context + position.repeat(self.num_teachers - 1, 1)
            attended, _ = self.attention[k](query, keys, context, need_weights=False)
            attended = attended.transpose(1, 2).reshape(y.shape[0], self.embed_dim, *grid)
            if grid != size:
                attended = F.interpolate(attended, size=size, mode=mode, align_corners=False)
            fused.append(y + attended)
        return self.mix(torch.cat(fused, dim=1))

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, embed_dim={self.embed_dim}, "
            f"num_heads={self.num_heads}, max_tokens={self.max_tokens}, positional_encoding={self.positional_encoding}"
        )


class _FeaturesComplete(Exception):
    """Raised by a forward hook once every tapped layer of a teacher has run, to skip the teacher's decoder."""


def _stop_when_all_ran(seen: set[str], expected: int, name: str, module: nn.Module, args: Any, output: Any) -> None:
    """Forward hook: note that layer ``name`` ran; once ``expected`` layers did, stop the teacher's forward pass."""
    seen.add(name)
    if len(seen) == expected:
        raise _FeaturesComplete


class _DecoderBlock(nn.Module):
    """Transposed convolution to the next finer level (+ resample on a size mismatch), concat the skip, residual."""

    def __init__(self, up: nn.Module, conv: nn.Module, mode: str) -> None:
        super().__init__()
        self.up = up
        self.conv = conv
        self.mode = mode

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None, size: Sequence[int]) -> torch.Tensor:
        x = self.up(x)
        if tuple(x.shape[2:]) != tuple(size):
            x = F.interpolate(x, size=tuple(size), mode=self.mode, align_corners=False)
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


def _teacher_interface(teacher: nn.Module, index: int) -> tuple[list[str], list[int], list[int] | None]:
    inner = unwrap_network(teacher)
    name = f"JointTeacher: teacher {index} ({type(inner).__name__})"
    layers = getattr(inner, "feature_layers", None)
    channels = getattr(inner, "feature_channels", None)
    strides = getattr(inner, "feature_strides", None)
    if layers is None or channels is None:
        raise ValueError(
            f"{name} has no feature_layers/feature_channels; a teacher must name its encoder levels and bottleneck "
            "(high resolution first, bottleneck last) as SegUNet and TResUNet do."
        )
    layers, channels = list(layers), list(channels)
    if not layers or not all(isinstance(n, str) for n in layers):
        raise ValueError(f"{name}: feature_layers must be a non-empty list of module names, got {layers!r}.")
    if len(channels) != len(layers) or not all(is_positive_int(c) for c in channels):
        raise ValueError(
            f"{name}: feature_channels {channels!r} must hold one positive int per entry of feature_layers "
            f"{layers!r}."
        )
    if strides is not None:
        strides = list(strides)
        if len(strides) != len(layers) or not all(is_positive_int(s) for s in strides):
            raise ValueError(
                f"{name}: feature_strides {strides!r} must hold one positive int per entry of feature_layers "
                f"{layers!r}."
            )
    return layers, channels, strides


def _int_list(value: Any, name: str, length: int, what: str) -> list[int]:
    if isinstance(value, (int, str)) or not isinstance(value, Iterable):
        raise ValueError(f"JointTeacher: {name} must be a sequence of {length} positive ints ({what}), got {value!r}.")
    value = list(value)
    if len(value) != length or not all(is_positive_int(v) for v in value):
        raise ValueError(f"JointTeacher: {name} must hold {length} positive ints ({what}), got {value!r}.")
    return value


class JointTeacher(nn.Module):
    """Frozen teachers fused level by level by cross-attention, with a new decoder trained from scratch.

    Paper section 3.2 (Algorithm 1, stage 2): the encoders and bottlenecks of the target teacher and the source
    teachers are frozen; at every encoder resolution and at the bottleneck their feature maps are fused
    (:class:`CrossAttentionFusion`); a new segmentation decoder on the fused backbone is trained on the target data.

    Teachers: each is wrapped in :class:`~medkd_ext.networks.FrozenTeacher` (unless it already is one), so it stays
    in ``eval()`` when ``train()`` is called, its parameters never require gradients and it runs under
    ``torch.inference_mode()``; its ``feature_layers`` are read with :class:`~medkd_ext.networks.FeatureTaps`, whose
    features are ordinary copies when read outside inference mode, so the fusion can be trained on them. A forward
    hook stops each teacher as soon as all its tapped layers have run (``skip_teacher_decoders``), so the teachers'
    own decoders cost nothing. The teachers are registered as ``teachers.0 .. teachers.{K-1}``, so
    ``state_dict()`` holds them (with the bare networks' keys under ``teachers.k.``), but only
    :meth:`trainable_parameters` belong in the optimizer.

    Levels: teachers may have different numbers of levels; with ``L = min_k len(feature_layers_k)``, the LAST ``L``
    levels of each teacher are used, so the bottlenecks align (and the finest levels of deeper teachers are not
    used). Fused level ``i`` has the spatial size of the first teacher's level (maps of other sizes are resampled)
    and stride ``level_strides[i]``. Example: a SegUNet target teacher (strides ``[1, 2, 4, 8]``) with a TResUNet
    source teacher (``[2, 4, 8, 16, 16]``) fuses 4 levels; the TResUNet's last four (``[4, 8, 16, 16]``) are
    resampled to the SegUNet's sizes. The teachers' forward hooks exist only during a forward pass, so the module
    can be deep-copied and pickled.

    Decoder (``decoder.0 .. decoder.{L-2}``, coarse to fine): a transposed convolution upsamples the fused level
    ``i + 1`` to level ``i`` (by ``level_strides[i + 1] / level_strides[i]``), the fused level ``i`` is
    concatenated, a :class:`~monai.networks.blocks.ResidualUnit` gives ``fused_channels[i]`` channels. If the finest
    level's stride is above 1, ``decoder.{L-1}`` upsamples to the input resolution (transposed convolution, residual
    unit). ``head`` is a 1x1 convolution to ``out_channels`` logits.

    Interface of a teacher network, so that the student stage taps the joint teacher like any network:
    ``feature_layers = ["fusion.0", ..., "fusion.{L-1}"]`` (``fusion.{L-1}`` fuses the bottlenecks),
    ``feature_channels = fused_channels``, ``feature_strides = level_strides``, and ``divisor`` (the least common
    multiple of the teachers' ``divisor``, else of their coarsest stride: spatial sizes must be multiples of it).

    Token budget (see :class:`CrossAttentionFusion`): every level attends over at most ``max_tokens`` tokens per
    teacher. For a 48^3 input and strides ``[1, 2, 4, 8]`` (levels 48^3, 24^3, 12^3, 6^3) and ``max_tokens=512``,
    the levels use 8^3, 8^3, 8^3 and 6^3 grids: 512, 512, 512 and 216 tokens per teacher.

    Args:
        teachers: the K >= 2 trained teacher networks (target teacher first: the fused maps take its resolution),
            each with ``feature_layers`` and ``feature_channels`` (and ``feature_strides``); load their weights
            before or after wrapping (``teachers.k.`` keys).
        spatial_dims: number of spatial dimensions (1, 2 or 3).
        out_channels: number of output channels (classes; logits).
        fused_channels: channels of the fused map per level (``L`` entries); default the first teacher's
            ``feature_channels`` (its last ``L``).
        num_heads: attention heads of every fusion block.
        max_tokens: token budget per teacher and level.
        level_strides: stride of each fused level with respect to the input (``L`` entries, non-decreasing, each
            dividing the next); default the first teacher's ``feature_strides`` (its last ``L``). Needed when the
            first teacher has no ``feature_strides``; when it has, the two must agree.
        num_res_units: convolutions per residual unit in the fusion blocks and the decoder.
        norm: normalisation of the fusion blocks and the decoder, as in MONAI.
        act: activation of the fusion blocks and the decoder, as in MONAI.
        skip_teacher_decoders: stop every teacher once its tapped layers have run; ``False`` runs the whole teacher
            (same result, slower).

    Shapes:
        input ``(B, in_channels, *spatial)`` as the teachers take it; output ``(B, out_channels, *spatial)``.

    Raises:
        ValueError: fewer than 2 teachers, a teacher without the interface or with unknown ``feature_layers``,
            channel or stride lists of the wrong length or values, strides that disagree with the first teacher's.
        TypeError: a teacher that is not an ``nn.Module``.
        RuntimeError: at forward time, a teacher whose tapped layers did not all run.
    """

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        spatial_dims: int,
        out_channels: int,
        fused_channels: Sequence[int] | None = None,
        num_heads: int = 4,
        max_tokens: int = 512,
        level_strides: Sequence[int] | None = None,
        num_res_units: int = 2,
        norm: str | tuple = "instance",
        act: str | tuple = "PRELU",
        skip_teacher_decoders: bool = True,
    ) -> None:
        super().__init__()
        if (isinstance(teachers, nn.Module) and not isinstance(teachers, nn.ModuleList)) or not isinstance(
            teachers, Iterable
        ):
            raise ValueError(
                f"JointTeacher: teachers must be a sequence of at least 2 networks, got {type(teachers).__name__}."
            )
        teachers = list(teachers)
        if len(teachers) < 2:
            raise ValueError(
                f"JointTeacher: got {len(teachers)} teacher; the joint teacher fuses at least 2 (the target teacher "
                "and one source teacher per source dataset)."
            )
        for k, teacher in enumerate(teachers):
            if not isinstance(teacher, nn.Module):
                raise TypeError(f"JointTeacher: teacher {k} must be a torch.nn.Module, got {type(teacher).__name__}.")
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"JointTeacher: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")
        check_positive_int(out_channels, "JointTeacher", "out_channels")
        check_positive_int(num_res_units, "JointTeacher", "num_res_units")

        interfaces = [_teacher_interface(t, k) for k, t in enumerate(teachers)]
        num_levels = min(len(layers) for layers, _, _ in interfaces)
        used_layers = [layers[len(layers) - num_levels :] for layers, _, _ in interfaces]
        used_channels = [channels[len(channels) - num_levels :] for _, channels, _ in interfaces]
        first_strides = interfaces[0][2]
        if first_strides is not None:
            first_strides = first_strides[len(first_strides) - num_levels :]
        if level_strides is None:
            if first_strides is None:
                raise ValueError(
                    "JointTeacher: teacher 0 has no feature_strides; give level_strides, the stride of each of its "
                    f"last {num_levels} levels with respect to the input."
                )
            level_strides = first_strides
        level_strides = _int_list(level_strides, "level_strides", num_levels, "one per fused level")
        if first_strides is not None and level_strides != first_strides:
            raise ValueError(
                f"JointTeacher: level_strides {level_strides} disagree with teacher 0's feature_strides "
                f"{first_strides} (its last {num_levels} levels); the fused maps have teacher 0's resolution, leave "
                "level_strides unset."
            )
        for i in range(num_levels - 1):
            if level_strides[i + 1] % level_strides[i]:
                raise ValueError(
                    f"JointTeacher: level_strides {level_strides} must each divide the next (the decoder upsamples "
                    f"by their ratios); {level_strides[i]} does not divide {level_strides[i + 1]}."
                )
        if fused_channels is None:
            fused_channels = used_channels[0]
        fused_channels = _int_list(fused_channels, "fused_channels", num_levels, "one per fused level")

        self.spatial_dims = spatial_dims
        self.out_channels = out_channels
        self.num_levels = num_levels
        self.teacher_layers = used_layers
        self.skip_teacher_decoders = bool(skip_teacher_decoders)
        self.teachers = nn.ModuleList([t if isinstance(t, FrozenTeacher) else FrozenTeacher(t) for t in teachers])
        self.fusion = nn.ModuleList(
            [
                CrossAttentionFusion(
                    [channels[i] for channels in used_channels], fused_channels[i], spatial_dims,
                    num_heads=num_heads, max_tokens=max_tokens, num_res_units=num_res_units, norm=norm, act=act,
                )  # fmt: skip
                for i in range(num_levels)
            ]
        )
        mode = interpolation_mode(spatial_dims)

        def up_block(c_in: int, c_out: int, ratio: int, skip_channels: int) -> _DecoderBlock:
            kernel = max(3, ratio + 1 if ratio % 2 == 0 else ratio)  # odd and >= stride: no gaps, "same" padding
            up = Convolution(
                spatial_dims, c_in, c_out, strides=ratio, kernel_size=kernel, act=act, norm=norm, is_transposed=True
            )
            conv = ResidualUnit(
                spatial_dims, c_out + skip_channels, c_out, kernel_size=3, subunits=num_res_units, act=act, norm=norm
            )
            return _DecoderBlock(up, conv, mode)

        decoder = [
            up_block(fused_channels[i + 1], fused_channels[i], level_strides[i + 1] // level_strides[i],
                     fused_channels[i])
            for i in reversed(range(num_levels - 1))
        ]  # fmt: skip
        if level_strides[0] > 1:
            decoder.append(up_block(fused_channels[0], fused_channels[0], level_strides[0], 0))
        self.decoder = nn.ModuleList(decoder)
        self.head = Conv[Conv.CONV, spatial_dims](fused_channels[0], out_channels, kernel_size=1)

        self.feature_layers = [f"fusion.{i}" for i in range(num_levels)]
        self.feature_channels = list(fused_channels)
        self.feature_strides = list(level_strides)
        divisors = [getattr(unwrap_network(t), "divisor", None) for t in teachers]
        divisors = [d if is_positive_int(d) else (s[-1] if s else 1) for d, (_, _, s) in zip(divisors, interfaces)]
        self.divisor = math.lcm(*divisors)

        for teacher, layers in zip(self.teachers, used_layers):
            FeatureTaps(teacher, layers).remove()  # checks the names now, with FeatureTaps' message

    def teacher_features(self, x: torch.Tensor) -> list[list[torch.Tensor]]:
        """The frozen teachers' maps of the used levels: ``features[k][i]`` is teacher ``k``'s level ``i``.

        The teachers run under ``torch.inference_mode()``; outside inference mode the maps are ordinary tensors
        (copies) without autograd history. The hooks live only during this call, so the module can be copied and
        pickled like any other.
        """
        features = []
        for teacher, layers in zip(self.teachers, self.teacher_layers):
            seen: set[str] = set()
            inner = unwrap_network(teacher)
            with FeatureTaps(teacher, layers) as taps:
                # registered after the taps' hooks, so a layer is recorded before the teacher is stopped
                handles = []
                if self.skip_teacher_decoders:
                    handles = [
                        inner.get_submodule(name).register_forward_hook(
                            partial(_stop_when_all_ran, seen, len(layers), name)
                        )
                        for name in layers
                    ]
                try:
                    teacher(x)
                except _FeaturesComplete:
                    pass
                finally:
                    for handle in handles:
                        handle.remove()
                recorded = taps.features
            missing = [name for name in layers if name not in recorded]
            if missing:
                raise RuntimeError(
                    f"JointTeacher: teacher {type(inner).__name__} did not run its layers {missing} in the forward "
                    "pass; its feature_layers must name modules that every forward pass uses."
                )
            features.append([recorded[name] for name in layers])
        return features

    def fused_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The fused maps ``fusion.0 .. fusion.{L-1}``, each ``(B, feature_channels[i], *spatial / strides[i])``."""
        per_teacher = self.teacher_features(x)
        return [fusion([maps[i] for maps in per_teacher]) for i, fusion in enumerate(self.fusion)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, out_channels, *spatial)`` for an input ``(B, in_channels, *spatial)``."""
        fused = self.fused_features(x)
        y = fused[-1]
        for j in range(self.num_levels - 1):
            skip = fused[self.num_levels - 2 - j]
            y = self.decoder[j](y, skip, skip.shape[2:])
        if len(self.decoder) == self.num_levels:
            y = self.decoder[-1](y, None, x.shape[2:])
        return self.head(y)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters the optimizer trains: those of ``fusion``, ``decoder`` and ``head`` (never the teachers)."""
        return [p for module in (self.fusion, self.decoder, self.head) for p in module.parameters()]
