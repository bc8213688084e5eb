"""Transforms that check a loaded case before any work is spent on it, and fit image channels to a network.

Place ``ValidateCased`` (segmentation; for any image, ``label_key=None``) and ``ValidateClassLabeld``
(classification) right after ``LoadImaged`` + ``EnsureChannelFirstd`` in a bundle's preprocessing. Each raises one
``ValueError`` naming the file (``meta["filename_or_obj"]`` of the MetaTensor, or the ``"<key>_meta_dict"`` entry;
the key when no file is known) and saying what to do. When such a transform runs inside ``Compose``, MONAI re-raises the
error as a ``RuntimeError`` chained from this ``ValueError``, whose message is printed with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import Compose, MapTransform

from medkd_ext.runtime import EnsureImageChannelsd, describe_source, spatial_dims_error
from medkd_ext.utils import check_positive_int, is_positive_int

__all__ = ["EnsureImageChannelsd", "ValidateCased", "ValidateClassLabeld", "check_cases", "describe_source"]

logger = logging.getLogger(__name__)


def check_cases(
    cases: Iterable[Mapping[str, Any]], transforms: Sequence[Callable] | Callable, key: str = "image"
) -> int:
    """Run the loading and validation ``transforms`` over every case once, before any stage trains.

    For a workflow whose first stage does not read the user's data (the attention-transfer bundle pre-trains on a
    generic dataset first), so that a bad case (unreadable, wrong channel count or dimensions, a label outside the
    classes) stops the run before anything is trained or written, with the error the stage would have raised. Cases
    are checked one at a time and not kept; a case listed twice (same ``key``) is checked once.

    Args:
        cases: datalist entries (dicts with ``key`` and the label).
        transforms: the deterministic preprocessing (a list of transforms, or one callable).
        key: the entry holding the image path.

    Returns:
        the number of cases checked.
    """
    compose = transforms if callable(transforms) else Compose(list(transforms))
    seen: set[str] = set()
    for case in cases:
        name = str(case.get(key))
        if name in seen:
            continue
        seen.add(name)
        compose(dict(case))
    logger.info("checked %d case(s) before training", len(seen))
    return len(seen)


def _as_tensor(value: Any, what: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.as_tensor() if hasattr(value, "as_tensor") else value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(
        f"{what} must be a loaded image (tensor or array), got {type(value).__name__}; run LoadImaged first."
    )


def _show(value: Any) -> str:
    """Short display of a label value for messages."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.size > 10:
            return f"an array of {value.size} values"
        return str(value.tolist())
    return repr(value)


