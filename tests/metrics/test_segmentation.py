from __future__ import annotations

import csv
import math

import pytest
import torch
from monai.data import MetaTensor

from medkd_ext.metrics import SEGMENTATION_METRICS, SegmentationReport, segmentation_report


def _cube(shape, *slices) -> torch.Tensor:
    x = torch.zeros(1, 1, *shape)
    x[(0, 0, *slices)] = 1
    return x


def _row(report, case, cls=1):
    return next(r for r in report["rows"] if r["case"] == case and r["class"] == cls)


def test_overlap_metrics_match_formulas_3d():
    # |A| = 64, |B| = 96, |A n B| = 64
    pred = _cube((10, 10, 10), slice(2, 6), slice(2, 6), slice(2, 6))
    label = _cube((10, 10, 10), slice(2, 6), slice(2, 6), slice(2, 8))
    row = segmentation_report(pred, label, case_ids=["a"])["rows"][0]
    assert row["case"] == "a" and row["class"] == 1
    assert row["DSC"] == pytest.approx(2 * 64 / (64 + 96))
    assert row["IoU"] == pytest.approx(64 / 96)
    assert row["Recall"] == pytest.approx(64 / 96)
    assert row["Precision"] == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 3])
def test_hd95_of_slab_shifted_by_k_voxels_is_k(k):
    label = _cube((12, 8, 8), slice(3, 4), slice(1, 7), slice(1, 7))
    pred = _cube((12, 8, 8), slice(3 + k, 4 + k), slice(1, 7), slice(1, 7))
    row = segmentation_report(pred, label)["rows"][0]
    assert row["HD95"] == pytest.approx(k, abs=1e-5)
    # spacing along the shift scales it; spacing across it does not matter
    row_mm = segmentation_report(pred, label, spacing=(2.5, 0.5, 3.0))["rows"][0]
    assert row_mm["HD95"] == pytest.approx(2.5 * k, abs=1e-5)


def test_hd95_2d_line_and_per_case_spacing():
    label = torch.zeros(2, 1, 8, 9)
    label[:, 0, 1:7, 2] = 1
    pred = torch.zeros(2, 1, 8, 9)
    pred[:, 0, 1:7, 6] = 1  # shifted by 4 along the second axis
    rows = segmentation_report(pred, label, spacing=[(1.0, 1.0), (1.0, 0.5)])["rows"]
    assert [r["HD95"] for r in rows] == pytest.approx([4.0, 2.0], abs=1e-5)
    assert [r["case"] for r in rows] == ["case_0", "case_1"]


def test_index_and_one_hot_inputs_agree_multiclass():
    label = torch.zeros(1, 1, 6, 6, dtype=torch.long)
    label[0, 0, :3, :3] = 1
    label[0, 0, 3:, 3:] = 2
    pred = label.clone()
    pred[0, 0, 0, :] = 2  # row 0: 3 voxels of class 1 -> 2, 3 background -> 2
    one_hot_pred = torch.nn.functional.one_hot(pred[:, 0], 3).permute(0, 3, 1, 2).float()
    a = segmentation_report(pred, label, num_classes=3)["rows"]
    b = segmentation_report(one_hot_pred, label, num_classes=3)["rows"]
    assert [r["class"] for r in a] == [1, 2]
    for ra, rb in zip(a, b):
        for m in SEGMENTATION_METRICS:
            assert ra[m] == pytest.approx(rb[m])
    # class 1: |B| = 9, |A| = 6, overlap 6; class 2: |B| = 9, |A| = 15, overlap 9
    assert a[0]["DSC"] == pytest.approx(12 / 15) and a[0]["Precision"] == pytest.approx(1.0)
    assert a[1]["IoU"] == pytest.approx(9 / 15) and a[1]["Recall"] == pytest.approx(1.0)
    with_bg = segmentation_report(pred, label, num_classes=3, include_background=True)["rows"]
    assert [r["class"] for r in with_bg] == [0, 1, 2]


