from __future__ import annotations

import medkd_ext.data
import medkd_ext.data.demo


def test_demo_names_importable_from_medkd_ext_data():
    for name in medkd_ext.data._DEMO_NAMES:
        assert getattr(medkd_ext.data, name) is getattr(medkd_ext.data.demo, name)
        assert name in dir(medkd_ext.data) and name in medkd_ext.data.__all__


def test_public_names_of_the_package():
    assert set(medkd_ext.data.demo.__all__) == {
        "CLASSIFICATION_CLASS_NAMES",
        "CLASSIFICATION_SITES",
        "DEMO_MANIFEST_NAME",
        "PRETRAINING_CLASS_NAMES",
        "SEGMENTATION_DOMAINS",
        "default_demo_root",
        "ensure_classification_demo",
        "ensure_pretraining_demo",
        "ensure_segmentation_demo",
        "main",
        "make_classification_demo",
        "make_pretraining_demo",
        "make_segmentation_demo",
        "segmentation_demo_dir",
    }
    for name in medkd_ext.data.demo.__all__:
        assert hasattr(medkd_ext.data.demo, name)
    assert medkd_ext.data.demo.DEMO_MANIFEST_NAME == "medkd_demo_manifest.json"
    assert medkd_ext.data.demo.SEGMENTATION_DOMAINS == ("target", "source_1", "source_2")
