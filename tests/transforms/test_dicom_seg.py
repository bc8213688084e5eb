"""DICOM-SEG output: a mask in the geometry MONAI loaded a DICOM series in is written as a DICOM-SEG that pydicom and
highdicom read back, references the source series and its instances, and whose frames equal the mask on each source
slice, axial and oblique; bad requests stop with the id or file named."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage
from pydicom.dataset import Dataset

from medkd_ext.transforms import SaveDicomSegd, check_output_format, write_dicom_seg
from medkd_ext.transforms.dicom_seg import mask_on_source_slices
from tests.bundles.bundle_checks import write_dicom_series

hd = pytest.importorskip("highdicom")


def _series(tmp_path, suffix=""):
    files = write_dicom_series(tmp_path / "series", suffix=suffix)
    image = LoadImage(image_only=True, ensure_channel_first=True)(str(tmp_path / "series"))
    return files, image


def test_dicom_seg_references_the_series_and_its_frames_equal_the_mask(tmp_path):
    files, image = _series(tmp_path)
    mask = np.zeros(image.shape[1:], np.uint8)
    mask[3:10, 4:12, 2:6] = 1
    mask[12:15, 1:3, 7:9] = 2
    out = write_dicom_seg(mask, image.affine, tmp_path / "series", tmp_path / "out" / "s_seg.dcm", ["tumour", "cyst"])

    plain = pydicom.dcmread(out)
    assert plain.Modality == "SEG" and plain.SegmentationType == "BINARY"
    sources = [pydicom.dcmread(f) for f in files]
    assert plain.ReferencedSeriesSequence[0].SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert plain.StudyInstanceUID == sources[0].StudyInstanceUID
    assert plain.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert [s.SegmentLabel for s in plain.SegmentSequence] == ["tumour", "cyst"]
    referenced = {i.ReferencedSOPInstanceUID for i in plain.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {s.SOPInstanceUID for s in sources}

    seg = hd.seg.segread(out)
    frames = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[s.SOPInstanceUID for s in sources], combine_segments=True
    )
    # MONAI (ITK) loads a series with axes (column, row, slice): frame k, pixel (r, c) is voxel (c, r, k)
    assert frames.shape == (len(sources), sources[0].Rows, sources[0].Columns)
    np.testing.assert_array_equal(frames.transpose(2, 1, 0), mask)
    pixels = np.stack([s.pixel_array for s in sources]).transpose(2, 1, 0)
    np.testing.assert_array_equal(pixels, np.asarray(image[0]))  # the same voxel correspondence as the image's


def _oblique_slice(position, cosines, spacing, rows=6, columns=7) -> Dataset:
    dataset = Dataset()
    dataset.ImagePositionPatient = list(position)
    dataset.ImageOrientationPatient = list(cosines)
    dataset.PixelSpacing = list(spacing)
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SOPInstanceUID = pydicom.uid.generate_uid()
    return dataset


def test_oblique_slices_sample_the_mask_at_their_own_pixels():
    angle = np.deg2rad(25)
    along_row = np.array([np.cos(angle), np.sin(angle), 0.0])
    along_column = np.array([0.0, np.cos(0.3), -np.sin(0.3)])
    normal = np.cross(along_row, along_column)
    spacing = (0.7, 1.1)  # row spacing, column spacing
    origin = np.array([-20.0, 13.0, 40.0])
    slices = [_oblique_slice(origin + 2.0 * k * normal, [*along_row, *along_column], spacing) for k in range(5)]
    # the voxel grid of these slices, as MONAI gives it: voxel (c, r, k), RAS world
    lps = np.column_stack([along_row * spacing[1], along_column * spacing[0], normal * 2.0, origin])
    affine = np.vstack([np.diag([-1.0, -1.0, 1.0]) @ lps, [0, 0, 0, 1]])
    mask = np.random.default_rng(0).integers(0, 3, size=(7, 6, 5)).astype(np.uint8)
    frames = mask_on_source_slices(mask, affine, slices)
    np.testing.assert_array_equal(frames.transpose(2, 1, 0), mask)
    # a slice beyond the volume is empty
    outside = _oblique_slice(origin + 40.0 * normal, [*along_row, *along_column], spacing)
    assert not mask_on_source_slices(mask, affine, [outside]).any()


def test_save_dicom_segd_writes_for_dicom_and_passes_other_images(tmp_path):
    _, image = _series(tmp_path)
    pred = image.clone()
    pred[:] = 0
    pred[0, 2:5, 2:5, 2:5] = 1
    out = tmp_path / "out"
    SaveDicomSegd("pred", out, ["lesion"])({"pred": pred})
    assert [p.name for p in out.iterdir()] == ["series_seg.dcm"]
    nifti = pred.clone()
    nifti.meta["filename_or_obj"] = str(tmp_path / "case.nii.gz")
    SaveDicomSegd("pred", tmp_path / "out2", ["lesion"])({"pred": nifti})
    assert not (tmp_path / "out2").exists()


def test_bad_requests_name_the_id_or_file(tmp_path):
    _, image = _series(tmp_path)
    assert check_output_format("nifti") == ["nifti"]
    assert check_output_format(["nifti", "dicom_seg"], [tmp_path / "case.nii.gz"]) == ["nifti", "dicom_seg"]
    assert check_output_format("dicom_seg", [tmp_path / "series"]) == ["dicom_seg"]
    with pytest.raises(ValueError, match="output_format 'dicom' is not one of"):
        check_output_format("dicom")
    with pytest.raises(ValueError, match=r"case.nii.gz is not DICOM.*nifti"):
        check_output_format("dicom_seg", [tmp_path / "series", tmp_path / "case.nii.gz"])
    mask = np.full(image.shape[1:], 3, np.uint8)
    with pytest.raises(ValueError, match="holds label 3 but only 1 segment label"):
        write_dicom_seg(mask, image.affine, tmp_path / "series", tmp_path / "x.dcm", ["lesion"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no DICOM image"):
        write_dicom_seg(mask, image.affine, tmp_path / "empty", tmp_path / "x.dcm", ["a", "b", "c"])
