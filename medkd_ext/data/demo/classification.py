"""2D/3D classification demo (:func:`make_classification_demo`, for the classification bundles).

Chest-radiograph-like images (body, two darker lungs, mediastinum, texture and noise) holding bright textured
"findings" whose shape is the class (2D: disc, square, ring, cross, diamond, triangle; 3D: the solid analogues), at
random position, scale, small rotation and intensity. Multi-class: one finding per image, classes balanced.
Multi-label: each finding present independently (an image may have none). Several images per patient (shared
anatomy), and the ``"test"`` patients are disjoint from the ``"training"`` ones. ``site="related"`` gives another
dataset of the same modality and findings from another "hospital" (other patients, another exposure, contrast,
sharpness and noise), as MIMIC-CXR is to CheXpert: the in-domain teacher's data in the attention-transfer bundle.
2D images are 8-bit grayscale PNG (one channel; bundles needing 3-channel input repeat the channel with a transform,
e.g. ``RepeatChanneld``); 3D images are ``uint8`` NIfTI. Written: ``dataset.json`` (label an ``int`` or a multi-hot
``list[int]``, plus ``"patient"``) and ``labels.csv`` (columns ``image, patient, split`` and ``label`` or one 0/1
column per class name; read it with ``load_datalist(csv, key="training" or "test", class_columns=...)``).
"""

from __future__ import annotations

import functools
import io
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from .arguments import check_count, check_seed, check_size, check_spatial_dims
from .cache import _GENERATOR_VERSION, default_demo_root, generate_or_reuse, json_bytes, nifti_bytes, png_bytes
from .random_fields import smooth_noise

__all__ = [
    "CLASSIFICATION_CLASS_NAMES",
    "CLASSIFICATION_SITES",
    "make_classification_demo",
    "ensure_classification_demo",
]

CLASSIFICATION_SITES = ("target", "related")

