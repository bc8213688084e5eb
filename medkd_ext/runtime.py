"""What an exported bundle needs at inference, written to run without the rest of ``medkd_ext``.

``scripts/export_bundle.py`` copies this file into every exported bundle as ``scripts/medkd_runtime.py``; the exported
``configs/inference.json`` loads it with ``runpy.run_path``, so a clinician's machine needs ``torch``, ``monai``,
``numpy`` and MONAI's image readers (nibabel, pydicom/ITK, pillow) but not this project. This module therefore imports
nothing from ``medkd_ext``: the package imports these functions from here instead (one definition of each).

It holds: recognising image files and DICOM series (:func:`is_dicom_file`, :func:`find_images`), fitting an image's
channels and a single-frame DICOM to a network (:class:`EnsureImageChannelsd`), writing class probabilities
(:class:`ProbabilityWriter`), the SHA-256 manifest of an exported bundle (:func:`file_sha256`,
:func:`write_manifest`, :func:`verify_manifest`) and the exported network loaders (:func:`load_torchscript`,
:class:`OnnxNetwork`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey

__all__ = [
    "IMAGE_SUFFIXES",
    "MANIFEST",
    "EnsureImageChannelsd",
    "OnnxNetwork",
    "ProbabilityWriter",
    "describe_source",
    "dicom_files",
    "file_sha256",
    "find_images",
    "is_dicom_file",
    "load_network",
    "series_folders",
    "load_torchscript",
    "source_filename",
    "spatial_dims_error",
    "verify_manifest",
    "write_manifest",
]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg")
"""Suffixes of the image files the bundles read (NIfTI, NRRD, MetaImage, PNG, JPEG); DICOM is recognised apart."""

MANIFEST = "manifest.json"
"""Name of an exported bundle's manifest, at its root: ``{"files": {relative path: sha256}}``."""

_DICOM_MARKER_OFFSET = 128
_DICOMDIR_CLASS = "1.2.840.10008.1.3.10"  # MediaStorageSOPClassUID of a DICOMDIR index


# -- image files ------------------------------------------------------------------------------------------------------


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a DICOM file: a ``.dcm`` name, or the ``DICM`` marker at byte 128 (DICOM Part 10), as the
    files of PACS exports named ``IM0001`` or plain numbers have."""
    path = Path(path)
    if path.suffix.lower() == ".dcm":
        return path.is_file()
    try:
        with open(path, "rb") as f:
            f.seek(_DICOM_MARKER_OFFSET)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def has_image_suffix(path: str | os.PathLike) -> bool:
    """Whether the name of ``path`` ends with one of :data:`IMAGE_SUFFIXES` (case-insensitive)."""
    return Path(path).name.lower().endswith(IMAGE_SUFFIXES)


def dicom_files(folder: str | os.PathLike) -> list[Path]:
    """The DICOM files directly in ``folder`` (sorted; files with another image suffix are not opened)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [p for p in sorted(folder.iterdir()) if p.is_file() and not has_image_suffix(p) and is_dicom_file(p)]


def find_images(folder: str | os.PathLike, spatial_dims: int | None = None) -> list[str]:
    """The images of an inference folder, sorted, as strings.

    3D (``spatial_dims`` 3 or ``None``): image files (NIfTI, NRRD, MHA, PNG, JPEG) and DICOM series (files named
    ``*.dcm`` or without suffix, found by content) in ``folder`` or one folder down, or ``folder`` itself when it is
    one image file; a folder holding several series gives one image per SeriesInstanceUID (:func:`series_folders`).

    2D (``spatial_dims=2``): every image file, and every DICOM file (in ``folder`` or one folder down) is one image,
    as radiographs arrive: one frame per file. A DICOM series of several slices (files of one SeriesInstanceUID at
    different positions, a CT or MR volume) is refused: a 2D network cannot read it.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        ValueError: ``folder`` is a file that is not an image, no image is found (the message lists what the folder
            holds), or (2D) a multi-slice DICOM series is given.
    """
    root = Path(folder)
    if not root.exists():
        raise FileNotFoundError(f"images {root} do not exist: give an image file or a folder of images (`input_dir`).")
    formats = f"{', '.join(IMAGE_SUFFIXES)} files and DICOM series folders"
    if root.is_file():
        if not (has_image_suffix(root) or is_dicom_file(root)):
            raise ValueError(f"{root} is not an image file (the bundles read {formats}); give an image or a folder.")
        return [str(root)]
    if spatial_dims == 2:
        found = _single_frames(root)
    elif dicom_files(root):
        return series_folders(root)
    else:
        found = []
        for p in sorted(root.iterdir()):
            if p.is_file() and has_image_suffix(p):
                found.append(str(p))
            elif p.is_dir() and dicom_files(p):
                found += series_folders(p)
    if not found:
        content = sorted(p.name for p in root.iterdir())[:10]
        raise ValueError(f"no image found in {root} (looked for {formats}); it holds {content}.")
    return found


