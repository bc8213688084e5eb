"""Exporting a trained bundle for a clinician: a self-contained folder (and ``.zip``) that runs without ``medkd_ext``.

:func:`export_bundle` (the work of ``scripts/export_bundle.py``) writes:

- ``models/model.pt`` (the trained weights, saved from the CPU), ``models/model.ts`` (TorchScript: ``torch.jit.script``,
  else ``torch.jit.trace``) and, when ONNX Runtime is installed and agrees with PyTorch within 1e-4,
  ``models/model.onnx``;
- ``configs/inference.json``: the bundle's own inference config with every setting the training run recorded written
  out as a value and every ``medkd_ext`` component replaced by its equivalent in ``scripts/medkd_runtime.py`` (a copy
  of :mod:`medkd_ext.runtime`, beside ``scripts/medkd_errors.py``, a copy of :mod:`medkd_ext.errors`) or dropped
  where it only checks the data (``ValidateCased``); it runs the TorchScript
  model (``inference_backend`` ``"torchscript"``, or ``"onnx"``) on the CPU, or ``cuda:0`` when the machine has one,
  and checks the manifest before anything runs;
- ``configs/metadata.json`` (without the training-only packages), ``configs/logging.conf``, ``docs/`` (the bundle's
  README as ``docs/technical.md`` and ``docs/export.json``: how each model was made, its agreement with PyTorch and its
  speed), ``LICENSE``, a ``README.md`` in a clinician's words, and ``manifest.json``: the SHA-256 of every file,
  checked before inference.
"""

from __future__ import annotations

import copy
import datetime
import io
import json
import logging
import os
import re
import shutil
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medkd_ext import errors, runtime

__all__ = ["AGREEMENT_TOLERANCE", "export_bundle", "onnx_bytes", "to_torchscript"]

logger = logging.getLogger(__name__)

AGREEMENT_TOLERANCE = 1e-4
"""Largest absolute difference from the PyTorch network's output that an exported model may show."""

RUNTIME_FILE = "scripts/medkd_runtime.py"
"""Where the exported bundle holds its copy of :mod:`medkd_ext.runtime`."""

ERRORS_FILE = "scripts/medkd_errors.py"
"""Where the exported bundle holds its copy of :mod:`medkd_ext.errors` (the last line of a failed run says what is
wrong there too); like the runtime, that module imports nothing from ``medkd_ext``."""

_DROPPED_TARGETS = {
    "medkd_ext.transforms.ValidateCased",
    "medkd_ext.transforms.ValidateClassLabeld",
    "medkd_ext.transforms.SaveDicomSegd",
}
"""medkd_ext transforms the exported config leaves out: those that only check a case, and the DICOM-SEG writer (it
needs highdicom; an exported bundle writes its masks as NIfTI, ``output_format`` fixed to ``nifti``)."""

_GENERATED = {
    "imports",
    "bundle_root",
    "runtime",
    "dataset_dir",
    "input_dir",
    "output_dir",
    "ckpt_dir",
    "ckpt_file",
    "model_settings",
    "network_def",
    "network",
    "inference_backend",
    "dataset",
    "initialize",
    "num_threads",
}
"""Ids of the repository's inference.json that the exported config writes itself."""

_REFERENCE = re.compile(r"@([\w#]+)")


def to_torchscript(network: nn.Module, example: torch.Tensor) -> tuple[torch.jit.ScriptModule, str]:
    """``torch.jit.script`` of a copy of ``network`` (what MONAI's ``ckpt_export`` does), else ``torch.jit.trace``
    on ``example``; returns the module and how it was made."""
    network = copy.deepcopy(network).eval()
    try:
        return torch.jit.script(network), "torch.jit.script"
    except Exception as error:  # any scripting failure falls back to tracing
        with torch.no_grad():
            traced = torch.jit.trace(network, example, check_trace=False)
        return traced, f"torch.jit.trace (torch.jit.script failed: {type(error).__name__})"


def onnx_bytes(network: nn.Module, example: torch.Tensor) -> bytes:
    """``network`` as an ONNX model (input ``image``, output ``pred``, the batch size free), exported on the CPU with
    the TorchScript-based exporter (which needs the ``onnx`` package only)."""
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(
            copy.deepcopy(network).cpu().eval(),
            (example.cpu(),),
            buffer,
            dynamo=False,
            input_names=["image"],
            output_names=["pred"],
            dynamic_axes={"image": {0: "batch"}, "pred": {0: "batch"}},
        )
    return buffer.getvalue()


