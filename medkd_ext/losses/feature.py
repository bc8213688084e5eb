"""Feature-based distillation: hint regression (FitNet), flow of solution procedure (FSP), feature-map and
pooled-descriptor alignment (the joint-teacher paper's Stage 3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medkd_ext.losses._utils import (
    as_target,
    check_same_batch,
    check_sequence,
    check_tensor,
    common_spatial_size,
)
from medkd_ext.utils import adaptive_avg_pool, check_positive_int, global_avg_pool, interpolation_mode

__all__ = ["CosineAlignLoss", "FSPLoss", "FeatureAlignLoss", "FitNetLoss"]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def _check_adapter_args(loss: str, student_channels: int, teacher_channels: int, spatial_dims: int) -> None:
    for arg, value in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
        check_positive_int(value, loss, arg)
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, int) or spatial_dims not in _CONV:
        raise ValueError(f"{loss}: spatial_dims must be 1, 2 or 3, got {spatial_dims!r}.")


def _check_features(loss: str, x: object, name: str, channels: int, spatial_dims: int) -> torch.Tensor:
    x = check_tensor(x, loss, name, min_ndim=spatial_dims + 2, max_ndim=spatial_dims + 2)
    if x.shape[1] != channels:
        raise ValueError(
            f"{loss}: {name} shape {tuple(x.shape)} has {x.shape[1]} channels, but the loss was built with "
            f"{name}_channels={channels}."
        )
    return x


class FitNetLoss(nn.Module):
    """Hint-based distillation of Romero et al., "FitNets: Hints for Thin Deep Nets" (ICLR 2015), eq. 3.

    A learnable 1x1 convolution regressor ``r`` (with bias, no normalisation or activation) maps the student's
    guided-layer features to the teacher's channel count, and the loss is the mean squared error
    ``mean(|r(s) - t|^2)`` over all elements. The regressor lives in this module: give ``loss.parameters()`` to
    the optimizer too. Gradients never reach the teacher.

    Args:
        student_channels: channels ``C_s`` of the student features.
        teacher_channels: channels ``C_t`` of the teacher features.
        spatial_dims: 1, 2 or 3.
        resize: when student and teacher maps differ in spatial size, bring the larger to the smaller by adaptive
            average pooling (the regressed student map, or the teacher map) instead of refusing them; for networks
            of different families whose guided layers have different resolutions (the KD study's ``fitnet``).

    Shapes:
        student ``(B, C_s, *spatial)``, teacher ``(B, C_t, *spatial)``, same batch and spatial size (any spatial
        sizes with ``resize``). Output: scalar.
    """

    def __init__(self, student_channels: int, teacher_channels: int, spatial_dims: int, resize: bool = False) -> None:
        super().__init__()
        _check_adapter_args("FitNetLoss", student_channels, teacher_channels, spatial_dims)
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.spatial_dims = spatial_dims
        self.resize = bool(resize)
        self.regressor = _CONV[spatial_dims](student_channels, teacher_channels, kernel_size=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        name = "FitNetLoss"
        _check_features(name, student, "student", self.student_channels, self.spatial_dims)
        _check_features(name, teacher, "teacher", self.teacher_channels, self.spatial_dims)
        if student.shape[0] != teacher.shape[0] or (student.shape[2:] != teacher.shape[2:] and not self.resize):
            raise ValueError(
                f"{name}: student shape {tuple(student.shape)} and teacher shape {tuple(teacher.shape)} must have the "
                "same batch and spatial sizes; tap layers of matching resolution (or build the loss with resize=True)."
            )
        regressed, target = self.regressor(student), as_target(teacher)
        if regressed.shape[2:] != target.shape[2:]:
            size = common_spatial_size(regressed, target)
            regressed, target = adaptive_avg_pool(regressed, size), adaptive_avg_pool(target, size)
        return F.mse_loss(regressed, target)


class FSPLoss(nn.Module):
    """Flow-of-solution-procedure distillation of Yim et al., "A Gift from Knowledge Distillation" (CVPR 2017),
    eq. 1-2 (all pair weights 1 by default).

    For consecutive feature maps ``F1 = x[k]``, ``F2 = x[k + 1]`` of one network the FSP matrix is
    ``G = F1 F2^T / N`` of shape ``(B, C1, C2)``, ``N`` the number of spatial positions (if the two maps differ in
    spatial size, the larger is adaptive-average-pooled to the smaller first). The loss is
    ``mean_b sum_k ||G_s^k - G_t^k||_F^2``. Gradients never reach the teacher.

    Shapes:
        student, teacher: lists or tuples of the same length ``>= 2`` of tensors ``(B, C_k, *spatial_k)``;
        student and teacher FSP matrices of pair ``k`` must have the same shape (equal ``C_k``, ``C_{k+1}``),
        spatial sizes may differ between student and teacher. Output: scalar.

    Args:
        pair_weights: weight ``lambda_k`` of each pair's term (Yim et al.'s eq. 2); default 1 for every pair.
        student_channels, teacher_channels: the channels of each map (both or neither), for networks whose maps
            differ in channels: a learnable 1x1 convolution (with bias) then maps each student map to the teacher's
            channel count before its FSP matrices are formed (give ``loss.parameters()`` to the optimizer); without
            them the channel counts must match.
        spatial_dims: 1, 2 or 3, with the channels.
    """

    def __init__(
        self,
        pair_weights: Sequence[float] | None = None,
        student_channels: Sequence[int] | None = None,
        teacher_channels: Sequence[int] | None = None,
        spatial_dims: int | None = None,
    ) -> None:
        super().__init__()
        self.pair_weights = None if pair_weights is None else [float(w) for w in pair_weights]
        if self.pair_weights is not None and any(w < 0 for w in self.pair_weights):
            raise ValueError(f"FSPLoss: pair_weights must be non-negative, got {pair_weights!r}.")
        if (student_channels is None) != (teacher_channels is None):
            raise ValueError("FSPLoss: give both student_channels and teacher_channels, or neither.")
        self.adapters = None
        if student_channels is not None:
            if len(student_channels) != len(teacher_channels) or spatial_dims not in _CONV:
                raise ValueError(
                    "FSPLoss: student_channels and teacher_channels must have one entry per map, and spatial_dims be "
                    f"1, 2 or 3; got {student_channels!r}, {teacher_channels!r}, {spatial_dims!r}."
                )
            for s, t in zip(student_channels, teacher_channels, strict=True):
                _check_adapter_args("FSPLoss", s, t, spatial_dims)
            pairs = zip(student_channels, teacher_channels, strict=True)
            self.adapters = nn.ModuleList(_CONV[spatial_dims](s, t, kernel_size=1) for s, t in pairs)

    @staticmethod
    def fsp_matrix(f1: torch.Tensor, f2: torch.Tensor) -> torch.Tensor:
        """``(B, C1, *spatial), (B, C2, *spatial') -> (B, C1, C2)``."""
        size = common_spatial_size(f1, f2)
        a = adaptive_avg_pool(f1, size).flatten(2)
        b = adaptive_avg_pool(f2, size).flatten(2)
        return torch.bmm(a, b.transpose(1, 2)) / a.shape[2]

    def _check_side(self, maps: object, name: str) -> Sequence[torch.Tensor]:
        maps = check_sequence(maps, "FSPLoss", name)
        if len(maps) < 2:
            raise ValueError(f"FSPLoss: {name} needs at least 2 feature maps (one FSP pair), got {len(maps)}.")
        for i, x in enumerate(maps):
            check_tensor(x, "FSPLoss", f"{name}[{i}]", min_ndim=3, max_ndim=5)
            if x.ndim != maps[0].ndim or x.shape[0] != maps[0].shape[0]:
                raise ValueError(
                    f"FSPLoss: {name}[{i}] shape {tuple(x.shape)} and {name}[0] shape {tuple(maps[0].shape)} must "
                    "have the same batch size and number of spatial dimensions."
                )
        return maps

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        student = self._check_side(student, "student")
        teacher = self._check_side(teacher, "teacher")
        if len(student) != len(teacher):
            raise ValueError(
                f"FSPLoss: student and teacher must hold the same number of feature maps, got {len(student)} and "
                f"{len(teacher)}."
            )
        check_same_batch("FSPLoss", student[0], teacher[0])
        pairs = len(student) - 1
        if self.pair_weights is not None and len(self.pair_weights) != pairs:
            raise ValueError(f"FSPLoss: {len(self.pair_weights)} pair_weights for {pairs} pairs of feature maps.")
        if self.adapters is not None:
            if len(self.adapters) != len(student):
                raise ValueError(f"FSPLoss: built for {len(self.adapters)} maps per side, got {len(student)}.")
            student = [adapter(x) for adapter, x in zip(self.adapters, student, strict=True)]
        loss = student[0].new_zeros(())
        for k in range(pairs):
            g_s = self.fsp_matrix(student[k], student[k + 1])
            with torch.no_grad():
                g_t = self.fsp_matrix(teacher[k], teacher[k + 1])
            if g_s.shape != g_t.shape:
                raise ValueError(
                    f"FSPLoss: FSP matrix {k} has shape {tuple(g_s.shape)} for the student (maps "
                    f"{tuple(student[k].shape)}, {tuple(student[k + 1].shape)}) but {tuple(g_t.shape)} for the teacher "
                    f"(maps {tuple(teacher[k].shape)}, {tuple(teacher[k + 1].shape)}); channel counts must match."
                )
            weight = 1.0 if self.pair_weights is None else self.pair_weights[k]
            loss = loss + weight * (g_s - g_t).pow(2).sum(dim=(1, 2)).mean()
        return loss


class FeatureAlignLoss(nn.Module):
    """Feature-map alignment of the joint-teacher paper (Ceausescu et al., Stage 3, eq. 12).

    The teacher features are mapped to the student's channel count by a learnable 1x1 convolution (with bias),
    resized to the student's spatial size (linear / bilinear / trilinear interpolation, ``align_corners=False``)
    and compared by the mean squared error over all elements. The convolution lives in this module (give
    ``loss.parameters()`` to the optimizer); it receives gradients, but gradients never reach the teacher input
    itself (the convolution is applied to a detached view of it).

    Args:
        student_channels: channels ``C_s`` of the student features.
        teacher_channels: channels ``C_t`` of the teacher features.
        spatial_dims: 1, 2 or 3.

    Shapes:
        student ``(B, C_s, *spatial_s)``, teacher ``(B, C_t, *spatial_t)``, same batch. Output: scalar.
    """

    def __init__(self, student_channels: int, teacher_channels: int, spatial_dims: int) -> None:
        super().__init__()
        _check_adapter_args("FeatureAlignLoss", student_channels, teacher_channels, spatial_dims)
        self.student_channels = student_channels
        self.teacher_channels = teacher_channels
        self.spatial_dims = spatial_dims
        self.align = _CONV[spatial_dims](teacher_channels, student_channels, kernel_size=1)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        name = "FeatureAlignLoss"
        _check_features(name, student, "student", self.student_channels, self.spatial_dims)
        _check_features(name, teacher, "teacher", self.teacher_channels, self.spatial_dims)
        check_same_batch(name, student, teacher)
        aligned = self.align(as_target(teacher))
        if aligned.shape[2:] != student.shape[2:]:
            aligned = F.interpolate(
                aligned, size=student.shape[2:], mode=interpolation_mode(self.spatial_dims), align_corners=False
            )
        return F.mse_loss(student, aligned)


class CosineAlignLoss(nn.Module):
    """Cosine alignment of pooled descriptors (Ceausescu et al., Stage 3, eq. 13).

    Features are global-average-pooled to ``(B, C)`` (embeddings ``(B, C)`` are used as they are) and the loss is
    ``mean_b (1 - cos(s_b, t_b))``. Gradients never reach the teacher.

    Args:
        eps: lower bound of the vector norms in the cosine.

    Shapes:
        student ``(B, C, *spatial_s)`` or ``(B, C)``, teacher ``(B, C, *spatial_t)`` or ``(B, C)``: same batch and
        channels, spatial sizes may differ. Output: scalar.
    """

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if not eps > 0:
            raise ValueError(f"CosineAlignLoss: eps must be positive, got {eps!r}.")
        self.eps = float(eps)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        name = "CosineAlignLoss"
        check_tensor(student, name, "student")
        check_tensor(teacher, name, "teacher")
        if student.shape[:2] != teacher.shape[:2]:
            raise ValueError(
                f"{name}: student shape {tuple(student.shape)} and teacher shape {tuple(teacher.shape)} must have the "
                "same batch size and channel count."
            )
        with torch.no_grad():
            t = as_target(global_avg_pool(teacher))
        return (1.0 - F.cosine_similarity(global_avg_pool(student), t, dim=1, eps=self.eps)).mean()
