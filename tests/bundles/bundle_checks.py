"""The checks the MONAI model-zoo's CI runs on a bundle, shared by every bundle's tests.

``verify_metadata`` against the repository's schema (``bundles/metadata_schema.json``, written from MONAI's
bundle specification: nothing is downloaded), ``ConfigWorkflow(...).check_properties() == []``,
``verify_net_in_out`` on ``inference.json`` and ``ckpt_export`` to TorchScript compared with eager;
:func:`stage_parsers`, the resolved config of every stage ``train.json`` runs, built without running anything;
:func:`readme_commands` / :func:`run_readme_commands`, a README's commands run as a user runs them; and
:func:`run_bundle_cli`, one ``python -m monai.bundle run`` as a user types it, with :func:`last_line` of its output and
:func:`folder_content` to show that a failed run left ``ckpt_dir`` as it was.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from medkd_ext.engines import Stage, stage_config

REPO = Path(__file__).resolve().parents[2]
SCHEMA = REPO / "bundles" / "metadata_schema.json"


def check_metadata(bundle_dir: Path) -> None:
    """``verify_metadata`` against the repository's schema; raises on any violation."""
    verify_metadata(meta_file=str(bundle_dir / "configs" / "metadata.json"), filepath=str(SCHEMA))


def check_properties(
    bundle_dir: Path, config_files: str | Sequence[str], workflow_type: str, overrides: Mapping[str, Any] | None = None
) -> list[str] | None:
    """``ConfigWorkflow(...).check_properties()`` of a bundle config (``[]`` when every property is there)."""
    files = [config_files] if isinstance(config_files, str) else list(config_files)
    workflow = ConfigWorkflow(
        config_file=[str(bundle_dir / "configs" / f) for f in files],
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        workflow_type=workflow_type,
        **dict(overrides or {}),
    )
    workflow.initialize()
    return workflow.check_properties()


def check_net_in_out(bundle_dir: Path, overrides: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
    """``verify_net_in_out`` of ``network_def`` in ``inference.json`` against ``metadata.json``."""
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(bundle_dir / "configs" / "metadata.json"),
        config_file=str(bundle_dir / "configs" / "inference.json"),
        device="cpu",
        **kwargs,
        **dict(overrides or {}),
    )


def check_export(
    bundle_dir: Path,
    ckpt_file: Path,
    out_dir: Path,
    input_shape: Sequence[int],
    overrides: Mapping[str, Any] | None = None,
    atol: float = 1e-4,
) -> Path:
    """``ckpt_export`` of ``network_def`` to TorchScript; the exported output must equal eager within ``atol``."""
    config = str(bundle_dir / "configs" / "inference.json")
    meta = str(bundle_dir / "configs" / "metadata.json")
    ts_path = out_dir / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(ckpt_file),
        meta_file=meta,
        config_file=config,
        **dict(overrides or {}),
    )
    parser = ConfigParser()
    parser.read_config(config)
    parser.read_meta(meta)
    parser.update(dict(overrides or {}))
    eager = parser.get_parsed_content("network_def")
    eager.load_state_dict(torch.load(ckpt_file, weights_only=True, map_location="cpu"))
    eager.eval()
    exported = torch.jit.load(str(ts_path), map_location="cpu")
    x = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = eager(x), exported(x)
    if not torch.allclose(expected, got, atol=atol):
        raise AssertionError(f"TorchScript output differs from eager by {(expected - got).abs().max():.3g} > {atol}")
    return ts_path


def stage_parsers(
    bundle_dir: Path, overrides: Mapping[str, Any] | None = None, config_files: Sequence[str] = ("train.json",)
) -> dict[str, ConfigParser]:
    """Stage name -> parser of the config that stage runs with, when ``config_files`` run with ``overrides`` (the
    KD study's ``distill_init`` stage only when a two-stage ``distill_method`` enables it).

    The configs are built as ``medkd_ext.engines.run_stages`` builds them (the running workflow's raw config, with
    the command-line ids, then the stage's overlays and ids); nothing is instantiated.
    """
    configs = bundle_dir / "configs"
    workflow = ConfigWorkflow(
        config_file=[str(configs / f) for f in config_files],
        meta_file=str(configs / "metadata.json"),
        workflow_type="train",
        **dict(overrides or {}),
    )
    workflow.parser.parse()
    stages: list[Stage] = []
    for entry in workflow.parser.get_parsed_content("stages"):
        stages.extend(entry if isinstance(entry, list) else [entry])
    parsers = {}
    for stage in stages:
        if not stage.enabled and stage.name == "distill_init":  # runs with a two-stage distill_method only
            continue
        parser = ConfigParser(stage_config(workflow.parser.get(), stage, configs))
        parser.parse()
        parsers[stage.name] = parser
    return parsers


