"""medkd_ext.data.imagefiles: image files and DICOM series recognised, broken ones refused with their name."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medkd_ext.data import check_image_file, dicom_files, is_dicom_file, is_image_file
from tests.bundles.bundle_checks import write_dicom_series


def _nifti(path: Path, shape=(20, 20, 10)) -> Path:
    data = np.random.default_rng(0).integers(-1000, 1000, shape).astype(np.int16)  # compresses little
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _cut(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


@pytest.mark.parametrize("name", ["a.nii", "a.nii.gz"])
def test_whole_nifti_passes_and_a_truncated_one_is_named(tmp_path, name):
    path = _nifti(tmp_path / name)
    check_image_file(path)
    _cut(path, len(path.read_bytes()) // 2)
    with pytest.raises(ValueError, match=rf"image file {path} is truncated: .*8352.*\(20, 20, 10\) of int16"):
        check_image_file(path)


def test_gzip_with_several_members_is_whole_and_a_corrupt_one_is_named(tmp_path):
    path = _nifti(tmp_path / "a.nii")
    raw = path.read_bytes()
    several = tmp_path / "several.nii.gz"  # e.g. written by bgzip: the size at the end is that of the last member
    several.write_bytes(gzip.compress(raw[:300]) + gzip.compress(raw[300:]))
    check_image_file(several)
    corrupt = tmp_path / "corrupt.nii.gz"
    compressed = bytearray(gzip.compress(raw))
    corrupt.write_bytes(bytes(compressed[:40]) + bytes(200) + bytes(compressed[240:]))
    with pytest.raises(ValueError, match=rf"{corrupt} is (corrupt|not a readable NIfTI)"):
        check_image_file(corrupt)
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=rf"image file {garbage} is not a readable NIfTI file"):
        check_image_file(garbage)


@pytest.mark.parametrize("suffix, kind", [(".png", "PNG"), (".jpg", "JPEG")])
def test_pictures_whole_with_trailing_bytes_and_truncated(tmp_path, suffix, kind):
    path = tmp_path / f"x{suffix}"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    check_image_file(path)
    padded = tmp_path / f"padded{suffix}"
    padded.write_bytes(path.read_bytes() + b"\0" * 16)  # data after the end marker: decoded, and fine
    check_image_file(padded)
    _cut(path, len(path.read_bytes()) // 2)
    with pytest.raises(ValueError, match=rf"image file {path} is truncated or corrupt: its {kind} data"):
        check_image_file(path)
    text = tmp_path / f"notes{suffix}"
    text.write_text("hello")
    with pytest.raises(ValueError, match=rf"image file {text} is not an image that can be read"):
        check_image_file(text)


def test_dicom_series_with_or_without_suffix_is_found_and_whole(tmp_path):
    plain = write_dicom_series(tmp_path / "plain", suffix="")
    named = write_dicom_series(tmp_path / "named")
    (tmp_path / "plain" / "README").write_text("exported from the PACS")  # not DICOM: ignored
    assert is_dicom_file(plain[0]) and is_dicom_file(named[0]) and not is_dicom_file(tmp_path / "plain" / "README")
    assert dicom_files(tmp_path / "plain") == plain and dicom_files(tmp_path) == []
    assert is_image_file(tmp_path / "plain") and not is_image_file(tmp_path) and is_image_file(plain[0])
    check_image_file(tmp_path / "plain")
    check_image_file(tmp_path / "named")
    check_image_file(named[3])  # a single DICOM file


def test_dicom_slice_cut_short_or_missing_is_named(tmp_path):
    files = write_dicom_series(tmp_path / "cut", suffix="")
    _cut(files[4], len(files[4].read_bytes()) - 100)
    with pytest.raises(ValueError, match=rf"DICOM series {tmp_path / 'cut'}: IM0004 is truncated: its pixel data"):
        check_image_file(tmp_path / "cut")
    files = write_dicom_series(tmp_path / "short", suffix="")
    _cut(files[2], 400)  # cut inside the header: no pixel data at all
    with pytest.raises(ValueError, match="IM0002 is truncated or is not an image: it holds no pixel data"):
        check_image_file(tmp_path / "short")
    files = write_dicom_series(tmp_path / "gap", suffix="")
    files[6].unlink()
    files[7].unlink()
    expected = r"has missing slices: IM0005 \(at 42.50 mm\) and IM0008 \(at 50.00 mm\) are 7.50 mm apart .* about 2"
    with pytest.raises(ValueError, match=expected):
        check_image_file(tmp_path / "gap")
    single = write_dicom_series(tmp_path / "single")[0]
    _cut(single, len(single.read_bytes()) - 10)
    with pytest.raises(ValueError, match=rf"DICOM file {single}: IM0000.dcm is truncated"):
        check_image_file(single)


def test_other_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_image_file(tmp_path / "none.nii.gz")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=r"image folder .*empty holds no DICOM file \(it holds \['notes.txt'\]\)"):
        check_image_file(tmp_path / "empty")
    other = tmp_path / "volume.mha"
    other.write_bytes(b"not checked")  # formats without a cheap check are left to the loader
    check_image_file(other)
    assert is_image_file(other) and not is_image_file(tmp_path / "empty" / "notes.txt")
