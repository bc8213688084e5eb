from __future__ import annotations

import csv
import math

import pytest
import torch
from monai.data import MetaTensor

from medkd_ext.metrics import SEGMENTATION_METRICS, SegmentationReport, segmentation_report
from medkd_ext.metrics.segmentation import SEGMENTATION_COUNTS


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


# Empty masks (every case counts). A 10 x 10 x 10 volume with spacing (1, 1, 2) mm spans 10 x 10 x 20 mm:
# its diagonal, the HD95 of a case with exactly one empty mask, is sqrt(10^2 + 10^2 + 20^2) = sqrt(600) mm.
SHAPE = (10, 10, 10)
SPACING = (1.0, 1.0, 2.0)
DIAGONAL_MM = math.sqrt(10**2 + 10**2 + 20**2)


def _slabs():
    """Two 2 x 8 x 8 slabs shifted by one voxel along the first axis (spacing 1 mm there): |A| = |B| = 128,
    |A n B| = 64, so IoU 1/3, DSC, Recall and Precision 1/2; half the surface distances are 0, half 1 mm: HD95 1."""
    label = _cube(SHAPE, slice(3, 5), slice(1, 9), slice(1, 9))
    pred = _cube(SHAPE, slice(4, 6), slice(1, 9), slice(1, 9))
    return pred, label


@pytest.mark.parametrize(
    "spacing, diagonal",
    [(SPACING, DIAGONAL_MM), (None, math.sqrt(300)), (2.0, 2 * math.sqrt(300))],
    ids=["mm", "voxels", "isotropic"],
)
def test_empty_prediction_scores_zero_and_hd95_the_image_diagonal(spacing, diagonal):
    _, label = _slabs()
    row = segmentation_report(torch.zeros_like(label), label, spacing=spacing)["rows"][0]
    assert row["empty"] == "prediction"
    assert (row["IoU"], row["DSC"], row["Recall"], row["Precision"]) == (0.0, 0.0, 0.0, 0.0)
    assert row["HD95"] == pytest.approx(diagonal)


def test_empty_reference_scores_zero_hd95_the_diagonal_and_no_recall():
    pred, _ = _slabs()
    row = segmentation_report(pred, torch.zeros_like(pred), spacing=SPACING)["rows"][0]
    assert row["empty"] == "reference"
    assert (row["IoU"], row["DSC"], row["Precision"]) == (0.0, 0.0, 0.0)
    assert row["HD95"] == pytest.approx(DIAGONAL_MM)
    assert math.isnan(row["Recall"])  # undefined: no reference voxel to recall


def test_both_empty_score_one_and_hd95_zero():
    empty = torch.zeros(1, 1, *SHAPE)
    row = segmentation_report(empty, empty, spacing=SPACING)["rows"][0]
    assert row["empty"] == "both"
    assert (row["IoU"], row["DSC"], row["Recall"], row["Precision"], row["HD95"]) == (1.0, 1.0, 1.0, 1.0, 0.0)


def test_diagonal_follows_each_cases_spacing_2d():
    # 6 x 8 pixels: diagonal 10 pixels; with spacing (0.5, 2) mm it spans 3 x 16 mm: diagonal sqrt(265) mm
    label = torch.zeros(2, 1, 6, 8)
    label[:, 0, 1:3, 1:3] = 1
    rows = segmentation_report(torch.zeros_like(label), label, spacing=[(1.0, 1.0), (0.5, 2.0)])["rows"]
    assert [r["HD95"] for r in rows] == pytest.approx([10.0, math.sqrt(265)])