def _series_of(files: Sequence[Path]) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> its files (in ``files``' order); a DICOMDIR index is left out, a file without the UID or
    that pydicom cannot read goes under ``""`` (its reader reports what is wrong)."""
    import pydicom

    series: dict[str, list[Path]] = {}
    for path in files:
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception:
            series.setdefault("", []).append(path)
            continue
        if str(getattr(getattr(header, "file_meta", None), "MediaStorageSOPClassUID", "")) == _DICOMDIR_CLASS:
            continue
        series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append(path)
    return series


def series_folders(folder: str | os.PathLike) -> list[str]:
    """The DICOM series of ``folder``, one image each: ``[folder]`` when it holds one series; when it holds several
    (as a PACS export of a whole study does), one folder per SeriesInstanceUID holding links to that series' files,
    named ``<folder>_<SeriesInstanceUID, dots as dashes>`` under ``<temp>/medkd_dicom_series/`` (built once, rebuilt
    when the files change), since MONAI's readers take a folder as one series (ITK the first it finds, with a
    warning)."""
    folder = Path(folder)
    series = _series_of(dicom_files(folder))
    if len(series) <= 1:
        return [str(folder)]
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    views = Path(tempfile.gettempdir()) / "medkd_dicom_series" / key
    # no dots in the name: writers take what follows the last dot for an extension
    names = {uid: f"{folder.name}_{uid.replace('.', '-') or 'unknown'}" for uid in series}
    return [str(_series_view(views / names[uid], files)) for uid, files in sorted(series.items())]


def _series_view(view: Path, files: Sequence[Path]) -> Path:
    """``view``, a folder holding a link to (or, without symbolic links, a copy of) each of ``files``."""
    wanted = {f.name: f.resolve() for f in files}
    if view.is_dir() and {p.name: p.resolve() for p in view.iterdir()} == wanted:
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=view.parent))
    for name, target in wanted.items():
        try:
            (building / name).symlink_to(target)
        except OSError:
            shutil.copy2(target, building / name)
    shutil.rmtree(view, ignore_errors=True)
    try:
        building.rename(view)
    except OSError:  # built meanwhile by another process
        shutil.rmtree(building, ignore_errors=True)
    return view


def _single_frames(root: Path) -> list[str]:
    """2D images of ``root``: image files and DICOM files in it and one folder down; refuses multi-slice series."""
    found: list[str] = []
    dicoms: list[Path] = []
    for p in sorted(root.iterdir()):
        if p.is_file() and has_image_suffix(p):
            found.append(str(p))
        elif p.is_file() and is_dicom_file(p):
            dicoms.append(p)
        elif p.is_dir():
            dicoms += dicom_files(p)
    _refuse_volumes(dicoms)
    return sorted(found + [str(p) for p in dicoms])


def _refuse_volumes(files: Sequence[Path]) -> None:
    """``ValueError`` naming the first DICOM series among ``files`` whose slices lie at different positions."""
    if len(files) < 2:
        return
    import pydicom

    positions: dict[str, set[tuple[float, ...]]] = {}
    folders: dict[str, Path] = {}
    for path in files:
        try:
            header = pydicom.dcmread(str(path), stop_before_pixels=True)
        except Exception:  # an unreadable file is the reader's to report
            continue
        series, position = header.get("SeriesInstanceUID"), header.get("ImagePositionPatient")
        if series is None or position is None:
            continue
        positions.setdefault(str(series), set()).add(tuple(round(float(v), 3) for v in position))
        folders.setdefault(str(series), path.parent)
    for series, where in positions.items():
        if len(where) > 1:
            raise ValueError(
                f"{folders[series]} holds a DICOM series of {len(where)} slices (SeriesInstanceUID {series}), a 3D "
                "volume: this model reads 2D images (one frame per file, as radiographs). Give single-frame images, "
                "or use a 3D model."
            )


def source_filename(x: Any) -> str | None:
    """The ``filename_or_obj`` a MetaTensor was loaded from, else ``None``."""
    meta = getattr(x, "meta", None)
    name = meta.get(ImageMetaKey.FILENAME_OR_OBJ) if isinstance(meta, dict) else None
    if isinstance(name, (list, tuple)):
        name = name[0] if name else None
    return str(name) if name else None


def describe_source(data: Mapping[Hashable, Any], key: Hashable) -> str:
    """``"file '<path>' (key '<key>')"`` for the item under ``key``, or ``"key '<key>'"`` when no file is known.

    The file name is read from the MetaTensor's ``meta["filename_or_obj"]``, else from
    ``data["<key>_meta_dict"]["filename_or_obj"]``.
    """
    value = data.get(key)
    name = None
    meta = getattr(value, "meta", None)
    if isinstance(meta, Mapping):
        name = meta.get(ImageMetaKey.FILENAME_OR_OBJ)
    if not name:
        meta_dict = data.get(f"{key}_meta_dict")
        if isinstance(meta_dict, Mapping):
            name = meta_dict.get(ImageMetaKey.FILENAME_OR_OBJ)
    if isinstance(name, (list, tuple)) and len(name) == 1:
        name = name[0]
    return f"file '{name}' (key '{key}')" if name else f"key '{key}'"


def spatial_dims_error(d: Mapping[Hashable, Any], key: Hashable, img: Any, spatial_dims: int, who: str) -> str | None:
    """The message refusing a channel-first ``img`` that has not ``spatial_dims`` spatial dimensions, else ``None``."""
    found = img.ndim - 1
    if found == spatial_dims:
        return None
    return (
        f"{who}: {describe_source(d, key)} is {found}D (shape {tuple(img.shape[1:])}) but the network is "
        f"{spatial_dims}D (spatial_dims={spatial_dims}): give {spatial_dims}D images, or train a model with "
        f"--spatial_dims {found}."
    )


def _positive_int(value: Any, owner: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}.")
    return int(value)


class EnsureImageChannelsd(MapTransform):
    """Give channel-first images exactly ``channels`` channels: a one-channel image is repeated, a matching one
    passes unchanged, any other count raises ``ValueError`` naming the file, the count found and the count expected.

    Typical use: gray PNG/DICOM images fed to an ImageNet-style DenseNet that expects 3 channels.

    With ``spatial_dims=2``, a single-frame DICOM (or any volume one slice thick, shape ``(C, H, W, 1)``) is taken as
    the 2D image it is, as a radiograph arrives; a volume of several slices is refused.

    Args:
        keys: image keys.
        channels: number of channels the network expects.
        spatial_dims: when given, the spatial dimensions the network expects: an image with another count (a 3D
            volume given to a 2D network, a 2D image to a 3D one) raises ``ValueError`` naming the file and both
            counts, instead of failing later inside a resize.
        allow_missing_keys: skip keys absent from the data instead of raising ``KeyError``.
    """

    def __init__(
        self, keys: KeysCollection, channels: int, spatial_dims: int | None = None, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channels = _positive_int(channels, "EnsureImageChannelsd", "channels")
        self.spatial_dims = (
            None if spatial_dims is None else _positive_int(spatial_dims, "EnsureImageChannelsd", "spatial_dims")
        )

    def _fit_spatial(self, d: Mapping[Hashable, Any], key: Hashable, img: Any) -> Any:
        if self.spatial_dims is None:
            return img
        if self.spatial_dims == 2 and img.ndim == 4 and img.shape[-1] == 1:
            img = img[..., 0]  # one frame (a single-frame DICOM loads as H x W x 1); a MetaTensor keeps its meta
            if hasattr(img, "meta") and "spatial_shape" in img.meta:
                img.meta["spatial_shape"] = np.asarray(img.shape[1:])
        message = spatial_dims_error(d, key, img, self.spatial_dims, "EnsureImageChannelsd")
        if message:
            raise ValueError(message)
        return img

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, (torch.Tensor, np.ndarray)) or img.ndim < 2:
                raise ValueError(
                    f"EnsureImageChannelsd: {describe_source(d, key)} must be a channel-first image (C, *spatial), "
                    f"got {type(img).__name__} of shape {getattr(img, 'shape', None)}; run EnsureChannelFirstd first."
                )
            img = d[key] = self._fit_spatial(d, key, img)
            found = int(img.shape[0])
            if found == self.channels:
                continue
            if found != 1:
                raise ValueError(
                    f"EnsureImageChannelsd: {describe_source(d, key)} has {found} channels but {self.channels} are "
                    f"expected; only a 1-channel image can be repeated: convert the file (e.g. to grayscale) or set "
                    f"channels to {found}."
                )
            reps: Sequence[int] = (self.channels,) + (1,) * (img.ndim - 1)
            d[key] = img.repeat(*reps) if isinstance(img, torch.Tensor) else np.tile(img, reps)
        return d


# -- outputs ----------------------------------------------------------------------------------------------------------


def _pred_image(output: Any) -> tuple[Any, Any]:
    """``(pred, image)`` of an evaluator's output: a dict, or a list of per-case dicts (MONAI decollates them)."""
    if isinstance(output, Mapping):
        return output["pred"], output["image"]
    return [item["pred"] for item in output], [item["image"] for item in output]


