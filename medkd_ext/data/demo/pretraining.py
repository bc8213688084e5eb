"""Generic pre-training demo (:func:`make_pretraining_demo`): the ImageNet role, for the attention-transfer bundle.

The attention-transfer paper starts every network (transfer learning, teacher and students) from ImageNet weights,
which cannot be downloaded here. This generator writes a *generic* image-classification dataset, unrelated to the
radiograph-like demo (other content, other classes, colour): each image is one pattern class (stripes,
checkerboard, dots, rings, grid, clouds: textures filling a large random region; star, crescent: objects at random
position and scale) in random colours on a cluttered, coloured background. A network pre-trained on it learns
generic edge, texture and shape filters, as on natural images, and nothing about the findings of the medical demo.

2D images are RGB PNG, 3D images single-channel ``uint8`` NIfTI (the solid analogues of the patterns). Written:
``dataset.json`` (MSD style: ``"training"`` and ``"test"`` lists of ``{"image", "label"}``, label an ``int``) and
``labels.csv``; deterministic from ``seed`` down to the bytes, reused when complete (see :mod:`.cache`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .arguments import check_count, check_seed, check_size, check_spatial_dims
from .cache import default_demo_root, generate_or_reuse, nifti_bytes, png_bytes
from .classification import classification_datalist_files
from .random_fields import smooth_noise

__all__ = ["PRETRAINING_CLASS_NAMES", "make_pretraining_demo", "ensure_pretraining_demo"]

PRETRAINING_CLASS_NAMES = ("stripes", "checkerboard", "dots", "rings", "grid", "clouds", "star", "crescent")
_TEXTURES = 6  # the first six classes fill a region; the others are objects


def _rotated(rng: np.random.Generator, coords: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The coordinates in a random rotation (random orthogonal matrix)."""
    q, _ = np.linalg.qr(rng.standard_normal((len(coords), len(coords))))
    return [sum(q[i, j] * coords[j] for j in range(len(coords))) for i in range(len(coords))]


