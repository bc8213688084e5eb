"""A trained bundle as MONAI Label serves it: what it is (task type, labels, dimension, read from its
``configs/metadata.json``), its network loaded once, strictly, and one image run through the bundle's own
``configs/inference.json`` (the same transforms, inferer, inversion and writers as ``monai.bundle run``).

This module imports neither MONAI Label nor highdicom: ``python -m medkd_ext.label serve`` uses it in the project's
environment to refuse a bad model before it starts the server, and the app uses it in MONAI Label's environment.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = ["BundleModel", "Prediction", "task_type"]

SEGMENTATION = "segmentation"
CLASSIFICATION = "classification"


def task_type(metadata: Mapping[str, Any], where: str = "metadata.json") -> str:
    """``"segmentation"`` or ``"classification"``, from ``network_data_format.outputs.pred`` of a bundle's metadata:
    a ``labels``/``segmentation`` image is a segmentation, ``probabilities`` (or ``format: classes``) a
    classification.

    Raises:
        ValueError: naming ``where`` when the metadata describes neither.
    """
    pred = metadata.get("network_data_format", {}).get("outputs", {}).get("pred", {})
    kind, form = str(pred.get("type", "")).lower(), str(pred.get("format", "")).lower()
    if kind == "image" and form in ("labels", "segmentation"):
        return SEGMENTATION
    if kind in ("probabilities", "probability") or form == "classes":
        return CLASSIFICATION
    raise ValueError(
        f"{where}: network_data_format.outputs.pred is {{'type': {kind!r}, 'format': {form!r}}}; MONAI Label serves a "
        "segmentation (type 'image', format 'labels') or a classification (type 'probabilities', format 'classes')."
    )


@dataclass
class Prediction:
    """One image's result: ``mask_file`` (segmentation: the label map in the input's geometry; ``None`` for a
    classification) and ``result`` (JSON-ready: classification probabilities, or the segmentation's labels)."""

    mask_file: str | None
    result: dict[str, Any] = field(default_factory=dict)


class BundleModel:
    """A trained bundle's inference, its network loaded once.

    Args:
        root: the bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``).
        name: the model's name in MONAI Label (default: the folder's name).
        device: overrides the config's ``device`` (default: CUDA when available, as ``inference.json`` says).

    Raises:
        FileNotFoundError: the folder, its configs or its trained ``models/model.pt`` are missing (named).
        ValueError: the metadata describes no task MONAI Label serves, or the weights do not match the network
            (the checkpoint named, as :func:`medkd_ext.networks.load_state_dict` says).
    """

    def __init__(self, root: str | os.PathLike, name: str | None = None, device: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.name = name or self.root.name
        configs = self.root / "configs"
        self.config_file, self.metadata_file = configs / "inference.json", configs / "metadata.json"
        for path in (self.config_file, self.metadata_file):
            if not path.is_file():
                raise FileNotFoundError(f"bundle {self.root}: {path} is missing; give a MONAI bundle folder.")
        self.ckpt_file = self.root / "models" / "model.pt"
        if not self.ckpt_file.is_file():
            raise FileNotFoundError(
                f"bundle {self.root}: {self.ckpt_file} is missing: train it first (python -m monai.bundle run "
                f"--config_file {configs / 'train.json'})."
            )
        self.metadata = json.loads(self.metadata_file.read_text())
        self.type = task_type(self.metadata, str(self.metadata_file))
        self.device = device
        parser = self._parser()
        self.network = parser.get_parsed_content("network")  # strict: wrong keys or shapes raise, naming the file
        self.network.eval()
        self.spatial_dims = int(parser.get_parsed_content("spatial_dims"))
        self.labels = self._labels(parser)
        multi_label = parser.get("is_multi_label") is not None and parser.get_parsed_content("is_multi_label")
        self.multi_label = bool(multi_label)
        self.description = str(self.metadata.get("name", self.name))
        self.version = str(self.metadata.get("version", "0"))

    # -- what MONAI Label shows --------------------------------------------------------------------------------------

    def _labels(self, parser: Any) -> dict[str, int]:
        """Label name -> value: a segmentation's labels without background, a classification's classes."""
        if self.type == SEGMENTATION:
            names = list(parser.get_parsed_content("segment_labels"))
            return {str(n): i + 1 for i, n in enumerate(names)}
        names = list(parser.get_parsed_content("class_names"))
        return {str(n): i for i, n in enumerate(names)}

    # -- inference ---------------------------------------------------------------------------------------------------

    def _parser(self, overrides: Mapping[str, Any] | None = None) -> Any:
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        parser.read_config(str(self.config_file))
        parser.read_meta(str(self.metadata_file))
        parser["bundle_root"] = str(self.root)
        if self.device is not None:
            parser["device"] = f"$torch.device({self.device!r})"
        for key, value in (overrides or {}).items():
            parser[key] = value
        return parser

    def images(self, path: str | os.PathLike) -> list[str]:
        """The images ``path`` holds for this model (a file, a DICOM file, a DICOM series folder), each checked."""
        from medkd_ext.data import list_images

        return list_images(path, self.spatial_dims)

    def predict(self, image: str | os.PathLike, work_dir: str | os.PathLike) -> Prediction:
        """Run ``image`` (one image: a file or a DICOM series folder) through the bundle's inference.

        Segmentation writes the mask as NIfTI into ``work_dir`` (a new folder there) and returns its path;
        classification returns the class probabilities (softmax: they sum to 1; multi-label: one sigmoid per
        finding).

        Raises:
            ValueError: ``image`` holds no image or several (a folder of several series or files), or the bundle
                refuses it (wrong dimensions or channels, a broken file), with the bundle's message.
        """
        found = self.images(image)
        if len(found) != 1:
            listed = ", ".join(Path(p).name for p in found[:5])
            raise ValueError(
                f"{image} holds {len(found)} images ({listed}{', ...' if len(found) > 5 else ''}); give one image "
                "file or one DICOM series folder per request."
            )
        out = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=work_dir))
        overrides: dict[str, Any] = {"output_dir": str(out)}
        if self.type == SEGMENTATION:
            overrides["output_format"] = "nifti"
        parser = self._parser(overrides)
        parser["dataset"]["data"] = [{"image": found[0]}]
        parser["network"] = self.network
        with torch.inference_mode():
            parser.get_parsed_content("initialize")
            parser.get_parsed_content("run")
        if self.type == SEGMENTATION:
            masks = sorted(out.glob("*.nii*"))
            if len(masks) != 1:
                raise RuntimeError(f"{self.name}: inference wrote {len(masks)} masks in {out}, expected 1.")
            return Prediction(str(masks[0]), {"labels": self.labels, "model": self.name})
        probabilities = json.loads(Path(parser.get_parsed_content("probabilities_file")).read_text())
        shutil.rmtree(out, ignore_errors=True)
        if len(probabilities) != 1:
            raise RuntimeError(f"{self.name}: inference wrote {len(probabilities)} results, expected 1.")
        result = {
            "model": self.name,
            "multi_label": self.multi_label,
            "probabilities": probabilities[0]["probabilities"],
        }
        return Prediction(None, result)

    def info(self) -> dict[str, Any]:
        """What the server shows about this model."""
        return {
            "bundle": str(self.root),
            "type": self.type,
            "labels": self.labels,
            "dimension": self.spatial_dims,
            "multi_label": self.multi_label,
            "version": self.version,
        }


def load_models(roots: Sequence[str | os.PathLike]) -> list[BundleModel]:
    """:class:`BundleModel` of each bundle folder, in order; the first that fails raises its error."""
    return [BundleModel(root) for root in roots]