class ProbabilityWriter:
    """Inference: collects each case's class probabilities and writes them as a JSON list at ``COMPLETED``.

    Each entry is ``{"image": <source file>, "probabilities": {<class name>: p}}``; the file name is read from the
    prediction's (or the image's) metadata. The file is written whole (a temporary file renamed over it).

    Args:
        output_file: JSON file to write (its folder is created).
        class_names: names of the classes; default ``"0", "1", ...``.
        output_transform: takes ``(probs, images)`` from the engine output.
    """

    def __init__(
        self,
        output_file: str | os.PathLike,
        class_names: Sequence[str] | None = None,
        output_transform: Callable = _pred_image,
    ) -> None:
        self.output_file = Path(output_file)
        self.class_names = list(class_names) if class_names is not None else None
        self.output_transform = output_transform
        self.entries: list[dict[str, Any]] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, lambda e: self.entries.clear())
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._write)

    def _collect(self, engine: Any) -> None:
        probs, images = self.output_transform(engine.state.output)
        if isinstance(probs, torch.Tensor) and probs.ndim > 1:
            probs = list(probs)
        if isinstance(images, torch.Tensor):
            images = list(images) if images.ndim > 0 and len(images) == len(probs) else [images] * len(probs)
        for p, image in zip(probs, images, strict=True):
            values = torch.as_tensor(p).detach().cpu().float().flatten().tolist()
            names = self.class_names or [str(i) for i in range(len(values))]
            if len(names) != len(values):
                raise ValueError(f"ProbabilityWriter: {len(values)} probabilities but {len(names)} class names.")
            source = source_filename(p) or source_filename(image)
            self.entries.append({"image": source, "probabilities": dict(zip(names, values, strict=True))})

    def all_entries(self) -> list[dict[str, Any]] | None:
        """The entries to write (``None``: this process writes nothing); a distributed run overrides it."""
        return self.entries

    def _write(self, engine: Any) -> None:
        entries = self.all_entries()
        if entries is None:
            return
        self.entries = entries
        self.output_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.output_file.with_name(self.output_file.name + ".tmp")
        tmp.write_text(json.dumps(entries, indent=2))
        os.replace(tmp, self.output_file)
        logger.info("probabilities of %d cases written to %s", len(entries), self.output_file)


