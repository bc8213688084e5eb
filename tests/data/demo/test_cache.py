from __future__ import annotations

import gzip
import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medkd_ext.data.demo import cache
from medkd_ext.data.demo.cache import (
    DEMO_MANIFEST_NAME,
    atomic_write,
    default_demo_root,
    generate_or_reuse,
    json_bytes,
    nifti_bytes,
    png_bytes,
)
from tests.data.demo._files import files, mtimes

FILES = {"a.txt": b"alpha", "sub/b.bin": b"\x00\x01"}


class Build:
    """A ``build`` callable that yields fixed files and counts its calls."""

    def __init__(self, content: dict[str, bytes] = FILES):
        self.content, self.calls = content, 0

    def __call__(self):
        self.calls += 1
        yield from self.content.items()


def test_default_demo_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDKD_DEMO_DIR", str(tmp_path / "cache"))
    assert default_demo_root() == tmp_path / "cache"
    monkeypatch.delenv("MEDKD_DEMO_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_demo_root() == tmp_path / "xdg" / "medkd" / "demo"


def test_atomic_write_leaves_no_temporary_file(tmp_path):
    atomic_write(tmp_path / "a" / "b.txt", b"one")
    atomic_write(tmp_path / "a" / "b.txt", b"two")
    assert files(tmp_path) == {"a/b.txt": b"two"}


def test_manifest_format(tmp_path):
    assert generate_or_reuse(tmp_path, "toy", {"size": (2, 3), "seed": 0}, Build()) is True
    manifest = json.loads((tmp_path / DEMO_MANIFEST_NAME).read_text())
    assert manifest == {
        "generator": "medkd_ext.data.demo",
        "version": cache._GENERATOR_VERSION,
        "task": "toy",
        "params": {"size": [2, 3], "seed": 0},
        "files": {
            "a.txt": {"size": 5, "sha256": hashlib.sha256(b"alpha").hexdigest()},
            "sub/b.bin": {"size": 2, "sha256": hashlib.sha256(b"\x00\x01").hexdigest()},
        },
    }
    assert (tmp_path / DEMO_MANIFEST_NAME).read_bytes() == json_bytes(manifest)


def test_reuse_and_regeneration(tmp_path):
    build = Build()
    generate_or_reuse(tmp_path, "toy", {"size": (2, 3)}, build)
    before = mtimes(tmp_path)
    assert generate_or_reuse(tmp_path, "toy", {"size": [2, 3]}, build) is False  # same parameters once in JSON
    assert build.calls == 1 and mtimes(tmp_path) == before

    (tmp_path / "a.txt").write_bytes(b"alphA")  # same size, other content
    assert generate_or_reuse(tmp_path, "toy", {"size": (2, 3)}, build) is True
    (tmp_path / "sub/b.bin").unlink()
    assert generate_or_reuse(tmp_path, "toy", {"size": (2, 3)}, build) is True
    (tmp_path / DEMO_MANIFEST_NAME).write_text("{not json")
    assert generate_or_reuse(tmp_path, "toy", {"size": (2, 3)}, build) is True
    assert generate_or_reuse(tmp_path, "other task", {"size": (2, 3)}, build) is True
    assert generate_or_reuse(tmp_path, "other task", {"size": (3, 3)}, build) is True
    assert build.calls == 6
    assert files(tmp_path) == {**FILES, DEMO_MANIFEST_NAME: (tmp_path / DEMO_MANIFEST_NAME).read_bytes()}


def test_other_generator_version_regenerates(tmp_path, monkeypatch):
    build = Build()
    generate_or_reuse(tmp_path, "toy", {}, build)
    monkeypatch.setattr(cache, "_GENERATOR_VERSION", cache._GENERATOR_VERSION + 1)
    assert generate_or_reuse(tmp_path, "toy", {}, build) is True
    assert json.loads((tmp_path / DEMO_MANIFEST_NAME).read_text())["version"] == cache._GENERATOR_VERSION


def test_regeneration_deletes_only_stale_listed_files_inside_the_folder(tmp_path):
    out = tmp_path / "out"
    generate_or_reuse(out, "toy", {"n": 2}, Build())
    (out / "user.txt").write_bytes(b"mine")
    (tmp_path / "outside.txt").write_bytes(b"keep")
    manifest = json.loads((out / DEMO_MANIFEST_NAME).read_text())
    manifest["files"]["../outside.txt"] = {"size": 4, "sha256": "x"}  # a manifest must not reach outside
    (out / DEMO_MANIFEST_NAME).write_text(json.dumps(manifest))
    generate_or_reuse(out, "toy", {"n": 1}, Build({"a.txt": b"alpha"}))
    assert set(files(out)) == {"a.txt", "user.txt", DEMO_MANIFEST_NAME}
    assert (tmp_path / "outside.txt").read_bytes() == b"keep"


def test_nifti_bytes_deterministic_and_centred(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    data = nifti_bytes(array, (0.5, 1.0, 2.0))
    assert data == nifti_bytes(array, (0.5, 1.0, 2.0))
    assert data[4:8] == b"\x00\x00\x00\x00"  # gzip header mtime
    (tmp_path / "x.nii.gz").write_bytes(data)
    img = nib.load(tmp_path / "x.nii.gz")
    np.testing.assert_array_equal(np.asarray(img.dataobj), array)
    assert img.get_data_dtype() == np.int16
    assert img.header.get_zooms() == pytest.approx((0.5, 1.0, 2.0))
    assert img.header.get_xyzt_units()[0] == "mm"
    np.testing.assert_allclose(img.affine @ [1.5, 2.0, 2.5, 1.0], [0.0, 0.0, 0.0, 1.0])  # centre at the origin
    assert gzip.decompress(data)[344:348] == b"n+1\x00"


def test_png_bytes_grayscale_roundtrip(tmp_path):
    array = np.arange(12 * 7).reshape(12, 7) % 256
    data = png_bytes(array)
    assert data == png_bytes(array)
    (tmp_path / "x.png").write_bytes(data)
    image = Image.open(tmp_path / "x.png")
    assert image.mode == "L" and image.size == (7, 12)
    np.testing.assert_array_equal(np.asarray(image), array)


def test_json_bytes():
    assert json_bytes({"a": [1, 2]}) == b'{\n  "a": [\n    1,\n    2\n  ]\n}\n'