def _pattern(rng: np.random.Generator, cls: int, grid: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    """Soft mask (0..1) of one pattern of class ``cls`` in normalised coordinates ``grid`` ([-1, 1] per axis)."""
    ndim = len(grid)
    if cls < _TEXTURES:
        coords = _rotated(rng, grid)
        frequency = rng.uniform(3.0, 6.0)  # periods across the image half-width
        phase = rng.uniform(0.0, 1.0, size=ndim)
        if cls == 0:  # stripes
            mask = np.sin(2 * math.pi * (frequency * coords[0] + phase[0])) > 0
        elif cls == 1:  # checkerboard
            product = np.ones(np.broadcast_shapes(*[c.shape for c in coords]))
            for c, p in zip(coords, phase):
                product = product * np.sin(2 * math.pi * (0.6 * frequency * c + p))
            mask = product > 0
        elif cls == 2:  # dots on a lattice
            distance = sum(((0.7 * frequency * c + p) % 1.0 - 0.5) ** 2 for c, p in zip(coords, phase))
            mask = distance < rng.uniform(0.05, 0.1)
        elif cls == 3:  # concentric rings around a random centre
            centre = rng.uniform(-0.6, 0.6, size=ndim)
            radius = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
            mask = np.sin(2 * math.pi * frequency * radius) > 0
        elif cls == 4:  # grid of thin lines
            mask = np.zeros(np.broadcast_shapes(*[c.shape for c in coords]), dtype=bool)
            for c, p in zip(coords, phase):
                mask |= np.abs((0.6 * frequency * c + p) % 1.0 - 0.5) > 0.38
        else:  # clouds: thresholded smooth noise
            sigma = max(1.0, shape[0] / rng.uniform(10.0, 16.0))
            mask = smooth_noise(rng, shape, sigma) > 0
        # the texture fills a large elliptic region
        centre = rng.uniform(-0.3, 0.3, size=ndim)
        half = rng.uniform(0.6, 1.2, size=ndim)
        region = sum(((g - c) / h) ** 2 for g, c, h in zip(grid, centre, half)) < 1.0
        mask = np.broadcast_to(mask, shape) & np.broadcast_to(region, shape)
    else:
        centre = rng.uniform(-0.45, 0.45, size=ndim)
        size = rng.uniform(0.3, 0.55)
        coords = _rotated(rng, [(g - c) / size for g, c in zip(grid, centre)])
        radius = np.sqrt(sum(c**2 for c in coords))
        if cls == 6:  # star: 5 spikes around the first two axes, flattened along the others
            angle = np.arctan2(coords[1], coords[0])
            mask = radius < 0.55 + 0.45 * np.cos(5 * angle)
            for c in coords[2:]:
                mask = mask & (np.abs(c) < 0.35)
        else:  # crescent: a disc minus a shifted disc
            shifted = np.sqrt((coords[0] - 0.45) ** 2 + sum(c**2 for c in coords[1:]))
            mask = (radius < 1.0) & (shifted > 0.85)
        mask = np.broadcast_to(mask, shape)
    return ndimage.gaussian_filter(mask.astype(np.float64), 0.5)


def _colour_pair(rng: np.random.Generator, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Background and pattern colours whose mean levels differ by at least 50 (of 255)."""
    while True:
        background, foreground = rng.uniform(0.0, 255.0, size=(2, channels))
        if abs(background.mean() - foreground.mean()) >= 50.0:
            return background, foreground


def _pretraining_case(rng: np.random.Generator, cls: int, shape: tuple[int, ...], channels: int) -> np.ndarray:
    grid = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij", sparse=True)
    background, foreground = _colour_pair(rng, channels)
    mask = _pattern(rng, cls, grid, shape)
    sigma = max(1.0, shape[0] / 8)
    image = np.stack([background[c] + 30.0 * smooth_noise(rng, shape, sigma) for c in range(channels)], axis=-1)
    image = image * (1.0 - mask[..., None]) + foreground * mask[..., None]
    for _ in range(int(rng.integers(1, 4))):  # clutter: small blobs of other colours
        centre = rng.uniform(-0.9, 0.9, size=len(shape))
        radius = rng.uniform(0.04, 0.12)
        blob = sum((g - c) ** 2 for g, c in zip(grid, centre)) < radius**2
        image = np.where(np.broadcast_to(blob, shape)[..., None], rng.uniform(0.0, 255.0, size=channels), image)
    image = image + rng.normal(0.0, 6.0, size=image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return image if channels > 1 else image[..., 0]


def make_pretraining_demo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    spatial_dims: int = 2,
    n_cases: int | None = None,
    n_test: int | None = None,
    size: int | Sequence[int] | None = None,
) -> dict[str, Path]:
    """Generate (or reuse) the generic pre-training dataset (see the module docstring); classes balanced.

    Args:
        out_dir: folder of the dataset.
        seed: seed of every random draw; the same seed gives the same bytes.
        spatial_dims: 2 (RGB PNG) or 3 (grayscale NIfTI).
        n_cases: training images; default 800 (2D) or 240 (3D).
        n_test: test images; default ``n_cases // 4``.
        size: image shape (an int for a square/cube), each >= 16; default 64 (2D) or 32 (3D).

    Returns:
        ``{"dataset_json": ..., "labels_csv": ...}``, both in ``out_dir``.
    """
    out = Path(out_dir).expanduser()
    seed = check_seed(seed)
    spatial_dims = check_spatial_dims(spatial_dims)
    if n_cases is None:
        n_cases = 800 if spatial_dims == 2 else 240
    n_cases = check_count("n_cases", n_cases, 1)
    n_test = check_count("n_test", n_cases // 4 if n_test is None else n_test, 0)
    shape = check_size(size if size is not None else (64 if spatial_dims == 2 else 32), spatial_dims, 16)
    params = {"seed": seed, "spatial_dims": spatial_dims, "n_cases": n_cases, "n_test": n_test, "size": shape}
    channels = 3 if spatial_dims == 2 else 1
    suffix = ".png" if spatial_dims == 2 else ".nii.gz"
    names = PRETRAINING_CLASS_NAMES

    def build() -> Iterator[tuple[str, bytes]]:
        rng = np.random.default_rng([seed, spatial_dims, 7])
        lists: dict[str, list[dict[str, Any]]] = {"training": [], "test": []}
        index = 0
        for split, count in (("training", n_cases), ("test", n_test)):
            for label in rng.permutation(np.arange(count) % len(names)).tolist():
                case_rng = np.random.default_rng([seed, spatial_dims, 7, index])
                image = _pretraining_case(case_rng, label, shape, channels)
                rel = f"images/{split}_{index:05d}{suffix}"
                yield rel, png_bytes(image) if spatial_dims == 2 else nifti_bytes(image, (1.0,) * 3)
                lists[split].append({"image": rel, "label": label})
                index += 1
        head = {
            "name": f"medkd demo generic pre-training ({spatial_dims}D)",
            "description": (
                "Synthetic generic patterns (textures and objects in random colours), the ImageNet role for "
                f"pre-training; generated by medkd_ext.data.demo with seed {seed}; labels also in labels.csv."
            ),
        }
        modality = "synthetic RGB" if spatial_dims == 2 else "synthetic grayscale volume"
        yield from classification_datalist_files(head, modality, spatial_dims, names, lists)

    generate_or_reuse(out, "pretraining", params, build)
    return {"dataset_json": out / "dataset.json", "labels_csv": out / "labels.csv"}


def ensure_pretraining_demo(
    root: str | os.PathLike | None = None, seed: int = 0, spatial_dims: int = 2, **kwargs: Any
) -> dict[str, Path]:
    """The generic pre-training demo under ``<root>/pretraining_<2|3>d``, generated on first use.

    Args:
        root: parent folder; default :func:`default_demo_root` (``$MEDKD_DEMO_DIR`` or ``~/.cache/medkd/demo``).
        seed: generation seed.
        spatial_dims: 2 or 3.
        kwargs: further arguments of :func:`make_pretraining_demo`.
    """
    base = Path(root).expanduser() if root is not None else default_demo_root()
    return make_pretraining_demo(base / f"pretraining_{spatial_dims}d", seed=seed, spatial_dims=spatial_dims,
                                 **kwargs)