def _median_time(run: Callable[[], Any], repeats: int = 5) -> float:
    run()
    run()  # the TorchScript profiling executor optimises after its first runs
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float().cpu() - b.detach().float().cpu()).abs().max())


def _locate(bundle: str | os.PathLike) -> Path:
    path = Path(bundle)
    if not (path / "configs").is_dir():
        repo_bundle = Path(__file__).resolve().parents[1] / "bundles" / str(bundle)
        path = repo_bundle if (repo_bundle / "configs").is_dir() else path
    for needed in ("configs/inference.json", "configs/metadata.json"):
        if not (path / needed).is_file():
            raise FileNotFoundError(f"{path / needed} does not exist: give a bundle folder (or a bundle's name).")
    return path


def _is_expression(value: Any) -> bool:
    return isinstance(value, str) and value[:1] in ("$", "@", "%")


def _needs_medkd(value: Any) -> bool:
    return isinstance(value, str) and "medkd_ext" in value


def _plain(value: Any, where: str) -> Any:
    """``value`` as JSON (tuples and arrays to lists, numpy scalars to numbers), or ``TypeError`` naming ``where``."""
    if isinstance(value, torch.Tensor):
        value = value.tolist()
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, where) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v, where) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"export: {where} evaluates to a {type(value).__name__}, which a config cannot hold as a value.")


class _ConfigWriter:
    """Writes the standalone version of one config item by item (see the module's description)."""

    def __init__(self, parser: Any, raw: Mapping[str, Any]) -> None:
        self.parser = parser
        self.raw = raw
        self.needed: set[str] = set()  # ids the exported config references and must define

    def value(self, id: str) -> Any:
        return _plain(self.parser.get_parsed_content(id), f"'{id}'")

    def convert(self, value: Any, id: str) -> Any:
        if isinstance(value, Mapping):
            target = value.get("_target_")
            if isinstance(target, str) and target.startswith("medkd_ext."):
                return self.component(target, value, id)
            return {k: self.convert(v, f"{id}#{k}") for k, v in value.items()}
        if isinstance(value, list):
            converted = [self.convert(v, f"{id}#{i}") for i, v in enumerate(value)]
            return [v for v in converted if v is not _DROP]
        if _needs_medkd(value):
            return self.value(id)
        if _is_expression(value):
            self.needed.update(_REFERENCE.findall(value))
        return value

    def argument(self, value: Any, id: str) -> str:
        """One argument of a runtime component as Python source for a ``$`` expression."""
        if _needs_medkd(value) or isinstance(value, (Mapping, list)):
            return repr(self.value(id))
        if isinstance(value, str) and value.startswith("$"):
            self.needed.update(_REFERENCE.findall(value))
            return f"({value[1:]})"
        if isinstance(value, str) and value.startswith("@"):
            self.needed.update(_REFERENCE.findall(value))
            return value
        return repr(value)

    def component(self, target: str, config: Mapping[str, Any], id: str) -> Any:
        if target in _DROPPED_TARGETS:
            return _DROP
        name = target.rsplit(".", 1)[-1]
        if name not in runtime.__all__:
            raise ValueError(
                f"export: '{id}' is a {target}, which exported bundles cannot run (only medkd_ext.runtime's "
                f"{', '.join(n for n in runtime.__all__ if n[0].isupper())} and the checks {sorted(_DROPPED_TARGETS)})."
            )
        arguments = ", ".join(
            f"{k}={self.argument(v, f'{id}#{k}')}" for k, v in config.items() if not k.startswith("_")
        )
        return f"$@runtime[{name!r}]({arguments})"


_DROP = object()


