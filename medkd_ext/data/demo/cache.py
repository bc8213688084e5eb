"""Storage of the demo datasets: file encoding, atomic writes and the manifest that makes generation idempotent.

A finished dataset is recorded in a manifest (``medkd_demo_manifest.json``, written last, listing every file with
its size and SHA-256 and the generation parameters); a later call with the same parameters reuses it untouched,
while a missing manifest, a missing or altered file or different parameters make the dataset be generated again.
Regeneration only overwrites the generator's own file names and only deletes files listed in a previous manifest.
Files are encoded deterministically: gzip streams are written with ``mtime=0`` and PNG files carry no timestamp.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "DEMO_MANIFEST_NAME",
    "default_demo_root",
    "atomic_write",
    "json_bytes",
    "nifti_bytes",
    "png_bytes",
    "generate_or_reuse",
]

DEMO_MANIFEST_NAME = "medkd_demo_manifest.json"
_GENERATOR_VERSION = 2  # bump when the generated content changes, so existing demo folders are regenerated


def default_demo_root() -> Path:
    """Folder where :func:`ensure_segmentation_demo` / :func:`ensure_classification_demo` put demo data.

    ``$MEDKD_DEMO_DIR`` if set, else ``$XDG_CACHE_HOME/medkd/demo`` (``~/.cache/medkd/demo``).
    """
    env = os.environ.get("MEDKD_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "medkd" / "demo"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def json_bytes(obj: Any) -> bytes:
    """``obj`` as indented UTF-8 JSON with a final newline."""
    return (json.dumps(obj, indent=2) + "\n").encode("utf-8")


def nifti_bytes(array: np.ndarray, spacing: Sequence[float]) -> bytes:
    """A gzipped NIfTI-1 file (``.nii.gz``) of ``array``, with its field of view centred on the origin.

    Args:
        array: image of 3 spatial dimensions, stored with its dtype.
        spacing: voxel size in mm along the three axes (qform and sform code 1).
    """
    import nibabel as nib

    shape = np.asarray(array.shape[:3], dtype=float)
    affine = np.diag([*map(float, spacing), 1.0])
    affine[:3, 3] = -(shape - 1) / 2 * np.asarray(spacing, dtype=float)  # field of view centred on the origin
    img = nib.Nifti1Image(array, affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def png_bytes(array: np.ndarray) -> bytes:
    """An 8-bit PNG file of a 2D array (grayscale) or an ``(H, W, 3)`` array (RGB); values cast to ``uint8``."""
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.ascontiguousarray(array, dtype=np.uint8)
    Image.fromarray(pixels, mode="L" if pixels.ndim == 2 else "RGB").save(buffer, format="PNG")
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


def generate_or_reuse(
    out_dir: Path, task: str, params: dict[str, Any], build: Callable[[], Iterator[tuple[str, bytes]]]
) -> bool:
    """Write the files ``build`` yields unless a complete dataset with these parameters exists.

    Args:
        out_dir: folder of the dataset; file names from ``build`` are relative to it.
        task: name of the generator (``"segmentation"`` or ``"classification"``), recorded in the manifest.
        params: generation parameters (JSON-serialisable), recorded in the manifest and compared on reuse.
        build: called only when the dataset is (re)generated; yields ``(relative path, file content)`` pairs.

    Returns:
        True if the files were written, False if the existing dataset was reused.
    """
    params = _normalise_params(params)
    if _manifest_matches(out_dir, task, params):
        return False
    out_dir.mkdir(parents=True, exist_ok=True)
    old_files = _old_manifest_files(out_dir)
    (out_dir / DEMO_MANIFEST_NAME).unlink(missing_ok=True)
    files: dict[str, dict[str, Any]] = {}
    for rel, data in build():
        atomic_write(out_dir / rel, data)
        files[rel] = {"size": len(data), "sha256": _sha256(data)}
    for rel in old_files:
        stale = out_dir / rel
        if rel not in files and stale.is_file() and out_dir.resolve() in stale.resolve().parents:
            stale.unlink()
    manifest = {"generator": "medkd_ext.data.demo", "version": _GENERATOR_VERSION, "task": task}
    manifest.update(params=params, files=files)
    atomic_write(out_dir / DEMO_MANIFEST_NAME, json_bytes(manifest))
    return True
