"""DICOM-SEG output: a predicted label map written as a DICOM Segmentation object that references the DICOM series it
was predicted from, so that a viewer (3D Slicer, OHIF, a PACS) shows it over that series.

The mask comes from the bundle in the input's geometry (``Invertd``): a label map on a voxel grid with its affine in
MONAI's RAS world coordinates. Each frame of the segmentation is that mask sampled (nearest voxel) at the pixels of one
source slice, found from the slice's DICOM geometry (Image Position and Orientation (Patient), Pixel Spacing, in LPS),
so that frame ``i`` corresponds pixel for pixel to source instance ``i`` whatever order or orientation the reader gave
the volume, oblique series included. Written by ``highdicom`` (the ``dicom`` extra: ``pip install 'medkd-ext[dicom]'``).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.transforms import MapTransform

from medkd_ext.runtime import dicom_files, is_dicom_file

__all__ = ["OUTPUT_FORMATS", "SaveDicomSegd", "check_output_format", "mask_on_source_slices", "write_dicom_seg"]

OUTPUT_FORMATS = ("nifti", "dicom_seg")
"""What segmentation inference writes (``output_format``): ``nifti`` (the mask as ``<name>_seg.nii.gz``) and
``dicom_seg`` (a DICOM-SEG ``<name>_seg.dcm`` for each DICOM series); one of them, or a list of both."""

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
_SERIES_TAG = "0020|000e"  # SeriesInstanceUID in the metadata ITK gives MONAI


def check_output_format(output_format: str | Sequence[str], images: Sequence[str | os.PathLike] = ()) -> list[str]:
    """``output_format`` as a list of :data:`OUTPUT_FORMATS` (a name or a list of names), checked before inference.

    Args:
        output_format: ``"nifti"``, ``"dicom_seg"`` or a list of them.
        images: the inputs (files, or folders of DICOM series); with ``dicom_seg`` alone every one must be DICOM,
            since nothing would be written for the others.

    Raises:
        ValueError: an unknown name, or none (the id and the names it takes said); ``dicom_seg`` without highdicom
            installed (the command that installs it said); ``dicom_seg`` alone for an input that is not DICOM (named).
    """
    formats = [output_format] if isinstance(output_format, str) else list(output_format or [])
    bad = [f for f in formats if f not in OUTPUT_FORMATS]
    if bad or not formats:
        raise ValueError(
            f"output_format {output_format!r} is not one of {list(OUTPUT_FORMATS)} (or a list of them): `nifti` writes "
            "the mask as NIfTI, `dicom_seg` a DICOM-SEG for each DICOM series."
        )
    if "dicom_seg" in formats:
        try:
            import highdicom  # noqa: F401
        except ImportError as error:
            raise ValueError(
                "output_format dicom_seg needs highdicom, which is not installed: pip install 'medkd-ext[dicom]' "
                "(or pip install highdicom)."
            ) from error
        if "nifti" not in formats:
            other = [str(p) for p in images if not _is_dicom_input(Path(p))]
            if other:
                raise ValueError(
                    f"output_format dicom_seg writes a DICOM-SEG for DICOM series only, and {other[0]}"
                    f"{f' (and {len(other) - 1} more)' if len(other) > 1 else ''} is not DICOM; give "
                    '--output_format \'["nifti", "dicom_seg"]\' to write NIfTI masks for the other images.'
                )
    return formats


def _is_dicom_input(path: Path) -> bool:
    return bool(dicom_files(path)) if path.is_dir() else is_dicom_file(path)


def _read_series(folder: Path, series_uid: str | None) -> list[Any]:
    """The instances of the series ``series_uid`` (or the folder's only series) in ``folder``, with pixel data."""
    import pydicom

    datasets = [pydicom.dcmread(path) for path in dicom_files(folder)]
    datasets = [d for d in datasets if "PixelData" in d]
    by_series: dict[str, list[Any]] = {}
    for dataset in datasets:
        by_series.setdefault(str(dataset.SeriesInstanceUID), []).append(dataset)
    if not by_series:
        raise ValueError(f"DICOM-SEG: {folder} holds no DICOM image; a DICOM-SEG is written for a DICOM series only.")
    if series_uid is not None and series_uid.strip().rstrip("\x00") in by_series:
        return by_series[series_uid.strip().rstrip("\x00")]
    if len(by_series) > 1:
        raise ValueError(
            f"DICOM-SEG: {folder} holds {len(by_series)} series ({', '.join(sorted(by_series))}) and the image's "
            "metadata does not say which one was read; give a folder that holds one series."
        )
    return next(iter(by_series.values()))


def _slice_grid(dataset: Any) -> np.ndarray:
    """RAS world coordinates (rows, columns, 3) of the pixel centres of a single-frame DICOM image."""
    try:
        origin = np.asarray(dataset.ImagePositionPatient, dtype=float)
        cosines = np.asarray(dataset.ImageOrientationPatient, dtype=float)
        row_spacing, column_spacing = (float(v) for v in dataset.PixelSpacing)
    except AttributeError as error:
        raise ValueError(
            f"DICOM-SEG: instance {dataset.SOPInstanceUID} has no {str(error).split()[-1]}; a DICOM-SEG needs the "
            "image plane (Image Position/Orientation (Patient), Pixel Spacing) of every slice."
        ) from error
    along_row, along_column = cosines[:3], cosines[3:]  # the direction of increasing column, of increasing row
    rows = np.arange(int(dataset.Rows), dtype=float)[:, None, None]
    columns = np.arange(int(dataset.Columns), dtype=float)[None, :, None]
    lps = origin + columns * column_spacing * along_row + rows * row_spacing * along_column
    return lps @ _LPS_TO_RAS.T


def mask_on_source_slices(mask: np.ndarray, affine: np.ndarray, sources: Sequence[Any]) -> np.ndarray:
    """``mask`` (a label map, spatial axes only, voxel ``i`` at RAS ``affine @ i``) sampled at the nearest voxel to
    each pixel of each single-frame DICOM image of ``sources``: ``(len(sources), rows, columns)``, 0 outside the mask.
    """
    mask = np.asarray(mask)
    inverse = np.linalg.inv(np.asarray(affine, dtype=float))
    frames = []
    for dataset in sources:
        world = _slice_grid(dataset)
        index = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(mask.shape)), axis=-1)
        frame = np.zeros(inside.shape, dtype=mask.dtype)
        i, j, k = (index[..., axis][inside] for axis in range(3))
        frame[inside] = mask[i, j, k]
        frames.append(frame)
    return np.stack(frames)


