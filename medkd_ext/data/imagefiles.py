"""Recognising image files and DICOM series, and finding the broken ones before any work is spent on them.

:func:`check_image_file` reads only what it needs to tell that a file is whole: the NIfTI header and the file's
length (for ``.nii.gz`` the size the gzip stream records at its end; the stream is decompressed only when that
disagrees), the end marker of a PNG or JPEG (the image is decoded only when the marker is missing), and the header
of every file of a DICOM series (a slice file cut short, a slice missing from the series). Other formats (NRRD,
MHA/MHD, and files of unknown type) are left to the loader.

A DICOM series is a folder of DICOM files, with or without the ``.dcm`` suffix (scanners and PACS exports often
write names such as ``IM0001`` or plain numbers): a file is a DICOM file when its name ends in ``.dcm`` or it holds
the ``DICM`` marker after the 128-byte preamble of DICOM Part 10 (:func:`is_dicom_file`).
"""

from __future__ import annotations

import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

from medkd_ext.runtime import _DICOMDIR_CLASS, IMAGE_SUFFIXES, dicom_files, has_image_suffix, is_dicom_file

__all__ = ["IMAGE_SUFFIXES", "check_image_file", "dicom_files", "is_dicom_file", "is_image_file"]

_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"

_PIXEL_DATA = 0x7FE00010
_UNDEFINED_LENGTH = 0xFFFFFFFF
_GAP_TOLERANCE = 1.5  # a slice distance this many times the usual one means missing slices


