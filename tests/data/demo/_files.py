"""Snapshots of a demo folder, to compare bytes and modification times before and after a call."""

from __future__ import annotations

import hashlib
from pathlib import Path


def files(root: Path) -> dict[str, bytes]:
    """Content of every file under ``root``, by path relative to it."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def mtimes(root: Path) -> dict[str, int]:
    """Modification time (ns) of every file under ``root``, by path relative to it."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def content_digest(root: Path) -> str:
    """SHA-256 over the decoded content of every file under ``root`` except the manifest.

    Images count by their voxel values, dtype and shape (and NIfTI by its affine), not by their compressed bytes,
    which depend on the zlib build; other files count by their bytes.
    """
    import nibabel as nib
    import numpy as np
    from PIL import Image

    digest = hashlib.sha256()
    for rel, data in files(root).items():
        if rel.endswith("medkd_demo_manifest.json"):
            continue
        digest.update(rel.encode() + b"\0")
        path = root / rel
        if rel.endswith(".nii.gz"):
            image = nib.load(path)
            array = np.asarray(image.dataobj)
            digest.update(np.round(image.affine, 6).tobytes())
        elif rel.endswith(".png"):
            array = np.asarray(Image.open(path))
        else:
            digest.update(data)
            continue
        digest.update(f"{array.dtype.str}{array.shape}".encode() + np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()
