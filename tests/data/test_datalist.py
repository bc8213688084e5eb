from __future__ import annotations

import json
import os

import pytest

from medkd_ext.data import check_files_exist, load_datalist


def _write_json(path, content):
    path.write_text(json.dumps(content), encoding="utf-8")
    return path


@pytest.fixture
def msd(tmp_path):
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "labelsTr").mkdir()
    for name in ("a", "b"):
        (tmp_path / "imagesTr" / f"{name}.nii.gz").write_bytes(b"x")
        (tmp_path / "labelsTr" / f"{name}.nii.gz").write_bytes(b"x")
    content = {
        "name": "toy",
        "labels": {"0": "background", "1": "lesion"},
        "training": [
            {"image": "imagesTr/a.nii.gz", "label": "labelsTr/a.nii.gz", "fold": 0},
            {"image": "./imagesTr/b.nii.gz", "label": "labelsTr/b.nii.gz", "fold": 1},
        ],
        "validation": [],
        "test": ["imagesTs/c.nii.gz", "/abs/d.nii.gz"],
    }
    return _write_json(tmp_path / "dataset.json", content)


def test_json_training_resolves_relative_paths_and_keeps_fields(msd):
    items = load_datalist(msd)
    root = msd.parent
    assert items == [
        {"image": str(root / "imagesTr/a.nii.gz"), "label": str(root / "labelsTr/a.nii.gz"), "fold": 0},
        {"image": str(root / "imagesTr/b.nii.gz"), "label": str(root / "labelsTr/b.nii.gz"), "fold": 1},
    ]
    check_files_exist(items)


def test_json_test_strings_become_dicts_and_base_dir_is_used(msd, tmp_path):
    items = load_datalist(msd, key="test", base_dir=tmp_path / "other")
    assert items == [{"image": str(tmp_path / "other" / "imagesTs/c.nii.gz")}, {"image": "/abs/d.nii.gz"}]


def test_json_classification_labels_are_not_paths(tmp_path):
    path = _write_json(tmp_path / "d.json", {"training": [{"img": "x.png", "y": [0, 1]}, {"img": "y.png", "y": 3}]})
    items = load_datalist(path, image_key="img", label_key="y")
    assert items[0] == {"image": str(tmp_path / "x.png"), "label": [0, 1]}
    assert items[1]["label"] == 3


