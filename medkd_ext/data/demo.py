"""Synthetic demo datasets, so that every bundle runs out of the box without downloading data.

Two generators, both deterministic from ``seed`` down to the bytes of every file (gzip streams are written with
``mtime=0``; PNG files carry no timestamp), and idempotent: a finished dataset is recorded in a manifest
(``medkd_demo_manifest.json``, written last, listing every file with its size and SHA-256 and the generation
parameters); a later call with the same parameters reuses it untouched, while a missing manifest, a missing or
altered file or different parameters make the dataset be generated again. Regeneration only overwrites the
generator's own file names and only deletes files listed in a previous manifest.

**Segmentation** (:func:`make_segmentation_demo`, for ``bundles/joint_teacher_seg``): 3D NIfTI volumes of
several imaging *domains* with the same anatomy (an elliptic-cylinder body, a smooth ellipsoidal organ holding
1-4 deformed ellipsoidal lesions) but a different appearance, as different scanners and modalities give:
intensity levels and lesion contrast (``target``: CT-like, lesion darker than the organ; ``source_1``: T2-like,
lesion brighter; ``source_2``: T1-like, lesion darker, other gamma), noise (Gaussian or Rician), bias field, blur
and voxel spacing. Anatomy is generated in millimetres, so structures keep their physical size across spacings
(it is scaled by ``min(size) / 48`` so that small test volumes still hold the whole anatomy). The first domain is
the *target*: few labelled training cases plus labelled test cases; the others are *sources* with more training
cases and no test cases. Layout, per domain (MSD style, paths in ``dataset.json`` relative to it)::

    <out_dir>/<domain>/dataset.json
    <out_dir>/<domain>/imagesTr/<domain>_000.nii.gz   labelsTr/<domain>_000.nii.gz
    <out_dir>/<domain>/imagesTs/<domain>_006.nii.gz   labelsTs/<domain>_006.nii.gz   (target only)

MSD ``dataset.json`` files list test images as bare paths; here ``"test"`` holds ``{"image", "label"}``
dictionaries so that evaluation can score the target test cases (``monai.data.load_decathlon_datalist`` and
:func:`medkd_ext.data.load_datalist` read both forms). Labels: ``{0: background, 1: lesion}``, or with
``multiclass=True`` ``{0: background, 1: organ, 2: lesion}``. Every labelled case holds at least one lesion voxel.

**Classification** (:func:`make_classification_demo`, for the classification bundles): chest-radiograph-like
images (body, two darker lungs, mediastinum, texture and noise) holding bright textured "findings" whose shape
is the class (2D: disc, square, ring, cross, diamond, triangle; 3D: the solid analogues), at random position,
scale, small rotation and intensity. Multi-class: one finding per image, classes balanced. Multi-label: each
finding present independently (an image may have none). Several images per patient (shared anatomy), and the
``"test"`` patients are disjoint from the ``"training"`` ones. 2D images are 8-bit grayscale PNG (one channel;
bundles needing 3-channel input repeat the channel with a transform, e.g. ``RepeatChanneld``); 3D images are
``uint8`` NIfTI. Written: ``dataset.json`` (label an ``int`` or a multi-hot ``list[int]``, plus ``"patient"``)
and ``labels.csv`` (columns ``image, patient, split`` and ``label`` or one 0/1 column per class name; read it with
``load_datalist(csv, key="training" or "test", class_columns=...)``).

Command line::

    python -m medkd_ext.data.demo --task segmentation --out DIR [--seed S]
    python -m medkd_ext.data.demo --task classification --out DIR [--seed S] [--spatial-dims 2|3] [--multi-label]
"""

from __future__ import annotations

import argparse
import functools
import gzip
import hashlib
import io
import json
import math
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

__all__ = [
    "segmentation_demo_dir",
    "DEMO_MANIFEST_NAME",
    "SEGMENTATION_DOMAINS",
    "CLASSIFICATION_CLASS_NAMES",
    "default_demo_root",
    "make_segmentation_demo",
    "make_classification_demo",
    "ensure_segmentation_demo",
    "ensure_classification_demo",
    "main",
]

DEMO_MANIFEST_NAME = "medkd_demo_manifest.json"
SEGMENTATION_DOMAINS = ("target", "source_1", "source_2")
CLASSIFICATION_CLASS_NAMES = {
    2: ("disc", "square", "ring", "cross", "diamond", "triangle"),
    3: ("sphere", "cube", "shell", "cross", "octahedron", "cone"),
}
_GENERATOR_VERSION = 1  # bump when the generated content changes, so existing demo folders are regenerated
_REFERENCE_SIZE = 48.0  # voxels at which the anatomy has its nominal size in mm