def test_mixed_batch_means_count_every_case():
    pred, label = _slabs()
    empty = torch.zeros_like(label)
    preds = torch.cat([pred, empty, pred, empty])
    labels = torch.cat([label, label, empty, empty])
    report = SegmentationReport(num_classes=2)
    report.update(preds, labels, case_id=["good", "missed", "false_alarm", "both_empty"], spacing=SPACING)
    rows = {r["case"]: r for r in report.rows()}
    assert rows["good"]["empty"] == "none"
    assert rows["good"]["IoU"] == pytest.approx(1 / 3) and rows["good"]["DSC"] == pytest.approx(0.5)
    assert rows["good"]["HD95"] == pytest.approx(1.0, abs=1e-5)

    cls1, pooled = report.means()
    assert cls1["class"] == 1 and pooled["class"] == "all"
    assert cls1["IoU"] == pytest.approx((1 / 3 + 0 + 0 + 1) / 4)
    assert cls1["DSC"] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert cls1["Precision"] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
    assert cls1["Recall"] == pytest.approx((0.5 + 0 + 1) / 3)  # the false alarm has no Recall
    assert cls1["HD95"] == pytest.approx((1.0 + DIAGONAL_MM + DIAGONAL_MM + 0.0) / 4, abs=1e-5)
    assert [cls1[f"{m}_nan"] for m in SEGMENTATION_METRICS] == [0, 0, 1, 0, 0]  # IoU DSC Recall Precision HD95
    counts = {"n_cases": 4, "n_empty_prediction": 1, "n_empty_reference": 1, "n_both_empty": 1}
    assert {n: cls1[n] for n in SEGMENTATION_COUNTS} == counts
    assert {n: pooled[n] for n in SEGMENTATION_COUNTS} == counts and cls1["cases"] == 4
    assert pooled["HD95"] == pytest.approx(cls1["HD95"])


def test_missing_a_lesion_worsens_the_mean_hd95():
    """Adding a case with nothing predicted must not improve the mean HD95 (it used to leave the mean)."""
    pred, label = _slabs()
    report = SegmentationReport()
    report.update(pred, label, spacing=SPACING)
    before = report.means()[0]["HD95"]
    report.update(torch.zeros_like(label), label, spacing=SPACING)
    assert report.means()[0]["HD95"] > before


def test_counts_per_class_multiclass():
    # case 0: class 2 is in the label but not predicted; case 1: class 2 in neither
    label = torch.zeros(2, 1, 6, 8, dtype=torch.long)
    label[:, 0, :2, :2] = 1
    label[0, 0, 4:, 4:] = 2
    pred = label.clone()
    pred[0, 0, 4:, 4:] = 0
    means = {m["class"]: m for m in segmentation_report(pred, label, num_classes=3)["means"]}
    assert [means[1][n] for n in SEGMENTATION_COUNTS] == [2, 0, 0, 0]
    assert [means[2][n] for n in SEGMENTATION_COUNTS] == [2, 1, 0, 1]
    assert [means["all"][n] for n in SEGMENTATION_COUNTS] == [4, 1, 0, 1]
    assert means[2]["DSC"] == pytest.approx((0 + 1) / 2)
    assert means[2]["HD95"] == pytest.approx((10.0 + 0.0) / 2)  # 6 x 8 pixels: diagonal 10


def test_csv_and_markdown_report_the_counts(tmp_path):
    pred, label = _slabs()
    empty = torch.zeros_like(label)
    report = SegmentationReport()
    report.update(torch.cat([pred, empty, pred]), torch.cat([label, label, empty]), case_id=["a", "b", "c"])
    report.to_csv(tmp_path / "m.csv")
    with open(tmp_path / "m.csv") as f:
        lines = {(line["case"], line["class"]): line for line in csv.DictReader(f)}
    mean = lines[("mean", "1")]
    assert [mean[n] for n in SEGMENTATION_COUNTS] == ["3", "1", "1", "0"]
    assert [lines[("b", "1")][n] for n in SEGMENTATION_COUNTS] == ["1", "1", "0", "0"]  # a case row counts itself
    assert float(lines[("b", "1")]["HD95"]) == pytest.approx(math.sqrt(300))
    assert lines[("nan_count", "1")]["Recall"] == "1" and lines[("nan_count", "1")]["n_cases"] == ""
    text = report.to_markdown()
    header = "| class | IoU | DSC | Recall | Precision | HD95 | n_cases | n_empty_prediction | n_empty_reference |"
    assert header + " n_both_empty |" in text
    assert text.splitlines()[-2].endswith("| 3 | 1 | 1 | 0 |")  # class 1
    assert "| b | 1 | 0.0000 | 0.0000 | 0.0000 | 0.0000 | 17.3205 | prediction |" in text


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
    assert float(lines[2]["Precision"]) == pytest.approx(0.75 / 2)  # p2's empty prediction scores 0
    assert lines[3]["Precision"] == "0" and lines[3]["DSC"] == "0"
    text = report.to_markdown(tmp_path / "m.md")
    assert (tmp_path / "m.md").read_text() == text
    assert "| p1 | 1 | 0.6000 | 0.7500 |" in text
    assert "nan" not in text.split("Means over cases")[1].split("\n", 1)[1]  # nothing left out of the means


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