def test_json_errors(tmp_path, msd):
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        load_datalist(tmp_path / "nothere.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_datalist(bad)
    with pytest.raises(ValueError, match=r"no key 'training_x'.*\['test', 'training', 'validation'\]"):
        load_datalist(msd, key="training_x")
    with pytest.raises(ValueError, match=r"datalist .*dataset.json has no cases under 'validation'"):
        load_datalist(msd, key="validation")
    no_image = _write_json(tmp_path / "n.json", {"training": [{"label": "l.nii.gz"}]})
    with pytest.raises(ValueError, match="case 0 .* no 'image'"):
        load_datalist(no_image)
    with pytest.raises(ValueError, match="suffix '.txt'"):
        (tmp_path / "list.txt").write_text("a")
        load_datalist(tmp_path / "list.txt")


def test_csv_multiclass_with_split_column(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(
        "image,patient,split,label\nimg/a.png,P1,training,2\nimg/b.png,P1,training,0.0\nimg/c.png,P2,test,1\n",
        encoding="utf-8",
    )
    train = load_datalist(path)
    assert train == [
        {"image": str(tmp_path / "img/a.png"), "label": 2, "patient": "P1"},
        {"image": str(tmp_path / "img/b.png"), "label": 0, "patient": "P1"},
    ]
    assert load_datalist(path, key="test")[0]["label"] == 1
    with pytest.raises(ValueError, match=r"'split' column holds \['test', 'training'\]"):
        load_datalist(path, key="validation")


def test_csv_multilabel_class_columns(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("Path,patient,Edema,Effusion,Nodule\n/x/a.png,P1,1,0,1\n/x/b.png,P2,0.0,0,0\n", encoding="utf-8")
    items = load_datalist(path, image_key="Path", class_columns=["Edema", "Effusion", "Nodule"])
    assert items == [
        {"image": "/x/a.png", "label": [1, 0, 1], "patient": "P1"},
        {"image": "/x/b.png", "label": [0, 0, 0], "patient": "P2"},
    ]


def test_csv_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("file,label\na.png,1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"no image column 'image'; its columns are \['file', 'label'\]"):
        load_datalist(path)
    with pytest.raises(ValueError, match="no 'split' column, so key='test'"):
        load_datalist(path, image_key="file", key="test")
    path.write_text("image,A,B\na.png,1,-1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"row 2 .*\['B'\]"):
        load_datalist(path, class_columns=["A", "B"])
    with pytest.raises(ValueError, match=r"lacks the class columns \['C'\]"):
        load_datalist(path, class_columns=["A", "C"])
    path.write_text("image,label\na.png,cat\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 2, column 'label' holds 'cat'"):
        load_datalist(path)
    path.write_text("image,label\n", encoding="utf-8")
    with pytest.raises(ValueError, match="has no cases under 'training'"):
        load_datalist(path)


def test_csv_without_label_column_gives_inference_items(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("image\na.png\n", encoding="utf-8")
    assert load_datalist(path) == [{"image": str(tmp_path / "a.png")}]


def test_check_files_exist_names_case_and_path(msd):
    items = load_datalist(msd)
    os.remove(items[1]["label"])
    with pytest.raises(FileNotFoundError, match=r"case 1 \(image .*b.nii.gz\): the 'label' file .*labelsTr/b.nii.gz"):
        check_files_exist(items)
    check_files_exist(items, keys="image")
    check_files_exist([{"image": items[0]["image"], "label": 3}])  # class indices are not paths
    with pytest.raises(ValueError, match="case 0 .* no 'label'"):
        check_files_exist([{"image": items[0]["image"]}], allow_missing_keys=False)


def test_log_splits_counts_every_split_and_each_source(caplog):
    from medkd_ext.data import log_splits

    with caplog.at_level("INFO", logger="medkd_ext.data.datalist"):
        counts = log_splits({"train": [{}, {}], "sources": [[{}], [{}, {}, {}]]}, test=[])
    assert counts == {"train": 2, "sources[0]": 1, "sources[1]": 3, "test": 0}
    assert "train 2, sources[0] 1, sources[1] 3, test 0" in caplog.text


def test_class_names_from_the_datalist_or_the_class_columns(tmp_path):
    from medkd_ext.data import class_names

    datalist = tmp_path / "dataset.json"
    datalist.write_text('{"labels": {"0": "disc", "1": "ring"}, "training": []}')
    assert class_names(datalist, 2) == ["disc", "ring"]
    assert class_names(datalist, 3) == ["0", "1", "2"]  # the entry does not fit: indices
    assert class_names(tmp_path / "table.csv", 2, ["effusion", "nodule"]) == ["effusion", "nodule"]
    assert class_names(tmp_path / "table.csv", 2) == ["0", "1"]
    with pytest.raises(ValueError, match="class_columns names 2 classes but num_classes is 3"):
        class_names(tmp_path / "table.csv", 3, ["effusion", "nodule"])


def _nifti(path, size=16):
    import nibabel as nib
    import numpy as np

    data = np.random.default_rng(0).integers(-1000, 1000, (size, size, size)).astype(np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _cut(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return path


def test_check_image_files_names_the_broken_images_and_their_number(tmp_path):
    from medkd_ext.data import check_image_files

    items = [{"image": str(_nifti(tmp_path / f"{i}.nii.gz")), "label": i % 2} for i in range(4)]
    check_image_files(items, keys=("image", "label"))  # class labels are not paths
    _cut(tmp_path / "1.nii.gz")
    with pytest.raises(ValueError, match=r"1.nii.gz is truncated") as info:
        check_image_files(items, "image")
    assert "in all" not in str(info.value)
    _cut(tmp_path / "3.nii.gz")
    with pytest.raises(ValueError, match=r"1.nii.gz is truncated.* 2 images in all are broken; the others: .*3.nii.gz"):
        check_image_files(items, "image")
    items[0]["image"] = str(tmp_path / "missing.nii.gz")
    with pytest.raises(FileNotFoundError, match="the 'image' file .*missing.nii.gz does not exist"):
        check_image_files(items, "image")


def test_list_images_finds_dicom_series_without_suffix_and_refuses_what_is_not_an_image(tmp_path):
    from medkd_ext.data import list_images
    from tests.bundles.bundle_checks import write_dicom_series

    scans = tmp_path / "scans"
    write_dicom_series(scans / "series_b", suffix="")  # as scanners name the files: IM0000, IM0001, ...
    write_dicom_series(scans / "series_a")
    _nifti(scans / "c.nii.gz")
    (scans / "notes.txt").write_text("ignored")
    assert list_images(scans) == [str(scans / "c.nii.gz"), str(scans / "series_a"), str(scans / "series_b")]
    assert list_images(scans / "series_b") == [str(scans / "series_b")]  # the folder of one series
    assert list_images(scans / "c.nii.gz") == [str(scans / "c.nii.gz")]
    with pytest.raises(ValueError, match=r"notes.txt is not an image file \(the bundles read .nii.gz, .*DICOM series"):
        list_images(scans / "notes.txt")
    _cut(scans / "c.nii.gz")
    with pytest.raises(ValueError, match=r"c.nii.gz is truncated"):
        list_images(scans)
    with pytest.raises(FileNotFoundError, match="images .*none do not exist: give an image file or a folder"):
        list_images(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no image found in .*empty"):
        list_images(tmp_path / "empty")
