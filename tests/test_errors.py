"""medkd_ext.errors: the last line of a failed run names the problem, under MONAI's own command line."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from medkd_ext.data import make_classification_demo
from medkd_ext.errors import STAGE_ATTRIBUTE, report, root_cause, user_message
from tests.bundles.bundle_checks import REPO


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


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    make_classification_demo(root / "data", seed=0, n_cases=16, n_test=4, size=32)
    content = json.loads((root / "data" / "dataset.json").read_text())
    content["training"][2]["image"] = "images/missing.png"
    (root / "data" / "missing.json").write_text(json.dumps(content))
    return root


@pytest.mark.slow
@pytest.mark.parametrize(
    "bundle, ids, expected",
    [
        (
            "roskd_classification", ["--datalist", "{root}/data/missing.json"],
            "the 'image' file {root}/data/images/missing.png does not exist",
        ),
        (
            "attention_transfer_densenet", ["--dataset_dir", "{root}/data", "--max_epochs", "abc"],
            "max_epochs = 'abc' is not an integer",
        ),
        ("joint_teacher_seg", ["--target_datalist", "{root}/nowhere.json"], "{root}/nowhere.json"),
        (
            "roskd_classification", ["--datalist", "{root}/data/dataset.json", "--train_teachers", "false"],
            "stage 'student': FileNotFoundError: method 'roskd' needs the teacher checkpoint(s)",
        ),
    ],
)
def test_the_last_line_of_a_failed_run_names_the_problem(data, tmp_path, bundle, ids, expected):
    """``python -m monai.bundle run`` as a user runs it: non-zero exit, the last line of the output names the problem
    (not MONAI's wrapper), and what was already in ``ckpt_dir`` is untouched."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "model.pt").write_bytes(b"earlier weights")
    command = [
        sys.executable, "-m", "monai.bundle", "run", "--config_file", f"bundles/{bundle}/configs/train.json",
        "--ckpt_dir", str(models), "--output_dir", str(tmp_path / "eval"),
        *[i.format(root=data) for i in ids],
    ]
    result = subprocess.run(  # one stream, as `... 2>&1 | tail` shows it
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
        timeout=600,
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode != 0
    assert lines[-1].startswith("ERROR ") and expected.format(root=data) in lines[-1], lines[-5:]
    assert [p.name for p in models.iterdir()] == ["model.pt"]
    assert (models / "model.pt").read_bytes() == b"earlier weights"
