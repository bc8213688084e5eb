"""Multi-domain 3D lesion-segmentation demo (:func:`make_segmentation_demo`, for ``bundles/joint_teacher_seg``).

3D NIfTI volumes of several *datasets* of one modality family (MR-like: an elliptic-cylinder body, a smooth
ellipsoidal organ) that differ, as the joint-teacher paper's brain-MRI datasets do (metastases, ischaemic stroke,
glioma), in the **type of lesion** they annotate and in their **appearance**:

- ``target``: metastasis-like, 2-5 small round lesions (radii 1.8-3.5 mm) anywhere in the organ, bright (FLAIR-like);
- ``source_1``: glioma-like, one large irregular lesion (radii 5.5-9 mm) with a darker necrotic core, bright
  (T2-like);
- ``source_2``: stroke-like, 1-2 elongated lesions (radii 3.5-6.5 mm, one axis 1.8x longer) on the organ's rim,
  dark (T1-like);
- other names: one of these three lesion types and an appearance drawn from ``seed`` and the name.

Appearance: intensity levels and lesion contrast, gamma, noise (Rician), bias field, blur and voxel spacing. Anatomy
is generated in millimetres, so structures keep their physical size across spacings (it is scaled by
``min(size) / 48`` so that small test volumes still hold the whole anatomy). The first domain is the *target*: few
labelled training cases plus labelled test cases; the others are *sources* with more training cases and no test
cases (``scripts/joint_teacher_table.py`` rotates the target role by generating the demo with the domains in another
order). Layout, per domain (MSD style, paths in ``dataset.json`` relative to it)::

    <out_dir>/<domain>/dataset.json
    <out_dir>/<domain>/imagesTr/<domain>_000.nii.gz   labelsTr/<domain>_000.nii.gz
    <out_dir>/<domain>/imagesTs/<domain>_006.nii.gz   labelsTs/<domain>_006.nii.gz   (target only)

MSD ``dataset.json`` files list test images as bare paths; here ``"test"`` holds ``{"image", "label"}``
dictionaries so that evaluation can score the target test cases (``monai.data.load_decathlon_datalist`` and
:func:`medkd_ext.data.load_datalist` read both forms). Labels: ``{0: background, 1: lesion}``, or with
``multiclass=True`` ``{0: background, 1: organ, 2: lesion}``. Every labelled case holds at least one lesion voxel.
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .arguments import check_count, check_seed, check_size
from .cache import _GENERATOR_VERSION, default_demo_root, generate_or_reuse, json_bytes, nifti_bytes
from .random_fields import smooth_noise

__all__ = ["SEGMENTATION_DOMAINS", "make_segmentation_demo", "ensure_segmentation_demo", "segmentation_demo_dir"]

SEGMENTATION_DOMAINS = ("target", "source_1", "source_2")
_REFERENCE_SIZE = 48.0  # voxels at which the anatomy has its nominal size in mm


@dataclass(frozen=True)
class _DomainStyle:
    modality: str
    spacing: tuple[float, float, float]  # mm
    background: float
    body: float
    organ: float
    lesion: float
    gamma: float  # applied to intensities normalised over the tissue levels
    noise: float  # standard deviation, output units
    rician: bool  # magnitude (MR) noise instead of additive Gaussian (CT)
    bias: float  # amplitude of the log bias field
    blur: float  # point-spread sigma in voxels
    low: int  # clipping range of the stored int16 values
    high: int


_PRESET_STYLES = {
    "target": _DomainStyle("MR-FLAIR", (1.0, 1.0, 1.5), 5.0, 300.0, 380.0, 700.0, 1.0, 20.0, True, 0.3, 0.7, 0, 4095),
    "source_1": _DomainStyle("MR-T2", (0.8, 0.8, 1.2), 0.0, 250.0, 420.0, 820.0, 0.8, 25.0, True, 0.35, 0.8, 0, 4095),
    "source_2": _DomainStyle("MR-T1", (1.3, 1.3, 2.0), 10.0, 500.0, 650.0, 300.0, 1.4, 30.0, True, 0.25, 1.0, 0, 4095),
}


@dataclass(frozen=True)
class _LesionType:
    name: str
    count: tuple[int, int]  # inclusive range of lesions per case
    radius: tuple[float, float]  # range of each semi-axis, mm (before the anatomy's scale)
    elongation: float  # one semi-axis this many times longer
    roughness: float  # amplitude of the smooth noise deforming the boundary
    rim: bool  # centred on the organ's boundary (clipped to the organ) instead of anywhere inside it
    core: float  # a central core (half the radii) whose contrast is this fraction closer to the organ's (necrosis)


_LESION_TYPES = {
    "metastases": _LesionType("metastases", (2, 5), (1.8, 3.5), 1.0, 0.1, False, 0.0),
    "glioma": _LesionType("glioma", (1, 1), (5.5, 9.0), 1.0, 0.45, False, 0.6),
    "stroke": _LesionType("stroke", (1, 2), (3.5, 6.5), 1.8, 0.3, True, 0.0),
}
_PRESET_LESIONS = {"target": "metastases", "source_1": "glioma", "source_2": "stroke"}


def _lesion_type(name: str, seed: int) -> _LesionType:
    if name in _PRESET_LESIONS:
        return _LESION_TYPES[_PRESET_LESIONS[name]]
    rng = np.random.default_rng([seed, _domain_seed(name), 11])
    return list(_LESION_TYPES.values())[int(rng.integers(len(_LESION_TYPES)))]


def _domain_seed(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


def _domain_style(name: str, seed: int) -> _DomainStyle:
    if name in _PRESET_STYLES:
        return _PRESET_STYLES[name]
    rng = np.random.default_rng([seed, _domain_seed(name), 7])
    body = rng.uniform(200.0, 600.0)
    organ = body * rng.uniform(1.2, 1.8)
    lesion = organ * (rng.uniform(0.4, 0.7) if rng.random() < 0.5 else rng.uniform(1.4, 2.0))
    xy = rng.uniform(0.8, 1.5)
    return _DomainStyle(
        modality="MR",
        spacing=(round(xy, 3), round(xy, 3), round(rng.uniform(1.0, 2.5), 3)),
        background=rng.uniform(0.0, 50.0),
        body=body,
        organ=organ,
        lesion=lesion,
        gamma=rng.uniform(0.7, 1.5),
        noise=rng.uniform(15.0, 40.0),
        rician=True,
        bias=rng.uniform(0.1, 0.4),
        blur=rng.uniform(0.5, 1.2),
        low=0,
        high=4095,
    )


def _segmentation_anatomy(
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: Sequence[float], scale: float,
    lesion_type: _LesionType,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Body, organ, lesion and lesion-core masks of one case, drawn in millimetres. Lesions lie inside the organ."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    sigma_vox = [4.0 * scale / s for s in spacing]  # deformations on a ~4 mm scale

    bx, by = rng.uniform(21.0, 24.0) * scale, rng.uniform(16.0, 19.0) * scale
    body = (x / bx) ** 2 + (y / by) ** 2 + 0.05 * smooth_noise(rng, shape, sigma_vox) < 1.0

    centre = rng.uniform(-3.0, 3.0, size=3) * scale
    radii = np.array([rng.uniform(10.0, 14.0), rng.uniform(8.0, 11.0), rng.uniform(9.0, 13.0)]) * scale
    theta = rng.uniform(-math.pi / 6, math.pi / 6)
    cos, sin = math.cos(theta), math.sin(theta)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    organ_d = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (dz / radii[2]) ** 2)
    organ = (organ_d + 0.08 * smooth_noise(rng, shape, sigma_vox) < 1.0) & body

    lesion_noise = smooth_noise(rng, shape, [0.5 * s for s in sigma_vox])
    lesion = np.zeros(shape, dtype=bool)
    core = np.zeros(shape, dtype=bool)
    centres = []
    low, high = lesion_type.count
    for _ in range(int(rng.integers(low, high + 1))):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        depth = 0.9 if lesion_type.rim else 0.6 * rng.random() ** (1 / 3)
        local = direction * depth * radii
        lc = centre + np.array([cos * local[0] - sin * local[1], sin * local[0] + cos * local[1], local[2]])
        lr = rng.uniform(*lesion_type.radius, size=3) * scale
        lr[int(rng.integers(3))] *= lesion_type.elongation
        d = np.sqrt(((x - lc[0]) / lr[0]) ** 2 + ((y - lc[1]) / lr[1]) ** 2 + ((z - lc[2]) / lr[2]) ** 2)
        lesion |= d + lesion_type.roughness * lesion_noise < 1.0
        if lesion_type.core > 0:
            core |= d + 0.5 * lesion_type.roughness * lesion_noise < 0.5
        centres.append(lc)
    lesion &= organ
    core &= lesion
    if not lesion.any():  # a lesion smaller than a voxel (tiny test volumes): keep its centre voxel
        index = tuple(int(np.clip(round(c / s + (n - 1) / 2), 0, n - 1)) for c, s, n in zip(centres[0], spacing, shape))
        lesion[index] = organ[index] = body[index] = True
    return body, organ, lesion, core


def _segmentation_render(
    rng: np.random.Generator, masks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], style: _DomainStyle,
    core_contrast: float = 0.0,
) -> np.ndarray:
    body, organ, lesion, core = masks
    shape = body.shape
    spacing = style.spacing

    def partial_volume(mask: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(mask.astype(np.float64), 0.5)

    image = (
        style.background
        + (style.body - style.background) * partial_volume(body)
        + (style.organ - style.body) * partial_volume(organ)
        + (style.lesion - style.organ) * partial_volume(lesion)
        + core_contrast * (style.organ - style.lesion) * partial_volume(core)
    )
    texture = smooth_noise(rng, shape, [2.0 / s for s in spacing])
    image += 0.06 * abs(style.organ - style.body) * texture * body
    levels = (style.background, style.body, style.organ, style.lesion)
    low, high = min(levels), max(levels)
    normalised = np.clip((image - low) / (high - low), 0.0, 1.0)
    image = low + (high - low) * normalised**style.gamma
    if style.bias > 0:
        grid = np.meshgrid(*[np.linspace(-1.0, 1.0, n) for n in shape], indexing="ij", sparse=True)
        coef = rng.uniform(-1.0, 1.0, size=5)
        field = coef[0] * grid[0] + coef[1] * grid[1] + coef[2] * grid[2] + coef[3] * grid[0] * grid[1]
        field = field + coef[4] * grid[2] ** 2
        image = style.background + (image - style.background) * np.exp(style.bias * field)
    image = ndimage.gaussian_filter(image, style.blur)
    if style.rician:
        image = np.hypot(image + style.noise * rng.standard_normal(shape), style.noise * rng.standard_normal(shape))
    else:
        image = image + style.noise * rng.standard_normal(shape)
    return np.clip(np.rint(image), style.low, style.high).astype(np.int16)


def make_segmentation_demo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    size: int | Sequence[int] = (48, 48, 48),
    n_target_train: int = 6,
    n_target_test: int = 6,
    n_source: int = 16,
    domains: Sequence[str] = SEGMENTATION_DOMAINS,
    multiclass: bool = False,
) -> dict[str, Path]:
    """Generate (or reuse) the multi-domain 3D lesion-segmentation demo (see the module docstring).

    Args:
        out_dir: folder of the dataset; one sub-folder per domain.
        seed: seed of every random draw; the same seed gives the same bytes.
        size: volume shape in voxels (an int for a cube), each >= 8.
        n_target_train: labelled training cases of the target domain (the first of ``domains``).
        n_target_test: labelled test cases of the target domain (under ``"test"``).
        n_source: labelled training cases of every other domain.
        domains: domain names; ``"target"``, ``"source_1"``, ``"source_2"`` have fixed appearances, other names
            get an appearance drawn from ``seed`` and the name.
        multiclass: labels ``{1: organ, 2: lesion}`` instead of ``{1: lesion}``.

    Returns:
        ``{domain: path of its dataset.json}``.
    """
    out = Path(out_dir).expanduser()
    seed = check_seed(seed)
    shape = check_size(size, 3, 8)
    n_target_train = check_count("n_target_train", n_target_train, 1)
    n_target_test = check_count("n_target_test", n_target_test, 0)
    n_source = check_count("n_source", n_source, 1)
    if isinstance(domains, str) or not domains or not all(isinstance(d, str) and d for d in domains):
        raise ValueError(f"domains must be a non-empty sequence of names, got {domains!r}.")
    domains = tuple(domains)
    if len(set(domains)) != len(domains) or any(os.sep in d or d.startswith(".") for d in domains):
        raise ValueError(f"domains must be distinct plain folder names, got {domains!r}.")
    params = {
        "seed": seed,
        "size": shape,
        "n_target_train": n_target_train,
        "n_target_test": n_target_test,
        "n_source": n_source,
        "domains": domains,
        "multiclass": bool(multiclass),
    }
    scale = min(shape) / _REFERENCE_SIZE
    if multiclass:
        label_names = {"0": "background", "1": "organ", "2": "lesion"}
    else:
        label_names = {"0": "background", "1": "lesion"}

    def build() -> Iterator[tuple[str, bytes]]:
        for d_index, domain in enumerate(domains):
            style = _domain_style(domain, seed)
            lesion_type = _lesion_type(domain, seed)
            is_target = d_index == 0
            n_train = n_target_train if is_target else n_source
            n_test = n_target_test if is_target else 0
            lists: dict[str, list[dict[str, str]]] = {"training": [], "test": []}
            for case in range(n_train + n_test):
                split = "training" if case < n_train else "test"
                rng = np.random.default_rng([seed, _domain_seed(domain), case])
                masks = _segmentation_anatomy(rng, shape, style.spacing, scale, lesion_type)
                image = _segmentation_render(rng, masks, style, lesion_type.core)
                if multiclass:
                    label = np.where(masks[2], 2, np.where(masks[1], 1, 0)).astype(np.uint8)
                else:
                    label = masks[2].astype(np.uint8)
                suffix = "Tr" if split == "training" else "Ts"
                name = f"{domain}_{case:03d}.nii.gz"
                entry = {"image": f"images{suffix}/{name}", "label": f"labels{suffix}/{name}"}
                yield f"{domain}/{entry['image']}", nifti_bytes(image, style.spacing)
                yield f"{domain}/{entry['label']}", nifti_bytes(label, style.spacing)
                lists[split].append(entry)
            role = "target" if is_target else "source"
            datalist = {
                "name": f"medkd demo segmentation: {domain}",
                "description": (
                    f"Synthetic 3D lesion segmentation, {role} domain '{domain}' ({style.modality}-like, "
                    f"{lesion_type.name}-like lesions), generated by medkd_ext.data.demo with seed {seed}. 'test' "
                    "cases carry labels for evaluation."
                ),
                "reference": "synthetic, medkd_ext.data.demo",
                "licence": "CC0-1.0",
                "release": str(_GENERATOR_VERSION),
                "tensorImageSize": "3D",
                "modality": {"0": style.modality},
                "labels": label_names,
                "domain": domain,
                "lesion_type": lesion_type.name,
                "role": role,
                "spacing": list(style.spacing),
                "numTraining": len(lists["training"]),
                "numTest": len(lists["test"]),
                "training": lists["training"],
                "test": lists["test"],
            }
            yield f"{domain}/dataset.json", json_bytes(datalist)

    generate_or_reuse(out, "segmentation", params, build)
    return {domain: out / domain / "dataset.json" for domain in domains}


def ensure_segmentation_demo(root: str | os.PathLike | None = None, seed: int = 0, **kwargs: Any) -> dict[str, Path]:
    """The segmentation demo under ``<root>/segmentation``, generated on first use.

    Args:
        root: parent folder; default :func:`default_demo_root` (``$MEDKD_DEMO_DIR`` or ``~/.cache/medkd/demo``).
        seed: generation seed.
        kwargs: further arguments of :func:`make_segmentation_demo`.
    """
    base = Path(root).expanduser() if root is not None else default_demo_root()
    return make_segmentation_demo(base / "segmentation", seed=seed, **kwargs)


def segmentation_demo_dir(root: str | os.PathLike | None = None, seed: int = 0) -> str:
    """Folder of the segmentation demo (``<root>/segmentation``, one sub-folder per domain), generated on first use.

    The default ``dataset_dir`` of the joint-teacher bundle: evaluated only when the user does not give one.
    """
    paths = ensure_segmentation_demo(root, seed=seed)
    return str(Path(next(iter(paths.values()))).parent.parent)