CLASSIFICATION_CLASS_NAMES = {
    2: ("disc", "square", "ring", "cross", "diamond", "triangle"),
    3: ("sphere", "cube", "shell", "cross", "octahedron", "cone"),
}


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
    site: str = "target",
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
    image = ndimage.gaussian_filter(image, texture_sigma) + 10.0 * smooth_noise(rng, shape, texture_sigma)

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
        texture = 1.0 + 0.12 * smooth_noise(rng, shape, 1.0)
        # brightness rises with the class index in overlapping ranges: a second, weaker cue besides the shape
        intensity = 150.0 + 60.0 * cls / (num_classes - 1) + rng.uniform(-15.0, 15.0)
        soft = ndimage.gaussian_filter(mask.astype(np.float64), 0.6)
        image = image * (1.0 - soft) + intensity * texture * soft
    image = image + rng.normal(0.0, 6.0, size=shape)
    if site == "related":
        image = _related_appearance(rng, image)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _related_appearance(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Another hospital's radiographs of the same findings: higher exposure with a softer contrast curve (gamma
    0.75), a gradient across the field (heel effect), a blurrier detector and more noise."""
    scaled = 255.0 * (np.clip(image, 0.0, 255.0) / 255.0) ** 0.75
    ramp = np.linspace(-1.0, 1.0, image.shape[0]).reshape((-1,) + (1,) * (image.ndim - 1))
    scaled = 0.85 * scaled + 25.0 + 12.0 * rng.uniform(0.5, 1.0) * ramp
    scaled = ndimage.gaussian_filter(scaled, 0.7)
    return scaled + rng.normal(0.0, 9.0, size=image.shape)


def classification_datalist_files(
    head: dict[str, Any],
    modality: str,
    spatial_dims: int,
    class_names: Sequence[str],
    lists: dict[str, list[dict[str, Any]]],
    multi_label: bool = False,
) -> Iterator[tuple[str, bytes]]:
    """``dataset.json`` and ``labels.csv`` of a generated classification dataset (``lists``: ``"training"`` and
    ``"test"`` entries ``{"image", "label"[, "patient"]}``), as ``(relative path, bytes)`` pairs.

    ``head`` (name, description, ...) starts the ``dataset.json``; the CSV has the columns ``image``, ``patient``
    (when the entries have one), ``split`` and ``label`` or one 0/1 column per class (``multi_label``)."""
    datalist = {
        **head,
        "reference": "synthetic, medkd_ext.data.demo",
        "licence": "CC0-1.0",
        "release": str(_GENERATOR_VERSION),
        "tensorImageSize": f"{spatial_dims}D",
        "modality": {"0": modality},
        "labels": {str(i): name for i, name in enumerate(class_names)},
        "task": "multi-label" if multi_label else "multi-class",
        "num_classes": len(class_names),
        "numTraining": len(lists["training"]),
        "numTest": len(lists["test"]),
        "training": lists["training"],
        "test": lists["test"],
    }
    yield "dataset.json", json_bytes(datalist)
    with_patient = any("patient" in entry for entries in lists.values() for entry in entries)
    table = io.StringIO()
    header = ["image", *(["patient"] if with_patient else []), "split", *(class_names if multi_label else ["label"])]
    table.write(",".join(header) + "\n")
    for split, entries in lists.items():
        for entry in entries:
            label = entry["label"] if multi_label else [entry["label"]]
            patient = [entry["patient"]] if with_patient else []
            table.write(",".join([entry["image"], *patient, split, *map(str, label)]) + "\n")
    yield "labels.csv", table.getvalue().encode("utf-8")


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
    site: str = "target",
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
        site: ``"target"`` (the demo the bundles train on) or ``"related"`` (same findings, other patients and
            another appearance: the larger in-domain dataset an attention-transfer teacher learns from).

    Returns:
        ``{"dataset_json": ..., "labels_csv": ...}``, both in ``out_dir``.
    """
    out = Path(out_dir).expanduser()
    seed = check_seed(seed)
    spatial_dims = check_spatial_dims(spatial_dims)
    names = CLASSIFICATION_CLASS_NAMES[spatial_dims]
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
        raise ValueError(f"num_classes must be an integer from 2 to {len(names)}, got {num_classes!r}.")
    if not 2 <= num_classes <= len(names):
        raise ValueError(f"num_classes must be from 2 to {len(names)} (finding shapes {names}), got {num_classes}.")
    if n_cases is None:
        n_cases = 400 if spatial_dims == 2 else 120
    n_cases = check_count("n_cases", n_cases, 1)
    n_test = check_count("n_test", n_cases // 4 if n_test is None else n_test, 0)
    shape = check_size(size if size is not None else (64 if spatial_dims == 2 else 32), spatial_dims, 16)
    if not 0.0 <= float(finding_probability) <= 1.0:
        raise ValueError(f"finding_probability must be in [0, 1], got {finding_probability!r}.")
    if site not in CLASSIFICATION_SITES:
        raise ValueError(f"site must be one of {CLASSIFICATION_SITES}, got {site!r}.")
    class_names = names[: int(num_classes)]
    # the related site draws other patients: one more entry in every seed sequence (the target's stay as they were)
    site_seed = [] if site == "target" else [CLASSIFICATION_SITES.index(site)]
    params = {
        "seed": seed,
        "spatial_dims": spatial_dims,
        "multi_label": bool(multi_label),
        "n_cases": n_cases,
        "n_test": n_test,
        "size": shape,
        "num_classes": int(num_classes),
        "finding_probability": float(finding_probability),
        "site": site,
    }
    suffix = ".png" if spatial_dims == 2 else ".nii.gz"

    def build() -> Iterator[tuple[str, bytes]]:
        rng = np.random.default_rng([seed, spatial_dims, int(multi_label), *site_seed])
        lists: dict[str, list[dict[str, Any]]] = {"training": [], "test": []}
        patient = 0
        for split, count in (("training", n_cases), ("test", n_test)):
            if multi_label:
                labels = [list(map(int, rng.random(len(class_names)) < finding_probability)) for _ in range(count)]
            else:
                labels = rng.permutation(np.arange(count) % len(class_names)).tolist()
            done = 0
            while done < count:
                pid = f"{'P' if site == 'target' else 'R'}{patient:04d}"
                patient_rng = np.random.default_rng([seed, spatial_dims, int(multi_label), patient, *site_seed])
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
                    image = _classification_case(patient_rng, anatomy, shape, present, len(class_names), site)
                    rel = f"images/{pid}_{view}{suffix}"
                    data = png_bytes(image) if spatial_dims == 2 else nifti_bytes(image, (1.0,) * 3)
                    yield rel, data
                    lists[split].append({"image": rel, "label": label, "patient": pid})
                    done += 1
                patient += 1
        task = "multi-label" if multi_label else "multi-class"
        head = {
            "name": f"medkd demo classification ({spatial_dims}D, {task})"
            + ("" if site == "target" else f", {site} site"),
            "description": (
                f"Synthetic {'radiograph' if spatial_dims == 2 else 'CT'}-like images with shape-coded findings, "
                f"site '{site}', generated by medkd_ext.data.demo with seed {seed}; labels also in labels.csv."
            ),
            "site": site,
        }
        modality = "synthetic X-ray" if spatial_dims == 2 else "synthetic CT"
        yield from classification_datalist_files(head, modality, spatial_dims, class_names, lists, multi_label)

    generate_or_reuse(out, "classification", params, build)
    return {"dataset_json": out / "dataset.json", "labels_csv": out / "labels.csv"}


def ensure_classification_demo(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    spatial_dims: int = 2,
    multi_label: bool = False,
    site: str = "target",
    **kwargs: Any,
) -> dict[str, Path]:
    """The classification demo under ``<root>/classification_<2|3>d[_multilabel][_related]``, generated on first use.

    Args:
        root: parent folder; default :func:`default_demo_root` (``$MEDKD_DEMO_DIR`` or ``~/.cache/medkd/demo``).
        seed: generation seed.
        spatial_dims: 2 or 3.
        multi_label: multi-label instead of multi-class.
        site: ``"target"`` or ``"related"`` (see :func:`make_classification_demo`; the related site has 1.5 times the
            target's training images by default and no test list).
        kwargs: further arguments of :func:`make_classification_demo`.
    """
    base = Path(root).expanduser() if root is not None else default_demo_root()
    folder = f"classification_{spatial_dims}d" + ("_multilabel" if multi_label else "")
    if site != "target":
        folder += f"_{site}"
        kwargs.setdefault("n_cases", 600 if spatial_dims == 2 else 180)
        kwargs.setdefault("n_test", 0)
    return make_classification_demo(
        base / folder, seed=seed, spatial_dims=spatial_dims, multi_label=multi_label, site=site, **kwargs
    )