def readme_commands(bundle_dir: Path, heading: str) -> list[str]:
    """The commands of the first ``bash`` block under ``heading`` in the bundle's README (continuation lines joined,
    comments dropped), as a user copies them."""
    text = (bundle_dir / "docs" / "README.md").read_text(encoding="utf-8")
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + len(heading) + 2)
    block = re.search(r"```bash\n(.*?)```", text[start : end if end > 0 else len(text)], re.S)
    if block is None:
        raise AssertionError(f"no bash block under '{heading}' in {bundle_dir / 'docs' / 'README.md'}")
    joined = block.group(1).replace("\\\n", " ")
    lines = [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [" ".join(line.split()) for line in lines]


def run_readme_commands(
    commands: Sequence[str], data_root: Path, extra: Mapping[int, str] | None = None, timeout: float = 900
) -> list[str]:
    """Run ``commands`` from the repository root, as written, except that ``/data/`` becomes ``data_root`` and
    command ``i`` gets ``extra[i]`` appended (tiny epochs for a test); ``python`` is this interpreter.

    Returns the commands as run. Raises ``AssertionError`` with the command and the end of its output when one
    exits non-zero.
    """
    ran = []
    for i, command in enumerate(commands):
        command = command.replace("/data/", f"{data_root}/")
        if (extra or {}).get(i):
            command = f"{command} {extra[i]}"
        if command.startswith("python "):
            command = shlex.quote(sys.executable) + command[len("python") :]
        result = subprocess.run(
            ["bash", "-c", command], cwd=REPO, capture_output=True, encoding="utf-8", errors="replace", timeout=timeout,
            env=dict(os.environ),
        )
        if result.returncode != 0:
            raise AssertionError(f"{command}\nexited {result.returncode}:\n{(result.stdout + result.stderr)[-6000:]}")
        ran.append(command)
    return ran


def run_bundle_cli(
    bundle: str, config_files: str | Sequence[str], ids: Mapping[str, Any], timeout: float = 600
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run --config_file <configs> --<id> <value> ...`` from the repository root, as a user
    runs it (``config_files`` relative to ``bundles/<bundle>/configs``; several are merged in order); stdout and
    stderr in one stream, as ``... 2>&1 | tail`` shows them, in ``stdout`` of the result."""
    files = [config_files] if isinstance(config_files, str) else list(config_files)
    paths = [f"bundles/{bundle}/configs/{f}" for f in files]
    config = paths[0] if len(paths) == 1 else str(paths)
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config]
    for key, value in ids.items():  # paths and strings as typed, other values as JSON (numbers, lists)
        command += [f"--{key}", os.fspath(value) if isinstance(value, (str, os.PathLike)) else json.dumps(value)]
    return subprocess.run(
        command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
        timeout=timeout,
    )


def last_line(result: subprocess.CompletedProcess) -> str:
    """The last non-empty line of a :func:`run_bundle_cli` output."""
    lines = result.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def folder_content(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes); ``{}`` when the folder does not exist."""
    if not folder.is_dir():
        return {}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_dicom_series(
    folder: Path, suffix: str = ".dcm", slices: int = 10, series: str = "1.2.826.0.1.3680043.2.1125.1.99999",
    prefix: str = "IM",
) -> list[Path]:
    """A CT-like DICOM series of ``slices`` axial slices of 18 x 22 pixels (spacing 0.8 x 0.9 x 2.5 mm, one file
    per slice, ``<prefix>0000<suffix>`` ...; ``suffix=""`` as scanners often name them) in ``folder`` (made if
    needed; another series, with another ``series`` UID and ``prefix``, can share it); returns the files in slice
    order."""
    import numpy as np
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    volume = sitk.GetImageFromArray(np.random.default_rng(1).integers(0, 400, size=(slices, 18, 22)).astype(np.int16))
    volume.SetSpacing((0.8, 0.9, 2.5))
    volume.SetOrigin((-10.0, 5.0, 30.0))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for i in range(volume.GetDepth()):
        image = volume[:, :, i]
        for tag, value in {
            "0008|0060": "CT",
            "0020|000e": series,
            "0020|000d": series + ".1",
            "0020|0052": series + ".2",  # FrameOfReferenceUID, as every CT series has (a DICOM-SEG shares it)
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0020|0032": "\\".join(map(str, volume.TransformIndexToPhysicalPoint((0, 0, i)))),
            "0020|0013": str(i + 1),
        }.items():
            image.SetMetaData(tag, value)
        files.append(folder / f"{prefix}{i:04d}{suffix}")
        writer.SetFileName(str(files[-1]))
        writer.SetImageIO("GDCMImageIO")  # the file name alone does not say DICOM when it has no suffix
        writer.Execute(image)
    return files


FINDINGS = ["effusion", "nodule", "mass", "edema"]


def classification_csv(root: Path, size: int = 32) -> Path:
    """A multi-label dataset as the classification READMEs' "Your data" describes it, under ``root``: images in
    ``root/images`` and ``root/cases.csv`` (``image`` relative to the table, ``patient``, ``split`` with 40
    ``training`` and 8 ``test`` rows, one 0/1 column per finding of :data:`FINDINGS`)."""
    import csv

    from medkd_ext.data import make_classification_demo

    make_classification_demo(root, seed=0, n_cases=40, n_test=8, size=size, multi_label=True)
    content = json.loads((root / "dataset.json").read_text())
    table = root / "cases.csv"
    with table.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["image", "patient", "split", *FINDINGS])
        for split in ("training", "test"):
            for item in content[split]:
                writer.writerow([item["image"], item["patient"], split, *item["label"]])
    return table


def check_your_data_classification(bundle_dir: Path, tmp_path: Path, extra: str, trained: Mapping[str, Any]) -> None:
    """The "Your data" commands of a classification bundle's README on :func:`classification_csv`: training (with
    ``extra`` ids: tiny epochs and a non-default setting), then evaluation and inference given no training setting.

    The record beside the weights holds ``trained`` and the table's class names; the evaluation scores the 8 test
    rows; inference's probabilities of those images equal the evaluation's.
    """
    data = tmp_path / "data"
    classification_csv(data)
    run_readme_commands(readme_commands(bundle_dir, "## Your data"), data, extra={0: extra})
    record = json.loads((data / "run" / "models" / "model.json").read_text())
    assert record["class_names"] == FINDINGS and record["multi_label"] is True and record["num_classes"] == 4
    assert record["datalist"] == str(data / "cases.csv")
    assert {k: record[k] for k in trained} == dict(trained)
    report = json.loads((data / "run" / "eval" / "metrics.json").read_text())
    assert report["task"] == "multi-label" and report["num_samples"] == 8 and set(report["per_class"]) == set(FINDINGS)
    evaluated = _by_image(data / "run" / "eval" / "predictions.json")
    inferred = _by_image(data / "run" / "inference" / "probabilities.json")
    assert len(evaluated) == 8 and len(inferred) == 48 and set(evaluated) <= set(inferred)
    for image, probabilities in evaluated.items():
        assert list(probabilities) == FINDINGS
        expected = torch.tensor(list(probabilities.values()))
        got = torch.tensor([inferred[image][name] for name in FINDINGS])
        assert torch.allclose(expected, got, atol=1e-5), (image, expected, got)


def _by_image(path: Path) -> dict[str, dict[str, float]]:
    """image -> probabilities of a ProbabilityWriter file."""
    return {os.path.realpath(e["image"]): e["probabilities"] for e in json.loads(path.read_text(encoding="utf-8"))}


KILL_AT = Path(__file__).resolve().parent / "kill_at.py"


def run_bundle(args: Sequence[str], kill_at: int = 0) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """``python -m monai.bundle <args>`` in a subprocess from the repository root, killed with SIGKILL after its
    ``kill_at``-th training iteration (``0``: never); returns the process and, for a run that ended, the trainers it
    started (class, epoch length, epoch it started after, iterations run: ``tests/bundles/kill_at.py``)."""
    result = subprocess.run(
        [sys.executable, str(KILL_AT), str(kill_at), *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", timeout=900,
    )
    last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
    trainers = json.loads(last[len("TRAINERS "):]) if last.startswith("TRAINERS ") else []
    return result, trainers


def weight_files(ckpt_dir: Path) -> dict[str, Path]:
    """The weight files a run wrote (``*.pt`` directly in ``ckpt_dir``; training states under ``state/`` excluded)."""
    return {p.name: p for p in sorted(Path(ckpt_dir).glob("*.pt"))}


def max_weight_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two state dict files with the same keys."""
    first, second = (torch.load(p, map_location="cpu", weights_only=True) for p in (a, b))
    assert sorted(first) == sorted(second), (a, b)
    return max(((first[k].double() - second[k].double()).abs().max().item() for k in first), default=0.0)


def check_resume_after_kill(
    args: Sequence[str], uninterrupted: Path, trainers: list[dict], trainer_index: int, tmp_path: Path
) -> None:
    """Kill ``train.json`` (``args``, without ``--ckpt_dir``/``--output_dir``) with SIGKILL in the middle of the
    second epoch of its ``trainer_index``-th trainer, rerun it with ``--resume true`` and check, against the
    uninterrupted run whose ``ckpt_dir`` is ``uninterrupted`` and whose trainers were ``trainers``: the finished stages
    are not trained again (their files untouched, their trainers not started), the interrupted stage continues after
    its first epoch (repeating less than one epoch), and every weight file equals the uninterrupted run's within 1e-6.
    """
    index = trainer_index % len(trainers)
    epoch_length = trainers[index]["epoch_length"]
    assert trainers[index]["iterations"] >= 2 * epoch_length, "the stage to kill needs two epochs or more"
    before = sum(t["iterations"] for t in trainers[:index])
    kill_at = before + epoch_length + (epoch_length + 1) // 2  # in the second epoch, before its end
    models = tmp_path / "models"
    folders = ["--ckpt_dir", str(models), "--output_dir", str(tmp_path / "eval")]

    killed, _ = run_bundle([*args, *folders], kill_at=kill_at)
    assert killed.returncode == -9, killed.stdout[-3000:]
    finished = {}  # the outputs of the stages that had finished, as their completion records name them
    for record in sorted((models / "state").glob("*.done.json")):
        for name in json.loads(record.read_text())["outputs"]:
            finished[name] = ((models / name).stat().st_mtime_ns, (models / name).read_bytes())
    assert bool(finished) == (index > 0), sorted(finished)

    resumed, resumed_trainers = run_bundle([*args, *folders, "--resume", "true"])
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert "resuming after epoch 1 of" in resumed.stdout
    # the finished stages did not train again; the interrupted one ran its remaining epochs only
    assert resumed_trainers[0] == {**trainers[index], "start_epoch": 1,
                                   "iterations": trainers[index]["iterations"] - epoch_length}
    assert resumed_trainers[1:] == trainers[index + 1:]
    for name, before_resume in finished.items():
        assert ((models / name).stat().st_mtime_ns, (models / name).read_bytes()) == before_resume, name
    written = weight_files(models)
    assert sorted(written) == sorted(weight_files(uninterrupted))
    for name, path in written.items():
        assert max_weight_difference(path, uninterrupted / name) <= 1e-6, name
    assert not list((models / "state").glob("*.pt")), "a finished stage's training state is removed"


def check_same_seed_same_results(args: Sequence[str], first: Path, tmp_path: Path) -> None:
    """``train.json`` (``args``) run again with the same seed gives the same metrics (``metrics.csv`` of its
    evaluation, byte for byte) and the same weights as the run whose ``ckpt_dir`` is ``first/models``."""
    result, _ = run_bundle([*args, "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval")])
    assert result.returncode == 0, result.stdout[-3000:]
    assert (tmp_path / "eval" / "metrics.csv").read_text() == (first / "eval" / "metrics.csv").read_text()
    written = weight_files(tmp_path / "models")
    assert sorted(written) == sorted(weight_files(first / "models"))
    for name, path in written.items():
        assert max_weight_difference(path, first / "models" / name) == 0.0, name


_FRESH_ENVIRONMENTS: dict[str, Path] = {}


def _clean_environ() -> dict[str, str]:
    """This process's environment without what would let another Python import this checkout."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def fresh_environment(readme: Path) -> Path:
    """The ``python`` of a new virtual environment holding only what an exported bundle's ``readme`` installs: its
    ``python -m pip install ...`` line run as written, after PyTorch of the build running these tests (so that the
    line's plain ``torch`` is already there: on Linux it would download a CUDA build). ``medkd_ext`` is not in it.
    Made once per process and install line (the export tests of the three bundles share it), removed at exit."""
    import atexit
    import shutil
    import tempfile

    line = next(t.strip() for t in readme.read_text().splitlines() if t.strip().startswith("python -m pip install "))
    if line in _FRESH_ENVIRONMENTS:
        return _FRESH_ENVIRONMENTS[line]
    root = Path(tempfile.mkdtemp(prefix="medkd_fresh_env_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, env=_clean_environ())
    python = root / "venv" / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    for packages in ([f"torch=={torch.__version__.split('+')[0]}"], shlex.split(line)[4:]):
        installed = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *packages], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            encoding="utf-8", errors="replace", timeout=1800, env=_clean_environ(),
        )
        assert installed.returncode == 0, installed.stdout[-3000:]
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('medkd_ext') is not None)"
    absent = subprocess.run([str(python), "-c", probe], cwd=root, env=_clean_environ())
    assert absent.returncode == 0, "medkd_ext can be imported in the new environment"
    _FRESH_ENVIRONMENTS[line] = python
    return python


def run_exported(
    folder: Path, ids: Mapping[str, Any], python: Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    """The exported bundle's inference as its README says to run it (from its folder) with ``python`` (a
    :func:`fresh_environment`); stdout and stderr in ``stdout``."""
    command = [str(python), "-m", "monai.bundle", "run", "--config_file", "configs/inference.json"]
    for key, value in ids.items():
        command += [f"--{key}", os.fspath(value) if isinstance(value, (str, os.PathLike)) else json.dumps(value)]
    return subprocess.run(
        command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace",
        timeout=timeout, env=_clean_environ(),
    )


def classification_inputs(folder: Path, images: Sequence[Path]) -> Path:
    """A folder of 2D images as a clinic has them: the PNG ``images``, a 2D NIfTI of the first, a real single-frame
    CT slice (pydicom's ``CT_small.dcm``) as a file without extension, and the same slice in a sub-folder."""
    import shutil

    import nibabel as nib
    import numpy as np
    from PIL import Image
    from pydicom.data import get_testdata_file

    folder.mkdir(parents=True)
    for image in images:
        shutil.copy(image, folder / image.name)
    pixels = np.asarray(Image.open(images[0]), dtype=np.float32)
    nib.save(nib.Nifti1Image(pixels, np.eye(4)), str(folder / "as_nifti.nii.gz"))
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "IM0001")
    (folder / "series").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "series" / "1")
    return folder