def is_image_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an image the bundles can read: a file with one of :data:`IMAGE_SUFFIXES`, a DICOM file,
    or a folder holding a DICOM series."""
    path = Path(path)
    if path.is_dir():
        return bool(dicom_files(path))
    return path.is_file() and (has_image_suffix(path) or is_dicom_file(path))


def check_image_file(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` naming ``path`` when it is a broken image: a NIfTI file whose header cannot be read or
    that holds less voxel data than its header declares (a truncated copy), a PNG/JPEG image that cannot be decoded,
    a DICOM series with a file cut short, without pixel data, or with slices missing.

    The checks read headers and file ends, not the images (see the module's description), so they are cheap enough
    to run on every file of a datalist before training. A file of another type passes unchecked.

    Args:
        path: an image file, or a folder holding a DICOM series.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: the file is broken; the message says what is wrong and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image {path} does not exist; check `dataset_dir` / the datalist.")
    if path.is_dir():
        files = dicom_files(path)
        if not files:
            content = sorted(p.name for p in path.iterdir())[:10]
            raise ValueError(
                f"image folder {path} holds no DICOM file (it holds {content}); give an image file, or a folder "
                "holding the files of one DICOM series."
            )
        _check_dicom_series(path, files)
        return
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        _check_nifti(path)
    elif name.endswith((".png", ".jpg", ".jpeg")):
        _check_picture(path)
    elif name.endswith(".dcm") or is_dicom_file(path):
        _check_dicom_series(path.parent, [path], single=True)


def _advice(path: Path) -> str:
    return f"copy {path.name} again from its source, or remove it from the datalist / input folder"


def _check_nifti(path: Path) -> None:
    import nibabel as nib

    try:
        proxy = nib.load(str(path)).dataobj  # the voxels' place in the file, read from the header only
        offset, shape, dtype = int(proxy.offset), tuple(int(n) for n in proxy.shape), proxy.dtype
    except Exception as error:
        raise ValueError(
            f"image file {path} is not a readable NIfTI file ({type(error).__name__}: {_first_line(error)}); "
            f"{_advice(path)}."
        ) from error
    expected = offset + math.prod(shape) * dtype.itemsize
    if path.name.lower().endswith(".gz"):
        if _gzip_recorded_size(path) == expected % 2**32:
            return  # the usual, single-member file: its recorded size is that of header and voxels
        try:
            actual, complete = _gunzip_size(path)
        except (zlib.error, OSError) as error:
            raise ValueError(
                f"image file {path} is corrupt: its gzip stream cannot be decompressed ({_first_line(error)}); "
                f"{_advice(path)}."
            ) from error
        if not complete:
            raise ValueError(
                f"image file {path} is truncated: its gzip stream ends after {actual} of the {expected} bytes that "
                f"its header declares (header and voxels {shape} of {dtype}); {_advice(path)}."
            )
    else:
        actual = path.stat().st_size
    if actual < expected:
        raise ValueError(
            f"image file {path} is truncated: it holds {actual} bytes but its header declares {expected} (voxels "
            f"{shape} of {dtype} from byte {offset}); {_advice(path)}."
        )


def _gzip_recorded_size(path: Path) -> int | None:
    """The uncompressed size modulo 2^32 that a gzip file records in its last 4 bytes (of its last member)."""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < 18:
            return None
        f.seek(-4, os.SEEK_END)
        return int.from_bytes(f.read(4), "little")


def _gunzip_size(path: Path) -> tuple[int, bool]:
    """The decompressed size of a gzip file (every member) and whether its stream ends properly."""
    total = 0
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    started = False
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            while chunk:
                started = True
                total += len(decompressor.decompress(chunk))
                if decompressor.eof:
                    chunk = decompressor.unused_data
                    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
                    started = False
                else:
                    chunk = b""
    return total, not started


def _check_picture(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            kind = image.format
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(
            f"image file {path} is not an image that can be read ({type(error).__name__}: {_first_line(error)}); "
            f"{_advice(path)}."
        ) from error
    end = _PNG_END if kind == "PNG" else _JPEG_END if kind == "JPEG" else None
    if end is None or _ends_with(path, end):
        return
    try:  # no end marker: a truncated file, or data after the marker; only decoding tells
        with Image.open(path) as image:
            image.load()
    except Exception as error:
        raise ValueError(
            f"image file {path} is truncated or corrupt: its {kind} data cannot be decoded "
            f"({type(error).__name__}: {_first_line(error)}); {_advice(path)}."
        ) from error


def _ends_with(path: Path, marker: bytes) -> bool:
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        if f.tell() < len(marker):
            return False
        f.seek(-len(marker), os.SEEK_END)
        return f.read(len(marker)) == marker


def _check_dicom_series(folder: Path, files: Sequence[Path], single: bool = False) -> None:
    import pydicom

    where = f"DICOM file {files[0]}" if single else f"DICOM series {folder}"
    positions: dict[str, list[tuple[float, Path]]] = {}
    for path in files:
        try:
            dataset = pydicom.dcmread(path, defer_size=1024)
        except Exception as error:
            raise ValueError(
                f"{where}: {path.name} cannot be read as DICOM ({type(error).__name__}: {_first_line(error)}); "
                "copy the series again from its source."
            ) from error
        if str(getattr(getattr(dataset, "file_meta", None), "MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
            continue  # a DICOMDIR index, not an image
        pixels = _pixel_element(dataset)
        if pixels is None:
            raise ValueError(
                f"{where}: {path.name} is truncated or is not an image: it holds no pixel data; copy the series "
                "again from its source, or remove files that are not images of the series."
            )
        size = path.stat().st_size
        tell, length = getattr(pixels, "value_tell", None), getattr(pixels, "length", None)
        if tell is not None and length not in (None, _UNDEFINED_LENGTH) and tell + length > size:
            raise ValueError(
                f"{where}: {path.name} is truncated: its pixel data needs {length} bytes from byte {tell} but the "
                f"file ends at byte {size}; copy the series again from its source."
            )
        position = _slice_position(dataset)
        if position is not None:
            positions.setdefault(str(dataset.get("SeriesInstanceUID", "")), []).append((position, path))
    if not single:
        for series in positions.values():
            _check_slice_gaps(folder, series)


def _pixel_element(dataset):
    """The Pixel Data element of ``dataset`` as read from the file, its value left unread when deferred (so that
    ``value_tell`` and ``length`` say where it lies), or ``None``."""
    try:
        return dataset.get_item(_PIXEL_DATA, keep_deferred=True)
    except TypeError:  # pydicom < 3 (MONAI Label pins 2.4.4) has no keep_deferred: the raw element, unread
        return dataset._dict.get(_PIXEL_DATA)


def _slice_position(dataset) -> float | None:
    """The slice's position along the normal of its plane (mm), from ImagePositionPatient/ImageOrientationPatient."""
    try:
        position = [float(v) for v in dataset.ImagePositionPatient]
        orientation = [float(v) for v in dataset.ImageOrientationPatient]
    except (AttributeError, TypeError, ValueError):
        return None
    if len(position) != 3 or len(orientation) != 6:
        return None
    row, column = orientation[:3], orientation[3:]
    normal = (
        row[1] * column[2] - row[2] * column[1],
        row[2] * column[0] - row[0] * column[2],
        row[0] * column[1] - row[1] * column[0],
    )
    return sum(p * n for p, n in zip(position, normal))


def _check_slice_gaps(folder: Path, slices: list[tuple[float, Path]]) -> None:
    if len(slices) < 3:
        return
    slices = sorted(slices, key=lambda s: s[0])
    steps = [b[0] - a[0] for a, b in zip(slices, slices[1:])]
    positive = sorted(s for s in steps if s > 1e-3)
    if not positive:
        return
    usual = positive[len(positive) // 2]
    for (low, low_file), (high, high_file), step in zip(slices, slices[1:], steps):
        if step > _GAP_TOLERANCE * usual:
            missing = max(1, round(step / usual) - 1)
            raise ValueError(
                f"DICOM series {folder} has missing slices: {low_file.name} (at {low:.2f} mm) and {high_file.name} "
                f"(at {high:.2f} mm) are {step:.2f} mm apart where the other slices are {usual:.2f} mm apart, so "
                f"about {missing} slice file(s) between them are missing; copy the complete series again from its "
                "source."
            )


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"
