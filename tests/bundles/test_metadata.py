"""Every bundle's metadata.json: the schema, MONAI's current key names, and one set of versions for the repository."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from tests.bundles.bundle_checks import REPO, SCHEMA, check_metadata

BUNDLES = sorted(p.parent.parent for p in (REPO / "bundles").glob("*/configs/metadata.json"))
VERSION_KEYS = ("monai_version", "pytorch_version", "numpy_version")


def _metadata(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text())


def test_the_three_bundles_are_found():
    assert [b.name for b in BUNDLES] == ["attention_transfer_densenet", "joint_teacher_seg", "roskd_classification"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda b: b.name)
def test_metadata_verifies_and_uses_the_current_package_key(bundle):
    check_metadata(bundle)
    meta = _metadata(bundle)
    # MONAI renamed optional_packages_version and warns on the old name at every run
    assert "optional_packages_version" not in meta and "medkd-ext" in meta["required_packages_version"]


def test_schema_needs_a_package_list_under_either_name():
    schema = json.loads(SCHEMA.read_text())
    meta = _metadata(BUNDLES[0])
    packages = meta.pop("required_packages_version")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(meta, schema)
    jsonschema.validate({**meta, "optional_packages_version": packages}, schema)


def test_bundles_agree_on_versions():
    metas = [_metadata(b) for b in BUNDLES]
    for key in VERSION_KEYS:
        assert len({m[key] for m in metas}) == 1, {b.name: m[key] for b, m in zip(BUNDLES, metas)}
    shared = set.intersection(*(set(m["required_packages_version"]) for m in metas))
    for package in shared:
        assert len({m["required_packages_version"][package] for m in metas}) == 1, package