# ----------------------------------------------------------------------------------------------------------------
# files, manifest, idempotency


def default_demo_root() -> Path:
    """Folder where :func:`ensure_segmentation_demo` / :func:`ensure_classification_demo` put demo data.

    ``$MEDKD_DEMO_DIR`` if set, else ``$XDG_CACHE_HOME/medkd/demo`` (``~/.cache/medkd/demo``).
    """
    env = os.environ.get("MEDKD_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "medkd" / "demo"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def _nifti_bytes(array: np.ndarray, spacing: Sequence[float]) -> bytes:
    import nibabel as nib

    shape = np.asarray(array.shape[:3], dtype=float)
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(shape - 1) / 2 * np.asarray(spacing, dtype=float)  # field of view centred on the origin
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def _normalise_params(params: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(params))


def _manifest_matches(out_dir: Path, task: str, params: dict[str, Any]) -> bool:
    manifest_path = out_dir / DEMO_MANIFEST_NAME
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("task") != task or manifest.get("params") != params:
        return False
    if manifest.get("version") != _GENERATOR_VERSION or not isinstance(manifest.get("files"), dict):
        return False
    for rel, info in manifest["files"].items():
        path = out_dir / rel
        try:
            if path.stat().st_size != info["size"] or _sha256(path.read_bytes()) != info["sha256"]:
                return False
        except (OSError, KeyError, TypeError):
            return False
    return True


def _old_manifest_files(out_dir: Path) -> list[str]:
    try:
        manifest = json.loads((out_dir / DEMO_MANIFEST_NAME).read_text(encoding="utf-8"))
        files = manifest.get("files", {}) if isinstance(manifest, dict) else {}
        return [str(rel) for rel in files] if isinstance(files, dict) else []
    except (OSError, ValueError):
        return []


def _generate_or_reuse(
    out_dir: Path, task: str, params: dict[str, Any], build: Callable[[], Iterator[tuple[str, bytes]]]
) -> bool:
    """Write the files ``build`` yields unless a complete dataset with these parameters exists; True if written."""
    params = _normalise_params(params)
    if _manifest_matches(out_dir, task, params):
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    old_files = _old_manifest_files(out_dir)
    (out_dir / DEMO_MANIFEST_NAME).unlink(missing_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for rel, data in build():
        _atomic_write(out_dir / rel, data)
        files[rel] = {"size": len(data), "sha256": _sha256(data)}
    for rel in old_files:
        stale = out_dir / rel
        if rel not in files and stale.is_file() and out_dir.resolve() in stale.resolve().parents:
            stale.unlink()
    manifest = {"generator": "medkd_ext.data.demo", "version": _GENERATOR_VERSION, "task": task}
    manifest.update(params=params, files=files)
    _atomic_write(out_dir / DEMO_MANIFEST_NAME, _json_bytes(manifest))
    return True


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _check_count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_size(size: Any, ndim: int, minimum: int) -> tuple[int, ...]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        size = (int(size),) * ndim
    if not isinstance(size, Sequence) or len(size) != ndim:
        raise ValueError(f"size must be an integer or a sequence of {ndim} integers, got {size!r}.")
    size = tuple(size)
    if any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < minimum for s in size):
        raise ValueError(f"size must hold integers >= {minimum}, got {size!r}.")
    return tuple(int(s) for s in size)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], sigma: Sequence[float] | float) -> np.ndarray:
    """Gaussian-smoothed white noise scaled to unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    std = field.std()
    return field / std if std > 0 else field


# ----------------------------------------------------------------------------------------------------------------
# segmentation


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
    "target": _DomainStyle("CT", (1.0, 1.0, 1.5), -1000.0, 40.0, 110.0, 45.0, 1.0, 12.0, False, 0.0, 0.6, -1024, 3071),
    "source_1": _DomainStyle("MR-T2", (0.8, 0.8, 1.2), 0.0, 250.0, 420.0, 820.0, 0.8, 25.0, True, 0.35, 0.8, 0, 4095),
    "source_2": _DomainStyle("MR-T1", (1.3, 1.3, 2.0), 10.0, 500.0, 650.0, 300.0, 1.4, 30.0, True, 0.25, 1.0, 0, 4095),
}


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
    rng: np.random.Generator, shape: tuple[int, int, int], spacing: Sequence[float], scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Body, organ and lesion masks of one case, drawn in millimetres. Lesions lie inside the organ."""
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    sigma_vox = [4.0 * scale / s for s in spacing]  # deformations on a ~4 mm scale

    bx, by = rng.uniform(21.0, 24.0) * scale, rng.uniform(16.0, 19.0) * scale
    body = (x / bx) ** 2 + (y / by) ** 2 + 0.05 * _smooth_noise(rng, shape, sigma_vox) < 1.0

    centre = rng.uniform(-3.0, 3.0, size=3) * scale
    radii = np.array([rng.uniform(10.0, 14.0), rng.uniform(8.0, 11.0), rng.uniform(9.0, 13.0)]) * scale
    theta = rng.uniform(-math.pi / 6, math.pi / 6)
    cos, sin = math.cos(theta), math.sin(theta)
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    organ_d = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (dz / radii[2]) ** 2)
    organ = (organ_d + 0.08 * _smooth_noise(rng, shape, sigma_vox) < 1.0) & body

    lesion_noise = _smooth_noise(rng, shape, [0.5 * s for s in sigma_vox])
    lesion = np.zeros(shape, dtype=bool)
    centres = []
    for _ in range(int(rng.integers(1, 5))):
        direction = rng.standard_normal(3)
        local = direction / np.linalg.norm(direction) * 0.6 * rng.random() ** (1 / 3) * radii
        lc = centre + np.array([cos * local[0] - sin * local[1], sin * local[0] + cos * local[1], local[2]])
        lr = rng.uniform(2.5, 6.0, size=3) * scale
        d = np.sqrt(((x - lc[0]) / lr[0]) ** 2 + ((y - lc[1]) / lr[1]) ** 2 + ((z - lc[2]) / lr[2]) ** 2)
        lesion |= d + 0.25 * lesion_noise < 1.0
        centres.append(lc)
    lesion &= organ
    if not lesion.any():  # a lesion smaller than a voxel (tiny test volumes): keep its centre voxel
        index = tuple(
            int(np.clip(round(c / s + (n - 1) / 2), 0, n - 1)) for c, s, n in zip(centres[0], spacing, shape)
        )
        lesion[index] = organ[index] = body[index] = True
    return body, organ, lesion