def _standalone_config(parser: Any, raw: Mapping[str, Any]) -> dict[str, Any]:
    """The exported ``inference.json`` (see the module's description)."""
    writer = _ConfigWriter(parser, raw)
    body = {k: writer.convert(v, k) for k, v in raw.items() if k not in _GENERATED}
    config: dict[str, Any] = {
        "imports": ["$import os", "$import runpy", "$import numpy", "$import torch", "$import monai"],
        "bundle_root": ".",
        "runtime": f"$runpy.run_path(os.path.join(@bundle_root, {RUNTIME_FILE!r}), run_name='medkd_runtime')",
        "input_dir": "$os.path.join(@bundle_root, 'input')",
        "output_dir": "$os.path.join(@bundle_root, 'results')",
        "inference_backend": "torchscript",
        "num_threads": None,
    }
    config.update(body)
    config["network"] = "$@runtime['load_network'](os.path.join(@bundle_root, 'models'), @inference_backend, @device)"
    config["dataset"] = {
        "_target_": "Dataset",
        "data": "$[{'image': path} for path in @runtime['find_images'](@input_dir, @spatial_dims)]",
        "transform": "@preprocessing",
    }
    config["initialize"] = [
        f"$runpy.run_path(os.path.join(@bundle_root, {ERRORS_FILE!r}), run_name='medkd_errors')['install']()",
        "$@runtime['verify_manifest'](@bundle_root)",
        "$monai.utils.set_determinism(seed=@seed)",
        "$torch.set_num_threads(@num_threads) if @num_threads else None",
    ]
    writer.needed.add("spatial_dims")
    if "output_format" in raw:
        config["output_format"] = "nifti"  # the DICOM-SEG writer is not exported (see _DROPPED_TARGETS)
    # settings the kept items reference (class names, sizes, flags), as the values the training run recorded
    pending = [i for i in writer.needed if i.split("#")[0] not in config]
    while pending:
        id = pending.pop().split("#")[0]
        if id in config:
            continue
        config[id] = writer.convert(raw[id], id) if id in raw else writer.value(id)
        pending += [i for i in writer.needed if i.split("#")[0] not in config]
    return _referenced(config)


_ENTRY_IDS = ("imports", "bundle_root", "input_dir", "output_dir", "inference_backend", "device", "num_threads")
"""Ids an exported config keeps even when nothing references them: a user sets them on the command line."""