def _nifti_outputs(folder: Path) -> dict[str, Any]:
    import nibabel as nib

    return {p.name: nib.load(str(p)) for p in sorted(folder.glob("*.nii*"))}


def check_exported_bundle(
    bundle: str, ckpt_file: Path, inputs: Path, tmp_path: Path, repo_ids: Mapping[str, Any] | None = None
) -> None:
    """``scripts/export_bundle.py`` on ``ckpt_file``; the zip, unpacked in a new folder, runs in a new virtual
    environment with only the packages its README installs (:func:`fresh_environment`, no ``medkd_ext``) and gives
    the repository's predictions on the images of ``inputs`` (classification: probabilities within 1e-4;
    segmentation: the same masks with the input's shape and affine); a file changed after export is refused, named.
    """
    import shutil
    import zipfile

    exported = tmp_path / "exported" / bundle
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "export_bundle.py"), bundle, str(exported), "--ckpt_file",
         str(ckpt_file)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8", errors="replace", timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:]
    copy = tmp_path / "clinic"
    with zipfile.ZipFile(f"{exported}.zip") as archive:
        archive.extractall(copy)
    copy = copy / bundle
    shutil.rmtree(exported)  # nothing of the export folder is used by the copy
    for needed in ("README.md", "LICENSE", "manifest.json", "models/model.pt", "models/model.ts",
                   "configs/inference.json", "configs/metadata.json", "scripts/medkd_runtime.py"):
        assert (copy / needed).is_file(), needed
    assert "medkd_ext" not in (copy / "configs" / "inference.json").read_text()
    assert "--input_dir" in (copy / "README.md").read_text()

    python = fresh_environment(copy / "README.md")
    ran = run_exported(copy, {"input_dir": inputs, "output_dir": tmp_path / "clinic_out"}, python)
    assert ran.returncode == 0, ran.stdout[-4000:]
    ours = run_bundle_cli(
        bundle, "inference.json",
        {"ckpt_file": ckpt_file, "input_dir": inputs, "dataset_dir": inputs, "output_dir": tmp_path / "repo_out",
         **dict(repo_ids or {})},
    )
    assert ours.returncode == 0, ours.stdout[-4000:]
    if (tmp_path / "repo_out" / "probabilities.json").is_file():
        expected, got = (_by_image(tmp_path / d / "probabilities.json") for d in ("repo_out", "clinic_out"))
        assert set(got) == set(expected) and got
        for image, probabilities in expected.items():
            assert list(got[image]) == list(probabilities)
            values = torch.tensor(list(got[image].values()))
            assert torch.allclose(values, torch.tensor(list(probabilities.values())), atol=1e-4), image
            assert abs(float(values.sum()) - 1) < 1e-4 or len(values) != len(probabilities)
    else:
        expected, got = (_nifti_outputs(tmp_path / d) for d in ("repo_out", "clinic_out"))
        assert set(got) == set(expected) and got
        for name, image in expected.items():
            assert got[name].shape == image.shape
            assert torch.allclose(torch.as_tensor(got[name].affine), torch.as_tensor(image.affine), atol=1e-5)
            assert (got[name].get_fdata() == image.get_fdata()).all(), name

    config = copy / "configs" / "inference.json"
    config.write_text(config.read_text().replace('"seed": 0', '"seed": 1'))
    refused = run_exported(copy, {"input_dir": inputs, "output_dir": tmp_path / "refused_out"}, python)
    assert refused.returncode != 0
    assert "configs/inference.json changed after this bundle was exported" in last_line(refused), last_line(refused)
    assert not (tmp_path / "refused_out").exists()


STUDY_TERMS = {
    "hinton": {"ce", "kd"},
    "fitnet": {"ce", "kd"},
    "fsp": {"ce", "kd"},
    "bss": {"ce", "kd", "bss"},
    "at": {"ce", "at_1", "at_2", "at_3"},
    "sp": {"ce", "sp"},
    "rkd_d": {"ce", "rkd_distance"},
    "rkd_a": {"ce", "rkd_angle"},
    "rkd_da": {"ce", "rkd_distance", "rkd_angle"},
    "one": {"ce", "ce_ensemble", "kd"},
    "dml": {"ce_0", "kl_0", "ce_1", "kl_1"},
}
"""The loss terms each ``distill_method`` of the KD study reports in the trainer's output (the student stage's: the
two-stage methods' second stage is Hinton KD)."""


def trained_terms(trainer: Any) -> set[str]:
    """Run ``trainer`` and return the keys of its outputs (MONAI decollates the output: a list of per-case dicts,
    each holding the loss terms)."""
    from ignite.engine import Events

    seen: set[str] = set()

    def collect(engine: Any) -> None:
        output = engine.state.output
        seen.update(output[0] if isinstance(output, list) else output)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, collect)
    trainer.run()
    return seen