def _segmentation_render(
    rng: np.random.Generator, masks: tuple[np.ndarray, np.ndarray, np.ndarray], style: _DomainStyle
) -> np.ndarray:
    body, organ, lesion = masks
    shape = body.shape
    spacing = style.spacing

    def partial_volume(mask: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(mask.astype(np.float64), 0.5)

    image = (
        style.background
        + (style.body - style.background) * partial_volume(body)
        + (style.organ - style.body) * partial_volume(organ)
        + (style.lesion - style.organ) * partial_volume(lesion)
    )
    texture = _smooth_noise(rng, shape, [2.0 / s for s in spacing])
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
    seed = _check_seed(seed)
    shape = _check_size(size, 3, 8)
    n_target_train = _check_count("n_target_train", n_target_train, 1)
    n_target_test = _check_count("n_target_test", n_target_test, 0)
    n_source = _check_count("n_source", n_source, 1)
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
            is_target = d_index == 0
            n_train = n_target_train if is_target else n_source
            n_test = n_target_test if is_target else 0
            lists: dict[str, list[dict[str, str]]] = {"training": [], "test": []}
            for case in range(n_train + n_test):
                split = "training" if case < n_train else "test"
                rng = np.random.default_rng([seed, _domain_seed(domain), case])
                masks = _segmentation_anatomy(rng, shape, style.spacing, scale)
                image = _segmentation_render(rng, masks, style)
                if multiclass:
                    label = np.where(masks[2], 2, np.where(masks[1], 1, 0)).astype(np.uint8)
                else:
                    label = masks[2].astype(np.uint8)
                suffix = "Tr" if split == "training" else "Ts"
                name = f"{domain}_{case:03d}.nii.gz"
                entry = {"image": f"images{suffix}/{name}", "label": f"labels{suffix}/{name}"}
                yield f"{domain}/{entry['image']}", _nifti_bytes(image, style.spacing)
                yield f"{domain}/{entry['label']}", _nifti_bytes(label, style.spacing)
                lists[split].append(entry)
            role = "target" if is_target else "source"
            datalist = {
                "name": f"medkd demo segmentation: {domain}",
                "description": (
                    f"Synthetic 3D lesion segmentation, {role} domain '{domain}' ({style.modality}-like), generated "
                    f"by medkd_ext.data.demo with seed {seed}. 'test' cases carry labels for evaluation."
                ),
                "reference": "synthetic, medkd_ext.data.demo",
                "licence": "CC0-1.0",
                "release": str(_GENERATOR_VERSION),
                "tensorImageSize": "3D",
                "modality": {"0": style.modality},
                "labels": label_names,
                "domain": domain,
                "role": role,
                "spacing": list(style.spacing),
                "numTraining": len(lists["training"]),
                "numTest": len(lists["test"]),
                "training": lists["training"],
                "test": lists["test"],
            }
            yield f"{domain}/dataset.json", _json_bytes(datalist)

    _generate_or_reuse(out, "segmentation", params, build)
    return {domain: out / domain / "dataset.json" for domain in domains}


# ----------------------------------------------------------------------------------------------------------------
# classification


def _finding_mask(shape_index: int, coords: Sequence[np.ndarray]) -> np.ndarray:
    """Mask of a finding in coordinates normalised by its centre and radius (2 or 3 arrays)."""
    absolute = [np.abs(c) for c in coords]
    radius = np.sqrt(sum(c**2 for c in coords))
    if shape_index == 0:  # disc / sphere
        return radius < 1.0
    if shape_index == 1:  # square / cube
        return functools.reduce(np.maximum, absolute) < 0.8
    if shape_index == 2:  # ring / shell
        return (radius < 1.0) & (radius > 0.6)
    if shape_index == 3:  # cross: bars along every axis
        mask = np.zeros(np.broadcast_shapes(*[c.shape for c in coords]), dtype=bool)
        for axis in range(len(coords)):
            inside = absolute[axis] < 1.0
            for other in range(len(coords)):
                if other != axis:
                    inside = inside & (absolute[other] < 0.28)
            mask |= inside
        return mask
    if shape_index == 4:  # diamond / octahedron
        return sum(absolute) < 1.0
    # triangle / cone: apex up the first axis, base at the bottom
    height = coords[0]
    lateral = np.sqrt(sum(c**2 for c in coords[1:]))
    return (height > -0.8) & (height < 0.9) & (lateral < 0.9 * (0.9 - height) / 1.7)


def _classification_case(
    rng: np.random.Generator,
    anatomy: dict[str, float],
    shape: tuple[int, ...],
    present: Sequence[int],
    num_classes: int,
) -> np.ndarray:
    ndim = len(shape)
    axes = [np.linspace(-1.0, 1.0, n) for n in shape]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    rows, cols = grid[0], grid[1]  # rows run head (-1) to feet (+1), columns left to right
    depth = grid[2] if ndim == 3 else 0.0
    body = (rows / anatomy["body_h"]) ** 2 + (cols / anatomy["body_w"]) ** 2 + (depth / 0.8) ** 2 < 1.0
    lungs = []
    for side in (-1.0, 1.0):
        lung = ((rows - anatomy["lung_y"]) / anatomy["lung_h"]) ** 2 + (
            (cols - side * anatomy["lung_x"]) / anatomy["lung_w"]
        ) ** 2 + (depth / 0.6) ** 2 < 1.0
        lungs.append(lung)
    lung_mask = np.broadcast_to(lungs[0] | lungs[1], shape)
    spine = np.abs(cols) < 0.09
    image = np.full(shape, anatomy["air"], dtype=np.float64)
    image = np.where(body, anatomy["tissue"], image)
    image = np.where(lung_mask, anatomy["lung"], image)
    image = np.where(spine & body, anatomy["tissue"] + 45.0, image)
    texture_sigma = max(1.0, shape[0] / 40)
    image = ndimage.gaussian_filter(image, texture_sigma) + 10.0 * _smooth_noise(rng, shape, texture_sigma)

    base_radius = 0.18 if ndim == 2 else 0.26  # in units of the image half-width
    placed: list[tuple[np.ndarray, float]] = []
    candidates = np.argwhere(lung_mask)
    spacing = [2.0 / (n - 1) for n in shape]
    for cls in present:
        radius = base_radius * rng.uniform(0.75, 1.3)
        centre = None
        for _ in range(50):
            trial = (candidates[rng.integers(len(candidates))] * spacing) - 1.0
            if all(np.linalg.norm(trial - c) > radius + r + 0.02 for c, r in placed):
                centre = trial
                break
        if centre is None:
            centre = (candidates[rng.integers(len(candidates))] * spacing) - 1.0
        placed.append((centre, radius))
        coords = [(g - c) / radius for g, c in zip(grid, centre)]
        angle = rng.uniform(-math.pi / 12, math.pi / 12)
        ca, sa = math.cos(angle), math.sin(angle)
        coords[0], coords[1] = ca * coords[0] - sa * coords[1], sa * coords[0] + ca * coords[1]
        mask = np.broadcast_to(_finding_mask(cls, coords), shape)
        texture = 1.0 + 0.12 * _smooth_noise(rng, shape, 1.0)
        # brightness rises with the class index in overlapping ranges: a second, weaker cue besides the shape
        intensity = 150.0 + 60.0 * cls / (num_classes - 1) + rng.uniform(-15.0, 15.0)
        soft = ndimage.gaussian_filter(mask.astype(np.float64), 0.6)
        image = image * (1.0 - soft) + intensity * texture * soft
    image = image + rng.normal(0.0, 6.0, size=shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def make_classification_demo(
    out_dir: str | os.PathLike,
    seed: int = 0,
    spatial_dims: int = 2,
    multi_label: bool = False,
    n_cases: int | None = None,
    n_test: int | None = None,
    size: int | Sequence[int] | None = None,
    num_classes: int = 4,
    finding_probability: float = 0.35,
) -> dict[str, Path]:
    """Generate (or reuse) the 2D/3D multi-class or multi-label classification demo (see the module docstring).

    Args:
        out_dir: folder of the dataset.
        seed: seed of every random draw; the same seed gives the same bytes.
        spatial_dims: 2 (PNG) or 3 (NIfTI).
        multi_label: each finding present independently (multi-hot labels) instead of exactly one per image.
        n_cases: training images; default 400 (2D) or 120 (3D).
        n_test: test images (other patients); default ``n_cases // 4``.
        size: image shape (an int for a square/cube), each >= 16; default 64 (2D) or 32 (3D).
        num_classes: 2 to 6 finding shapes, in the order of ``CLASSIFICATION_CLASS_NAMES[spatial_dims]``.
        finding_probability: multi-label only: probability that each finding is present.

    Returns:
        ``{"dataset_json": ..., "labels_csv": ...}``, both in ``out_dir``.
    """
    out = Path(out_dir).expanduser()
    seed = _check_seed(seed)
    if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}.")
    names = CLASSIFICATION_CLASS_NAMES[spatial_dims]
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer from 2 to {len(names)}, got {num_classes!r}.")
    if not 2 <= num_classes <= len(names):
        raise ValueError(f"num_classes must be from 2 to {len(names)} (finding shapes {names}), got {num_classes}.")
    if n_cases is None:
        n_cases = 400 if spatial_dims == 2 else 120
    n_cases = _check_count("n_cases", n_cases, 1)
    n_test = _check_count("n_test", n_cases // 4 if n_test is None else n_test, 0)
    shape = _check_size(size if size is not None else (64 if spatial_dims == 2 else 32), spatial_dims, 16)
    if not 0.0 <= float(finding_probability) <= 1.0:
        raise ValueError(f"finding_probability must be in [0, 1], got {finding_probability!r}.")
    class_names = names[: int(num_classes)]
    params = {
        "seed": seed,
        "spatial_dims": spatial_dims,
        "multi_label": bool(multi_label),
        "n_cases": n_cases,
        "n_test": n_test,
        "size": shape,
        "num_classes": int(num_classes),
        "finding_probability": float(finding_probability),
    }
    suffix = ".png" if spatial_dims == 2 else ".nii.gz"

    def build() -> Iterator[tuple[str, bytes]]:
        rng = np.random.default_rng([seed, spatial_dims, int(multi_label)])
        lists: dict[str, list[dict[str, Any]]] = {"training": [], "test": []}
        patient = 0
        for split, count in (("training", n_cases), ("test", n_test)):
            if multi_label:
                labels = [list(map(int, rng.random(len(class_names)) < finding_probability)) for _ in range(count)]
            else:
                labels = rng.permutation(np.arange(count) % len(class_names)).tolist()
            done = 0
            while done < count:
                pid = f"P{patient:04d}"
                patient_rng = np.random.default_rng([seed, spatial_dims, int(multi_label), patient])
                anatomy = {
                    "body_h": patient_rng.uniform(0.85, 0.95),
                    "body_w": patient_rng.uniform(0.8, 0.95),
                    "lung_y": patient_rng.uniform(-0.15, 0.0),
                    "lung_h": patient_rng.uniform(0.55, 0.65),
                    "lung_x": patient_rng.uniform(0.38, 0.45),
                    "lung_w": patient_rng.uniform(0.25, 0.32),
                    "air": patient_rng.uniform(5.0, 20.0),
                    "tissue": patient_rng.uniform(110.0, 140.0),
                    "lung": patient_rng.uniform(40.0, 65.0),
                }
                for view in range(min(int(patient_rng.integers(1, 5)), count - done)):
                    label = labels[done]
                    present = [c for c, on in enumerate(label) if on] if multi_label else [label]
                    image = _classification_case(patient_rng, anatomy, shape, present, len(class_names))
                    rel = f"images/{pid}_{view}{suffix}"
                    data = _png_bytes(image) if spatial_dims == 2 else _nifti_bytes(image, (1.0,) * 3)
                    yield rel, data
                    lists[split].append({"image": rel, "label": label, "patient": pid})
                    done += 1
                patient += 1
        task = "multi-label" if multi_label else "multi-class"
        datalist = {
            "name": f"medkd demo classification ({spatial_dims}D, {task})",
            "description": (
                f"Synthetic {'radiograph' if spatial_dims == 2 else 'CT'}-like images with shape-coded findings, "
                f"generated by medkd_ext.data.demo with seed {seed}; labels also in labels.csv."
            ),
            "reference": "synthetic, medkd_ext.data.demo",
            "licence": "CC0-1.0",
            "release": str(_GENERATOR_VERSION),
            "tensorImageSize": f"{spatial_dims}D",
            "modality": {"0": "synthetic X-ray" if spatial_dims == 2 else "synthetic CT"},
            "labels": {str(i): name for i, name in enumerate(class_names)},
            "task": task,
            "num_classes": len(class_names),
            "numTraining": len(lists["training"]),
            "numTest": len(lists["test"]),
            "training": lists["training"],
            "test": lists["test"],
        }
        yield "dataset.json", _json_bytes(datalist)
        table = io.StringIO()
        header = ["image", "patient", "split", *(class_names if multi_label else ["label"])]
        table.write(",".join(header) + "\n")
        for split, entries in lists.items():
            for entry in entries:
                label = entry["label"] if multi_label else [entry["label"]]
                table.write(",".join([entry["image"], entry["patient"], split, *map(str, label)]) + "\n")
        yield "labels.csv", table.getvalue().encode("utf-8")

    _generate_or_reuse(out, "classification", params, build)
    return {"dataset_json": out / "dataset.json", "labels_csv": out / "labels.csv"}


# ----------------------------------------------------------------------------------------------------------------
# first-use helpers and command line


def ensure_segmentation_demo(
    root: str | os.PathLike | None = None, seed: int = 0, **kwargs: Any
) -> dict[str, Path]:
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


def ensure_classification_demo(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    spatial_dims: int = 2,
    multi_label: bool = False,
    **kwargs: Any,
) -> dict[str, Path]:
    """The classification demo under ``<root>/classification_<2|3>d[_multilabel]``, generated on first use.

    Args:
        root: parent folder; default :func:`default_demo_root` (``$MEDKD_DEMO_DIR`` or ``~/.cache/medkd/demo``).
        seed: generation seed.
        spatial_dims: 2 or 3.
        multi_label: multi-label instead of multi-class.
        kwargs: further arguments of :func:`make_classification_demo`.
    """
    base = Path(root).expanduser() if root is not None else default_demo_root()
    folder = f"classification_{spatial_dims}d" + ("_multilabel" if multi_label else "")
    return make_classification_demo(
        base / folder, seed=seed, spatial_dims=spatial_dims, multi_label=multi_label, **kwargs
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m medkd_ext.data.demo --task ... --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m medkd_ext.data.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--task", required=True, choices=("segmentation", "classification"))
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2, help="classification only")
    parser.add_argument("--multi-label", action="store_true", help="classification only")
    args = parser.parse_args(argv)
    before = _manifest_mtime(args.out)
    if args.task == "segmentation":
        paths = make_segmentation_demo(args.out, seed=args.seed)
    else:
        paths = make_classification_demo(
            args.out, seed=args.seed, spatial_dims=args.spatial_dims, multi_label=args.multi_label
        )
    reused = before is not None and before == _manifest_mtime(args.out)
    state = "complete dataset found, reused" if reused else "written"
    print(f"{args.task} demo ({state}) in {args.out}:")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def _manifest_mtime(out_dir: Path) -> int | None:
    try:
        return (out_dir / DEMO_MANIFEST_NAME).stat().st_mtime_ns
    except OSError:
        return None


if __name__ == "__main__":
    raise SystemExit(main())