def _references(value: Any) -> set[str]:
    if isinstance(value, Mapping):
        return set().union(*(_references(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_references(v) for v in value)) if value else set()
    return {r.split("#")[0] for r in _REFERENCE.findall(value)} if _is_expression(value) else set()


def _referenced(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the ids that neither ``run``, ``initialize`` nor a user-facing id reaches (settings of the
    training run such as the network's class name, which the exported TorchScript model no longer needs)."""
    keep, pending = set(), ["run", "initialize", *_ENTRY_IDS]
    while pending:
        id = pending.pop()
        if id in keep or id not in config:
            continue
        keep.add(id)
        pending += sorted(_references(config[id]))
    return {k: v for k, v in config.items() if k in keep}


def _example_input(parser: Any) -> torch.Tensor:
    """A random input of the size the network sees at inference: the sliding window (``roi_size``) or the
    classification image (``crop_size``, else ``image_size``)."""
    spatial_dims = int(parser.get_parsed_content("spatial_dims"))
    channels = int(parser.get_parsed_content("in_channels"))
    for id in ("roi_size", "crop_size", "image_size"):
        if id in parser:
            size = parser.get_parsed_content(id)
            size = [int(size)] * spatial_dims if isinstance(size, (int, np.integer)) else [int(s) for s in size]
            return torch.randn((2, channels, *size), generator=torch.Generator().manual_seed(0))
    raise ValueError("export: the inference config has neither roi_size, crop_size nor image_size.")


def _clinician_readme(
    metadata: Mapping[str, Any], name: str, config: Mapping[str, Any], backends: Mapping[str, Any]
) -> str:
    """The exported bundle's README, for the person who runs it on patients' images."""
    classification = "ProbabilityWriter" in json.dumps(config)
    spatial_dims = config.get("spatial_dims", 3)
    if spatial_dims == 2:
        inputs = (
            "2D images: PNG or JPEG files, 2D NIfTI files (`.nii`, `.nii.gz`), or DICOM files holding one image each, "
            "as radiographs arrive (the files may have no extension, as PACS exports write them; sub-folders of "
            "such files are read too). A CT or MR series of several slices is refused: this model reads 2D images."
        )
    else:
        inputs = (
            "3D volumes: NIfTI files (`.nii`, `.nii.gz`), or DICOM series in sub-folders (the files may have no "
            "extension, as PACS exports write them; a folder holding several series, such as a whole study, gives "
            "one result per series)."
        )
    if not classification:
        output = (
            "one mask per image, named after the image with `_seg` (for a DICOM series, after its folder, and "
            "for a folder of several series, after the folder and the series' SeriesInstanceUID), as a "
            "NIfTI file in the image's own geometry (size, spacing, orientation and position), so that it overlays "
            "the image in a viewer such as 3D Slicer"
        )
    elif config.get("is_multi_label"):
        output = "`probabilities.json`: for every image, one probability (0 to 1) per finding; findings are independent"
    else:
        output = "`probabilities.json`: for every image, the probability of each class; they add up to 1"
    onnx = backends.get("onnx", {})
    speed = ""
    if "seconds" in onnx:
        ratio = backends["torchscript"]["seconds"] / onnx["seconds"]
        speed = (
            " An ONNX copy of the model is included (`models/model.onnx`): with ONNX Runtime installed "
            "(`python -m pip install onnxruntime`), add `--inference_backend onnx`; on the computer that exported "
            f"this bundle it ran {ratio:.1f} times as fast as the default (see `docs/export.json`), with the same "
            "results to within 1e-4."
        )
    return f"""# {metadata.get("name", name)}

{metadata.get("task", "")}.

**Intended use:** {metadata.get("intended_use", "research")}.

## What you need

Python 3.10 or newer with PyTorch, MONAI and the image readers MONAI uses:

    python -m pip install torch monai fire pytorch-ignite nibabel pydicom pillow

This folder is all that is needed: no internet connection and no other software.

## Running it on your images

1. Put your images in one folder. This model reads {inputs}
2. Open a terminal in this folder (the one holding this README) and run:

       python -m monai.bundle run --config_file configs/inference.json --input_dir /path/to/your/images

3. The results land in the `results` folder here: {output}. Add `--output_dir /another/folder` to write them
   elsewhere.

It runs on the computer's processor, or on its NVIDIA GPU when it has one.{speed}

## Checks before it runs

Before anything runs, every file of this bundle is checked against `manifest.json` (SHA-256 checksums). If a file was
changed or added after export, it stops, names the file and runs nothing: unzip the bundle again, or ask for a new
export. When an image cannot be read, the last line of the output names it.

## How the model was made

{metadata.get("description", "")} `docs/technical.md` describes the training and evaluation; `docs/export.json`
records the weights this bundle was exported from (their SHA-256) and how the exported models were checked.
"""


def export_bundle(
    bundle: str | os.PathLike,
    out: str | os.PathLike,
    ckpt_file: str | os.PathLike | None = None,
    onnx: bool | None = None,
    make_zip: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``bundle`` (a folder, or the name of one of the repository's bundles) to the folder ``out``.

    Args:
        bundle: the bundle folder (holding ``configs/`` and the trained ``models/model.pt``) or its name.
        out: the exported bundle's folder (created; refused if it exists and ``overwrite`` is false).
        ckpt_file: the weights to export; default the bundle's ``models/model.pt``.
        onnx: export an ONNX model too: ``None`` when ONNX Runtime and ``onnx`` are installed, ``True`` requires them.
        make_zip: also write ``<out>.zip``.
        overwrite: replace an existing ``out``.

    Returns:
        a summary: the folder, the zip, the backends (how each model was made, its agreement and timing).

    Raises:
        FileNotFoundError: the bundle, its configs or its trained weights are missing.
        ValueError: the network cannot be exported (TorchScript disagrees with PyTorch), or ``out`` exists.
    """
    from monai.bundle import ConfigParser

    source = _locate(bundle)
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise ValueError(f"export: {out} exists; give another folder, or --overwrite to replace it.")
        shutil.rmtree(out)
    configs = source / "configs"
    raw = json.loads((configs / "inference.json").read_text(encoding="utf-8"))
    metadata = json.loads((configs / "metadata.json").read_text(encoding="utf-8"))
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser["bundle_root"] = str(source)
    parser["device"] = "$torch.device('cpu')"
    if ckpt_file is not None:
        parser["ckpt_file"] = str(ckpt_file)
    ckpt = Path(parser.get_parsed_content("ckpt_file"))
    if not ckpt.is_file():
        raise FileNotFoundError(
            f"export: {ckpt} does not exist: train the bundle first (configs/train.json), or give --ckpt_file."
        )
    parser.get_parsed_content("initialize")  # the repository's own checks of the recorded settings
    network = parser.get_parsed_content("network").cpu().eval()
    example = _example_input(parser)
    config = _standalone_config(parser, raw)

    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "configs").mkdir(parents=True)
    (staging / "models").mkdir()
    (staging / "scripts").mkdir()
    (staging / "docs").mkdir()
    (staging / "input").mkdir()
    (staging / "input" / "README.txt").write_text("Put the images to analyse here, or give --input_dir.\n")
    torch.save({k: v.cpu() for k, v in network.state_dict().items()}, staging / "models" / "model.pt")

    with torch.no_grad():
        reference = network(example)
    backends: dict[str, Any] = {}
    scripted, how = to_torchscript(network, example)
    with torch.no_grad():
        diff = _max_diff(scripted(example), reference)
    if diff > AGREEMENT_TOLERANCE:
        raise ValueError(
            f"export: the TorchScript model ({how}) differs from the network by {diff:.2e} (> {AGREEMENT_TOLERANCE}); "
            "not exported."
        )
    torch.jit.save(scripted, str(staging / "models" / "model.ts"))
    loaded = runtime.load_torchscript(staging / "models" / "model.ts")
    with torch.no_grad():
        backends["eager"] = {"seconds": _median_time(lambda: network(example))}
        backends["torchscript"] = {"how": how, "max_abs_diff": diff, "seconds": _median_time(lambda: loaded(example))}
    backends["onnx"] = _export_onnx(network, example, reference, staging / "models" / "model.onnx", onnx)
    for b in backends.values():
        if "seconds" in b and "seconds" in backends["eager"]:
            b["speedup_vs_eager"] = backends["eager"]["seconds"] / b["seconds"]

    (staging / "configs" / "inference.json").write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    required = dict(metadata.get("required_packages_version", {}))
    for package in ("medkd-ext", "tensorboard", "mlflow"):
        required.pop(package, None)
    metadata["required_packages_version"] = required
    (staging / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=4) + "\n", encoding="utf-8")
    if (configs / "logging.conf").is_file():
        shutil.copy2(configs / "logging.conf", staging / "configs" / "logging.conf")
    shutil.copy2(runtime.__file__, staging / RUNTIME_FILE)
    shutil.copy2(errors.__file__, staging / ERRORS_FILE)
    if (source / "LICENSE").is_file():
        shutil.copy2(source / "LICENSE", staging / "LICENSE")
    if (source / "docs" / "README.md").is_file():
        shutil.copy2(source / "docs" / "README.md", staging / "docs" / "technical.md")
    summary = {
        "bundle": source.name,
        "exported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "weights": str(ckpt),
        "weights_sha256": runtime.file_sha256(ckpt),
        "example_input": list(example.shape),
        "torch": torch.__version__,
        "backends": backends,
    }
    (staging / "docs" / "export.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    (staging / "README.md").write_text(_clinician_readme(metadata, source.name, config, backends), encoding="utf-8")
    runtime.write_manifest(staging)
    os.replace(staging, out)
    summary["folder"] = str(out)
    if make_zip:
        zip_path = out.with_name(out.name + ".zip")
        zip_path.unlink(missing_ok=True)
        summary["zip"] = shutil.make_archive(str(out), "zip", root_dir=out.parent, base_dir=out.name)
    logger.info("exported %s to %s", source.name, out)
    return summary


def _export_onnx(
    network: nn.Module, example: torch.Tensor, reference: torch.Tensor, path: Path, wanted: bool | None
) -> dict[str, Any]:
    """Write ``path`` when ONNX Runtime agrees with ``reference``; returns what happened (and its timing)."""
    if wanted is False:
        return {"skipped": "not requested (--no-onnx)"}
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as error:
        if wanted:
            raise ImportError(
                f"export: --onnx needs onnx and onnxruntime (pip install -e '.[onnx]'): {error}"
            ) from None
        return {"skipped": "onnx/onnxruntime not installed (pip install -e '.[onnx]')"}
    path.write_bytes(onnx_bytes(network, example))
    model = runtime.OnnxNetwork(path)
    diff = _max_diff(model(example), reference)
    if diff > AGREEMENT_TOLERANCE:
        path.unlink()
        if wanted:
            raise ValueError(
                f"export: the ONNX model differs from the network by {diff:.2e} (> {AGREEMENT_TOLERANCE})."
            )
        return {"skipped": f"ONNX Runtime differs from PyTorch by {diff:.2e} (> {AGREEMENT_TOLERANCE})"}
    return {
        "how": "torch.onnx.export (TorchScript-based)",
        "max_abs_diff": diff,
        "seconds": _median_time(lambda: model(example)),
    }