# -- the manifest of an exported bundle -------------------------------------------------------------------------------


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, as 64 hexadecimal digits."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _bundle_files(root: Path) -> list[str]:
    """Every file under ``root`` except the manifest and Python caches, as sorted POSIX paths relative to it."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in p.parts
    )


def write_manifest(bundle_root: str | os.PathLike) -> Path:
    """Write ``<bundle_root>/manifest.json`` with the SHA-256 of every file of the bundle; returns its path."""
    root = Path(bundle_root)
    files = {name: file_sha256(root / name) for name in _bundle_files(root)}
    path = root / MANIFEST
    path.write_text(json.dumps({"algorithm": "sha256", "files": files}, indent=2) + "\n", encoding="utf-8")
    return path


def verify_manifest(bundle_root: str | os.PathLike, checked: Sequence[str] = ("configs", "models", "scripts")) -> int:
    """Check an exported bundle against its manifest before it runs; returns the number of files checked.

    Every file the manifest lists must exist with its recorded SHA-256, and no file may have been added under the
    folders in ``checked`` (they decide what runs: configs, weights, code). ``docs/`` and the outputs may change.

    Raises:
        FileNotFoundError: the manifest or a file it lists is missing (the message names it).
        ValueError: a file changed after export, or was added to a checked folder (the message names it).
    """
    root = Path(bundle_root)
    path = root / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: this bundle cannot be checked. Use the bundle as it was exported (unzip it again)."
        )
    try:
        files = json.loads(path.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a manifest of an exported bundle ({error}); unzip the bundle again.") from None
    for name, expected in files.items():
        file = root / name
        if not file.is_file():
            raise FileNotFoundError(f"{file} is missing: it was exported with this bundle; unzip the bundle again.")
        if file_sha256(file) != expected:
            raise ValueError(
                f"{file} changed after this bundle was exported (its SHA-256 differs from {path}): refusing to run. "
                "Unzip the bundle again, or ask for a new export."
            )
    added = [name for name in _bundle_files(root) if name.split("/")[0] in checked and name not in files]
    if added:
        raise ValueError(
            f"{root / added[0]} was added after this bundle was exported (not in {path}): refusing to run. Remove it, "
            "or unzip the bundle again."
        )
    return len(files)


# -- exported networks ------------------------------------------------------------------------------------------------


def load_torchscript(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.jit.ScriptModule:
    """A TorchScript model loaded onto ``device`` (weights saved on a GPU load on the CPU), in eval mode."""
    model = torch.jit.load(str(path), map_location=torch.device(device))
    return model.eval()


class OnnxNetwork(torch.nn.Module):
    """An ONNX model run by ONNX Runtime behind the interface of a PyTorch network: ``network(x) -> tensor`` on
    ``x``'s device, so MONAI's inferers and evaluators use it as they use the TorchScript model.

    Args:
        path: the ``.onnx`` file (input ``image``, output ``pred``).
        device: ``cuda`` uses ONNX Runtime's CUDA provider when it has one, else the CPU.
    """

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        super().__init__()
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError(
                f"inference_backend 'onnx' needs ONNX Runtime to run {path}: `pip install onnxruntime`, or use the "
                "default TorchScript model (inference_backend 'torchscript')."
            ) from None
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().float().cpu().numpy()
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(out).to(x.device)


def load_network(models_dir: str | os.PathLike, backend: str = "torchscript", device: str | torch.device = "cpu"):
    """The exported network of ``models_dir``: ``model.ts`` (``backend="torchscript"``) or ``model.onnx``
    (``backend="onnx"``), on ``device``."""
    models = Path(models_dir)
    if backend == "torchscript":
        return load_torchscript(models / "model.ts", device)
    if backend == "onnx":
        if not (models / "model.onnx").is_file():
            raise FileNotFoundError(
                f"{models / 'model.onnx'} does not exist: this bundle was exported without an ONNX model (ONNX "
                "Runtime was not installed, or it disagreed with PyTorch); use inference_backend 'torchscript'."
            )
        return OnnxNetwork(models / "model.onnx", device)
    raise ValueError(f"inference_backend must be 'torchscript' or 'onnx', got {backend!r}.")