class ValidateCased(MapTransform):
    """Validate a loaded case: its images and, for segmentation, its label map; the data pass through unchanged.

    Checks, each raising ``ValueError`` that names the file:

    - with ``spatial_dims``, every item under ``keys`` is channel-first with ``spatial_dims`` spatial dimensions (a
      2D image given to a 3D network, or a 3D volume to a 2D one);
    - with ``channels``, every item under ``keys`` but the label has ``channels`` channels (the network's
      ``in_channels``; a multi-modal image given to a one-channel network);
    - every item under ``keys`` has only finite voxels (no NaN/Inf);
    - every item under ``keys`` has the spatial shape (all dims but the first, channel dim) of the item under
      ``label_key`` (of the first key when ``label_key`` is ``None`` or absent);
    - with ``num_classes``, the label is a map of integer values in ``[0, num_classes)`` (one channel) or a
      binary one-hot map of ``num_classes`` channels.

    Args:
        keys: items checked for non-finite voxels and matching spatial shape (images and the label).
        label_key: the segmentation label among the data, or ``None`` for image-only data (inference).
        num_classes: number of classes including background; ``None`` skips the label-value check.
        channels: the number of channels of every image (every key but ``label_key``); ``None`` skips the check.
        spatial_dims: the number of spatial dimensions of every item; ``None`` skips the check.
        allow_missing_keys: skip keys absent from the data instead of raising ``KeyError``.

    Example::

        Compose([LoadImaged(["image", "label"]), EnsureChannelFirstd(["image", "label"]),
                 ValidateCased(["image", "label"], num_classes=2, channels=1, spatial_dims=3), ...])
    """

    def __init__(
        self,
        keys: KeysCollection = ("image", "label"),
        label_key: str | None = "label",
        num_classes: int | None = None,
        channels: int | None = None,
        spatial_dims: int | None = None,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        for name, value in (("num_classes", num_classes), ("channels", channels), ("spatial_dims", spatial_dims)):
            if value is not None and not is_positive_int(value):
                raise ValueError(f"ValidateCased: {name} must be a positive int or None, got {value!r}.")
        self.label_key = label_key
        self.num_classes = num_classes
        self.channels = channels
        self.spatial_dims = spatial_dims

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        present = list(self.key_iterator(d))
        tensors = {k: _as_tensor(d[k], describe_source(d, k)) for k in present}
        for k, t in tensors.items():
            self._check_layout(d, k, t)
        for k, t in tensors.items():
            if t.is_floating_point() or t.is_complex():
                bad = int((~torch.isfinite(t)).sum())
                if bad:
                    raise ValueError(
                        f"ValidateCased: {describe_source(d, k)} has {bad} non-finite voxel(s) (NaN/Inf) out of "
                        f"{t.numel()}; repair or exclude this file from the datalist."
                    )
        if self.label_key is not None and self.label_key in d:
            ref_key = self.label_key
            ref = tensors.get(ref_key)
            if ref is None:
                ref = _as_tensor(d[ref_key], describe_source(d, ref_key))
        elif present:
            ref_key, ref = present[0], tensors[present[0]]
        else:
            return d
        for k, t in tensors.items():
            if k != ref_key and tuple(t.shape[1:]) != tuple(ref.shape[1:]):
                raise ValueError(
                    f"ValidateCased: {describe_source(d, k)} has spatial shape {tuple(t.shape[1:])} but "
                    f"{describe_source(d, ref_key)} has {tuple(ref.shape[1:])} (channel dim excepted); the items of a "
                    "case must share one voxel grid: check that the datalist pairs the right files, or resample "
                    "one onto the other (e.g. ResampleToMatchd)."
                )
        if self.num_classes is not None and ref_key == self.label_key:
            self._check_label_values(d, ref)
        return d

    def _check_layout(self, d: Mapping[Hashable, Any], key: Hashable, t: torch.Tensor) -> None:
        """Spatial dimensions of every item, channels of the images."""
        if self.spatial_dims is not None:
            message = spatial_dims_error(d, key, t, self.spatial_dims, "ValidateCased")
            if message:
                raise ValueError(message)
        if self.channels is not None and key != self.label_key and t.ndim >= 1 and t.shape[0] != self.channels:
            raise ValueError(
                f"ValidateCased: {describe_source(d, key)} has {t.shape[0]} channels (shape {tuple(t.shape)}) but the "
                f"network takes {self.channels} (in_channels={self.channels}): give images of {self.channels} "
                f"channel(s), or train a model with --in_channels {t.shape[0]}."
            )

    def _check_label_values(self, d: Mapping[Hashable, Any], label: torch.Tensor) -> None:
        source = describe_source(d, self.label_key)
        n = self.num_classes
        if label.ndim >= 1 and label.shape[0] > 1:
            if label.shape[0] != n or not bool(((label == 0) | (label == 1)).all()):
                raise ValueError(
                    f"ValidateCased: label {source} has {label.shape[0]} channels; expected a one-channel label map "
                    f"or a binary one-hot map of num_classes={n} channels: check the label file or num_classes."
                )
            return
        outside = ~((label >= 0) & (label < n))
        if label.is_floating_point():
            outside |= label != torch.round(label)
        if bool(outside.any()):
            values = torch.unique(label[outside]).tolist()
            shown = values[:10] + (["..."] if len(values) > 10 else [])
            raise ValueError(
                f"ValidateCased: label {source} holds values {shown} outside the integer classes [0, {n}); "
                f"set num_classes to the number of classes including background, or remap the labels "
                "(e.g. MapLabelValued); a label resampled with a non-nearest interpolation also gives such values."
            )


class ValidateClassLabeld(MapTransform):
    """Validate the class label of a classification case; the data pass through unchanged.

    Multi-class: the label is one integer in ``[0, num_classes)`` (a Python/NumPy number, or a tensor/array
    holding one value). Multi-label: a multi-hot sequence/tensor of ``num_classes`` zeros and ones. A bad label
    raises ``ValueError`` naming the image file of the case (from ``image_key``; class labels carry no file).

    Args:
        keys: label keys to check.
        num_classes: number of classes ``C``.
        multi_label: multi-hot labels instead of class indices.
        image_key: key whose file names the case in messages; ``None`` names the label key only.
        allow_missing_keys: skip keys absent from the data instead of raising ``KeyError``.
    """

    def __init__(
        self,
        keys: KeysCollection = ("label",),
        num_classes: int = 2,
        multi_label: bool = False,
        image_key: str | None = "image",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        check_positive_int(num_classes, "ValidateClassLabeld", "num_classes")
        self.num_classes = num_classes
        self.multi_label = bool(multi_label)
        self.image_key = image_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            where = f"key '{key}'"
            if self.image_key is not None and self.image_key in d:
                where += f" of the case with image {describe_source(d, self.image_key)}"
            values = self._values(d[key], key, where)
            n = self.num_classes
            if self.multi_label:
                if values.size != n or not np.isin(values, (0, 1)).all():
                    raise ValueError(
                        f"ValidateClassLabeld: label {where} is {_show(d[key])}; a multi-label label must be a "
                        f"multi-hot vector of num_classes={n} zeros and ones: check the datalist or num_classes."
                    )
            elif values.size != 1 or values[0] != np.round(values[0]) or not 0 <= values[0] < n:
                raise ValueError(
                    f"ValidateClassLabeld: label {where} is {_show(d[key])}; a multi-class label must be one "
                    f"integer in [0, {n}): check the datalist, set num_classes, or pass multi_label=True for "
                    "multi-hot labels."
                )
        return d

    @staticmethod
    def _values(value: Any, key: Hashable, where: str) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        if isinstance(value, (bool, np.bool_)) or isinstance(value, str):
            raise ValueError(f"ValidateClassLabeld: label {where} is {value!r}; labels must be numbers.")
        try:
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as e:
            raise ValueError(f"ValidateClassLabeld: label {where} is {value!r}; labels must be numbers.") from e
        if not np.isfinite(arr).all():
            raise ValueError(f"ValidateClassLabeld: label {where} is {arr.tolist()}; labels must be finite numbers.")
        return arr
