"""Attention maps of a network's layer for chosen cases, written in the input image's geometry.

The map of a layer with activations ``A`` (``(C, *spatial)``) is the attention map of Zagoruyko & Komodakis,
``mean_c |A_c|^p`` (:meth:`medkd_ext.losses.AttentionTransferLoss.attention_map`), scaled to ``[0, 1]`` per case and
resized to the network's input. :func:`write_attention_maps` then undoes the preprocessing's spatial transforms
(resize, crop, ...: MONAI's invertible transforms) so that the map lies on the input file's grid: a PNG overlay on the
image for 2D, a NIfTI volume with the input's affine for 3D. The attention-transfer paper names this explainability
as future work; the bundle writes the teacher's and the student's maps side by side.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from torch import nn

from medkd_ext.losses.attention import AttentionTransferLoss
from medkd_ext.networks.taps import FeatureTaps
from medkd_ext.utils import interpolation_mode

__all__ = ["attention_map", "attention_overlay", "write_attention_maps"]

_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def attention_map(
    features: torch.Tensor, p: float = 2.0, spatial_size: Sequence[int] | None = None
) -> torch.Tensor:
    """Spatial attention ``mean_c |A_c|^p`` of a feature batch, min-max scaled to ``[0, 1]`` per sample.

    Args:
        features: ``(B, C, *spatial)`` activations, 1 to 3 spatial dimensions.
        p: exponent (2 in attention transfer).
        spatial_size: resize the maps to this size (linear/bilinear/trilinear interpolation), e.g. the input's.

    Returns:
        ``(B, 1, *spatial_size)`` (or ``(B, 1, *spatial)``), on the features' device and dtype; a constant map is 0.
    """
    if not isinstance(features, torch.Tensor) or not 3 <= features.ndim <= 5:
        raise ValueError(
            f"attention_map: features must be a (B, C, *spatial) tensor with 1 to 3 spatial dimensions, got "
            f"{getattr(features, 'shape', type(features).__name__)}."
        )
    maps = AttentionTransferLoss(p=p).attention_map(features.detach())
    if spatial_size is not None:
        size = tuple(int(s) for s in spatial_size)
        if len(size) != features.ndim - 2:
            raise ValueError(f"attention_map: spatial_size {size} must have {features.ndim - 2} entries.")
        maps = F.interpolate(maps, size=size, mode=interpolation_mode(len(size)), align_corners=False)
    flat = maps.flatten(1)
    low = flat.min(dim=1, keepdim=True).values
    span = flat.max(dim=1, keepdim=True).values - low
    scaled = torch.where(span > 0, (flat - low) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return scaled.view_as(maps)


def attention_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """RGB overlay of a ``[0, 1]`` heat map on a grayscale (or RGB) image, both ``(H, W)`` (image may be ``(H, W, 3)``).

    The image is scaled to ``[0, 255]``; the heat map is coloured black-red-yellow-white and blended with weight
    ``alpha * heat``, so cold regions show the image unchanged.

    Returns:
        ``(H, W, 3)`` ``uint8``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"attention_overlay: alpha must be in [0, 1], got {alpha}.")
    img = np.asarray(image, dtype=np.float64)
    if img.ndim == 3:
        img = img.mean(axis=-1)
    if img.shape != heat.shape:
        raise ValueError(f"attention_overlay: image shape {img.shape} and heat map shape {heat.shape} differ.")
    low, high = float(img.min()), float(img.max())
    gray = (img - low) / (high - low) * 255.0 if high > low else np.zeros_like(img)
    h = np.clip(heat, 0.0, 1.0)
    colour = np.stack([np.clip(3 * h, 0, 1), np.clip(3 * h - 1, 0, 1), np.clip(3 * h - 2, 0, 1)], axis=-1) * 255.0
    weight = (alpha * h)[..., None]
    blended = (1.0 - weight) * gray[..., None] + weight * colour
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _source_file(image: Any) -> str:
    meta = getattr(image, "meta", None)
    name = meta.get("filename_or_obj") if isinstance(meta, Mapping) else None
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    if not name:
        raise ValueError(
            "write_attention_maps: the case's image has no 'filename_or_obj' metadata; load it with LoadImaged so "
            "that the map can be written in the input's geometry."
        )
    return str(name)


def _stem(path: str) -> str:
    name = os.path.basename(os.path.normpath(path))
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".mha", ".nrrd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _write_png(source: str, heat: np.ndarray, out_file: Path, alpha: float) -> None:
    from PIL import Image

    with Image.open(source) as pil:
        image = np.asarray(pil.convert("RGB") if pil.mode not in ("L", "I", "I;16", "F") else pil, dtype=np.float64)
    # MONAI's PIL reader returns (W, H) arrays: transpose back to the file's (H, W)
    heat = heat.T
    if heat.shape != image.shape[:2]:
        raise ValueError(
            f"write_attention_maps: the map of '{source}' has shape {heat.shape} after inverting the preprocessing "
            f"but the image is {image.shape[:2]}; only invertible spatial transforms may change the image size."
        )
    Image.fromarray(attention_overlay(image, heat, alpha), mode="RGB").save(out_file)