def test_empty_masks_give_nan_excluded_from_means_and_counted():
    shape = (8, 8, 8)
    good_p = _cube(shape, slice(2, 6), slice(2, 6), slice(2, 6))
    good_l = _cube(shape, slice(2, 6), slice(2, 6), slice(3, 7))  # DSC 0.75
    empty = torch.zeros(1, 1, *shape)
    report = SegmentationReport(num_classes=2)
    report.update(good_p, good_l, case_id="good")
    report.update(empty, good_l, case_id="missed")  # nothing predicted
    report.update(good_p, empty, case_id="false_alarm")  # nothing to find
    report.update(empty, empty, case_id="both_empty")
    rows = {r["case"]: r for r in report.rows()}
    missed, alarm, both = rows["missed"], rows["false_alarm"], rows["both_empty"]
    assert missed["DSC"] == 0 and missed["IoU"] == 0 and missed["Recall"] == 0
    assert math.isnan(missed["Precision"]) and math.isnan(missed["HD95"])
    assert alarm["Precision"] == 0
    assert all(math.isnan(alarm[m]) for m in ("IoU", "DSC", "Recall", "HD95"))
    assert all(math.isnan(both[m]) for m in SEGMENTATION_METRICS)

    cls1, pooled = report.means()
    assert cls1["class"] == 1 and pooled["class"] == "all"
    assert cls1["cases"] == 4
    assert cls1["DSC"] == pytest.approx((0.75 + 0.0) / 2)
    assert cls1["DSC_nan"] == 2
    assert cls1["Precision"] == pytest.approx((0.75 + 0.0) / 2)
    assert cls1["Precision_nan"] == 2
    assert cls1["HD95"] == pytest.approx(rows["good"]["HD95"])
    assert cls1["HD95_nan"] == 3
    assert pooled["DSC"] == pytest.approx(cls1["DSC"])


def test_means_pool_all_classes_like_monai_mean():
    label = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    label[0, 0, :2] = 1
    label[0, 0, 2:, :2] = 2
    pred = label.clone()
    pred[0, 0, 0, 0] = 0  # class 1 DSC = 14/15, class 2 DSC = 1
    report = SegmentationReport(num_classes=3)
    report.update(pred, label)
    report.update(label, label)
    means = {m["class"]: m for m in report.means()}
    assert means[1]["DSC"] == pytest.approx((14 / 15 + 1) / 2)
    assert means[2]["DSC"] == pytest.approx(1.0)
    assert means["all"]["DSC"] == pytest.approx((14 / 15 + 3) / 4)
    assert means["all"]["cases"] == 4


def test_case_ids_from_metatensor_filenames():
    label = MetaTensor(_cube((6, 6), slice(1, 4), slice(1, 4)).repeat(2, 1, 1, 1))
    label.meta["filename_or_obj"] = ["/data/a.nii.gz", "/data/b.nii.gz"]
    report = SegmentationReport()
    report.update(label.clone(), label)
    report.update(label.as_tensor(), label.as_tensor())
    assert [r["case"] for r in report.rows()] == ["/data/a.nii.gz", "/data/b.nii.gz", "case_2", "case_3"]


def test_csv_and_markdown_files(tmp_path):
    pred = _cube((8, 8), slice(2, 6), slice(2, 6))
    label = _cube((8, 8), slice(2, 6), slice(3, 7))
    report = SegmentationReport()
    report.update(pred, label, case_id="p1")
    report.update(torch.zeros_like(pred), label, case_id="p2")
    report.to_csv(tmp_path / "out" / "m.csv")
    with open(tmp_path / "out" / "m.csv") as f:
        lines = list(csv.DictReader(f))
    assert [line["case"] for line in lines] == ["p1", "p2", "mean", "nan_count", "mean", "nan_count"]
    assert float(lines[0]["DSC"]) == pytest.approx(0.75)
    assert lines[3]["Precision"] == "1" and lines[3]["DSC"] == "0"
    text = report.to_markdown(tmp_path / "m.md")
    assert (tmp_path / "m.md").read_text() == text
    assert "| p1 | 1 | 0.6000 | 0.7500 |" in text
    assert "(1 nan)" in text


@pytest.mark.parametrize(
    "pred, label, kwargs, match",
    [
        (torch.rand(1, 2, 4, 4), torch.zeros(1, 1, 4, 4), {}, "not binary"),
        (torch.zeros(1, 1, 4, 4), torch.full((1, 1, 4, 4), 2.0), {}, r"label values \[2.0\] outside"),
        (torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, 1, 4, 4), {}, "non-integer"),
        (torch.zeros(1, 3, 4, 4), torch.zeros(1, 1, 4, 4), {}, "3 channels"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), {}, "same batch and spatial shape"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), {"spacing": (1.0, 1.0, 1.0)}, "2 spatial dims"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), {"spacing": (1.0, -1.0)}, "positive"),
        (torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 4), {"case_ids": ["only_one"]}, "one id per case"),
        (torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), {"num_classes": 1}, "num_classes must be an int >= 2"),
        (torch.zeros(4, 4), torch.zeros(4, 4), {}, "batched and channel-first"),
    ],
)
def test_bad_inputs_raise_clear_errors(pred, label, kwargs, match):
    with pytest.raises(ValueError, match=match):
        segmentation_report(pred, label, **kwargs)
