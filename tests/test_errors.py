"""medkd_ext.errors: the last line of a failed run names the problem, under MONAI's own command line.

The runs of the bundles themselves (exit status, last line, ``ckpt_dir`` kept) are the bad-input catalogue,
``tests/bundles/test_bad_input.py``.
"""

from __future__ import annotations

import io
import json
import threading
import time
from multiprocessing.dummy import DummyProcess
from multiprocessing.pool import ThreadPool

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import Compose, LoadImaged

from medkd_ext.errors import (
    STAGE_ATTRIBUTE,
    report,
    root_cause,
    transform_input,
    user_message,
    wait_for_pool_workers,
)


def _wrapped() -> RuntimeError:
    """Our error under two wrappers, as MONAI raises them (a transform inside a config expression)."""
    from medkd_ext.data import load_datalist

    try:
        try:
            try:
                load_datalist("/nonexistent/dataset.json", "training")
            except FileNotFoundError as error:
                raise RuntimeError("applying transform <monai.transforms.LoadImaged object>") from error
        except RuntimeError as error:
            raise RuntimeError("Failed to evaluate ConfigExpression: $medkd_ext.data.load_datalist(...)") from error
    except RuntimeError as error:
        return error


def test_the_root_cause_is_our_message_under_monai_wrappers():
    error = _wrapped()
    cause = root_cause(error)
    assert isinstance(cause, FileNotFoundError) and "/nonexistent/dataset.json" in str(cause)
    assert user_message(error).startswith("FileNotFoundError: ") and "\n" not in user_message(error)
    setattr(error.__cause__, STAGE_ATTRIBUTE, "student")
    assert user_message(error).startswith("stage 'student': FileNotFoundError: ")
    out = io.StringIO()
    report(error, out)
    assert out.getvalue().startswith("ERROR stage 'student': ") and out.getvalue().count("\n") == 1


def test_without_an_error_of_ours_the_innermost_is_named():
    try:
        try:
            int("abc")
        except ValueError as error:
            raise RuntimeError("Failed to instantiate component") from error
    except RuntimeError as error:
        assert user_message(error) == "ValueError: invalid literal for int() with base 10: 'abc'"


def test_an_error_of_ours_raised_from_another_of_ours_is_the_one_named(tmp_path):
    """segmentation_datalists adds the source's index to load_datalist's error: the outer message is the one shown."""
    from medkd_ext.data import segmentation_datalists

    (tmp_path / "empty.json").write_text(json.dumps({"training": []}))
    with pytest.raises(ValueError) as info:
        segmentation_datalists(_segmentation_target(tmp_path), [tmp_path / "empty.json"])
    try:
        raise RuntimeError("Failed to evaluate ConfigExpression") from info.value
    except RuntimeError as wrapped:
        message = user_message(wrapped)
    assert message.startswith(f"ValueError: source dataset 0 ({tmp_path / 'empty.json'}): datalist "), message


def _segmentation_target(root):
    image = root / "image.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), str(image))
    (root / "target.json").write_text(json.dumps({"training": [{"image": "image.nii.gz", "label": "image.nii.gz"}]}))
    return root / "target.json"


def test_another_library_s_error_in_a_monai_transform_names_the_transform_and_file(tmp_path):
    broken = tmp_path / "scan.nii.gz"
    broken.write_bytes(b"\x1f\x8b" + bytes(30))  # a gzip header, then nothing readable
    try:
        Compose([LoadImaged("image", image_only=True)])({"image": str(broken), "label": 1, "patient": "P07"})
    except RuntimeError as error:
        assert transform_input(error) == f"LoadImaged on image '{broken}'"  # the label and patient are not files
        message = user_message(error)
    assert message.endswith(f" (in LoadImaged on image '{broken}')") and "\n" not in message
    try:
        raise ValueError("plain")
    except ValueError as error:
        assert transform_input(error) is None and user_message(error) == "ValueError: plain"


def test_pool_workers_left_running_by_an_error_are_waited_for():
    """An error in one case reaches the main thread while the pool's worker still loads the next one."""

    def load(index):
        if index == 0:
            raise ValueError("bad case")
        time.sleep(0.5)
        return index

    with pytest.raises(ValueError, match="bad case"):
        with ThreadPool(1) as pool:
            list(pool.imap(load, range(3)))
    workers = [t for t in threading.enumerate() if isinstance(t, DummyProcess) and t.is_alive()]
    assert workers  # still inside load(1)
    wait_for_pool_workers(timeout=10)
    assert not any(t.is_alive() for t in workers)