def _write_volume(source: str, heat_tensor: MetaTensor, out_file: Path) -> None:
    heat = heat_tensor[0].detach().cpu().numpy().astype(np.float32)
    if source.lower().endswith(_NIFTI_SUFFIXES):
        import nibabel as nib

        original = nib.load(source)
        if heat.shape != original.shape[: heat.ndim]:
            raise ValueError(
                f"write_attention_maps: the map of '{source}' has shape {heat.shape} after inverting the "
                f"preprocessing but the volume is {original.shape}; only invertible spatial transforms may change "
                "the image size."
            )
        header = original.header.copy()
        header.set_data_dtype(np.float32)
        nib.save(nib.Nifti1Image(heat, original.affine, header), str(out_file))
        return
    from monai.transforms import SaveImage

    # other 3D inputs (DICOM series, ...): the geometry comes from the loaded image's metadata
    writer = SaveImage(output_dir=str(out_file.parent), output_postfix="", separate_folder=False, resample=False,
                       print_log=False)
    heat_tensor.meta["filename_or_obj"] = str(out_file).removesuffix(".nii.gz")
    writer(heat_tensor)


def write_attention_maps(
    networks: Mapping[str, nn.Module],
    layers: Mapping[str, str],
    data: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    device: str | torch.device = "cpu",
    preprocessing: Callable | None = None,
    image_key: str = "image",
    p: float = 2.0,
    alpha: float = 0.5,
) -> list[Path]:
    """Write each network's attention map at its layer for every case, in the geometry of the case's input file.

    For each case the preprocessed image is fed to every network (in ``eval()``, without gradients); the output
    of ``layers[name]`` gives :func:`attention_map` at the network's input size; the preprocessing's invertible
    transforms (``preprocessing.inverse``) bring it back to the input file's grid. 2D inputs give
    ``<stem>_<name>_attention.png``, an overlay on the image; 3D inputs give ``<stem>_<name>_attention.nii.gz``,
    the map with the input's affine and header.

    Args:
        networks: name -> network, e.g. ``{"teacher": ..., "student": ...}``.
        layers: name -> module path of the layer whose activations give the map (see ``module_names``).
        data: preprocessed cases (e.g. a MONAI ``Dataset``), each with a MetaTensor under ``image_key`` loaded
            from a file.
        output_dir: folder of the written files (created).
        device: device the networks run on.
        preprocessing: the transform that produced ``data`` (a ``Compose``), inverted on the maps; ``None`` when
            the preprocessing does not change the image grid.
        image_key: key of the image in each case.
        p: exponent of the attention map.
        alpha: opacity of the heat map in the 2D overlays.

    Returns:
        the written files, in case order then network order.

    Raises:
        ValueError: ``layers`` lacks a network's name, a layer does not exist (valid names listed), a case has no
            source file, or a map does not fit its input after inversion.
    """
    missing = [name for name in networks if name not in layers]
    if missing:
        raise ValueError(f"write_attention_maps: no layer given for network(s) {missing}; layers has {list(layers)}.")
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    taps = {name: FeatureTaps(net, [layers[name]]) for name, net in networks.items()}
    written: list[Path] = []
    try:
        for case in data:
            image = case[image_key]
            source = _source_file(image)
            x = torch.as_tensor(image).unsqueeze(0).to(device)
            for name, net in networks.items():
                net.eval()
                with torch.no_grad():
                    net(x)
                heat = attention_map(taps[name][layers[name]], p=p, spatial_size=x.shape[2:])[0].float().cpu()
                heat_image = MetaTensor(heat, meta=copy.deepcopy(dict(image.meta)))
                heat_image.applied_operations = copy.deepcopy(list(image.applied_operations))
                if preprocessing is not None:
                    heat_image = preprocessing.inverse({image_key: heat_image})[image_key]
                if not isinstance(heat_image, MetaTensor):
                    heat_image = MetaTensor(heat_image, meta=copy.deepcopy(dict(image.meta)))
                spatial_dims = heat_image.ndim - 1
                suffix = ".png" if spatial_dims == 2 else ".nii.gz"
                out_file = out_dir / f"{_stem(source)}_{name}_attention{suffix}"
                if spatial_dims == 2:
                    _write_png(source, heat_image[0].detach().cpu().numpy(), out_file, alpha)
                else:
                    _write_volume(source, heat_image, out_file)
                written.append(out_file)
    finally:
        for tap in taps.values():
            tap.remove()
    return written