def write_dicom_seg(
    mask: np.ndarray,
    affine: np.ndarray,
    source: str | os.PathLike,
    out_file: str | os.PathLike,
    segment_labels: Sequence[str],
    series_uid: str | None = None,
    algorithm: str = "medkd",
    version: str = "0.1.0",
) -> Path:
    """Write the label map ``mask`` (values 0 for background, ``1..len(segment_labels)``) predicted for the DICOM
    series in the folder ``source`` as a BINARY DICOM-SEG ``out_file``: one segment per label (automatic, by
    ``algorithm``), a frame per source slice that holds the segment (empty frames omitted, as highdicom does), every
    frame referencing its source instance, the series' patient and study kept.

    Args:
        mask: the label map on the voxel grid of ``affine`` (spatial axes; a leading channel of 1 is dropped).
        affine: 4x4, voxel to RAS world (MONAI's convention), e.g. the ``affine`` of the image MONAI loaded.
        source: the folder of the series (or one DICOM file of it).
        out_file: the ``.dcm`` to write (its folder is made).
        segment_labels: the name of each label value from 1 (e.g. the bundle's class names without background).
        series_uid: SeriesInstanceUID of the series the mask was predicted from, when the folder holds several.
        algorithm, version: the algorithm identification written into each segment.

    Raises:
        ValueError: ``source`` holds no DICOM image or several series (``series_uid`` not given), a slice lacks its
            image plane, ``mask`` is not 3D or holds values above ``len(segment_labels)``.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    source = Path(source)
    folder = source if source.is_dir() else source.parent
    mask = np.asarray(mask)
    if mask.ndim == 4 and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim != 3:
        raise ValueError(f"DICOM-SEG: the mask must be a 3D label map, got shape {mask.shape}.")
    mask = np.rint(mask).astype(np.uint8)
    if mask.max(initial=0) > len(segment_labels):
        raise ValueError(
            f"DICOM-SEG: the mask holds label {int(mask.max())} but only {len(segment_labels)} segment label(s) "
            f"{list(segment_labels)} are given."
        )
    sources = _read_series(folder, series_uid)
    if any("FrameOfReferenceUID" not in d for d in sources):
        raise ValueError(
            f"DICOM-SEG: the series in {folder} has no Frame of Reference UID (0020,0052), which a DICOM-SEG must "
            "share with its source images; write the mask as NIfTI (output_format nifti) for this series."
        )
    normal = np.cross(*np.reshape(np.asarray(sources[0].ImageOrientationPatient, dtype=float), (2, 3)))
    sources = sorted(sources, key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))))
    frames = mask_on_source_slices(mask, affine, sources)
    positions = [float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=float))) for d in sources]
    if not getattr(sources[0], "SliceThickness", None):  # type 2 (may be absent or empty); highdicom reads it
        thickness = float(np.median(np.diff(positions))) if len(positions) > 1 else 1.0
        for dataset in sources:  # the copies in memory only
            dataset.SliceThickness = thickness
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm, version=version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        )
        for number, label in enumerate(segment_labels, start=1)
    ]
    segmentation = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(sources[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medkd",
        manufacturer_model_name=algorithm,
        software_versions=version,
        device_serial_number="0",
        series_description=f"{algorithm} segmentation"[:64],
    )
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    segmentation.save_as(out_file)
    return out_file


class SaveDicomSegd(MapTransform):
    """Save the label map under ``keys`` as a DICOM-SEG ``<output_dir>/<name>_<output_postfix>.dcm`` when the image
    was read from a DICOM series (the image's ``filename_or_obj`` a folder or a DICOM file); other inputs pass by
    (their mask is written as NIfTI). The mask must be in the input's geometry (after ``Invertd``), a MetaTensor
    whose ``affine`` is the image's.

    Args:
        keys: the label maps to save (``"pred"``).
        output_dir: the folder of the DICOM-SEG files.
        segment_labels: the name of each label value from 1.
        output_postfix: appended to the series' folder name.
        algorithm, version: written into each segment's algorithm identification.
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: str | os.PathLike,
        segment_labels: Sequence[str],
        output_postfix: str = "seg",
        algorithm: str = "medkd",
        version: str = "0.1.0",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_dir = Path(output_dir)
        self.segment_labels = list(segment_labels)
        self.output_postfix = output_postfix
        self.algorithm, self.version = algorithm, version

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            meta = getattr(d[key], "meta", {}) or {}
            source = meta.get("filename_or_obj")
            if not source:
                continue
            source = Path(str(source))
            if not _is_dicom_input(source):
                continue
            name = (source if source.is_dir() else source.parent).name
            series = meta.get(_SERIES_TAG)
            write_dicom_seg(
                np.asarray(d[key].detach().cpu() if hasattr(d[key], "detach") else d[key]),
                np.asarray(d[key].affine if hasattr(d[key], "affine") else meta["affine"]),
                source,
                self.output_dir / f"{name}_{self.output_postfix}.dcm",
                self.segment_labels,
                series_uid=None if series is None else str(series),
                algorithm=self.algorithm,
                version=self.version,
            )
        return d

