"""The MONAI Label app serving the medkd bundles (imported by MONAI Label's server, in its own environment).

``python -m medkd_ext.label serve`` writes ``<workspace>/app/main.py`` (one import of :class:`MedkdLabelApp`) and
``<workspace>/app/medkd_label.json`` (the bundles, the project's Python for DICOM-SEG), then starts MONAI Label on
that app. Each bundle is one model, named after its folder; its task type (segmentation or classification), labels
and dimension come from the bundle's ``configs/metadata.json`` and inference config. Every network is loaded when the
server starts, strictly: a checkpoint that does not match its network stops the server, naming the file.

``/infer/<model>`` runs the bundle's own ``configs/inference.json`` on the image:

* segmentation returns the mask (NIfTI, in the input's geometry); with ``params={"output_format": "dicom_seg"}``
  and a DICOM series as input, a DICOM-SEG referencing that series (written by the project's environment, which has
  highdicom);
* classification returns JSON: ``{"probabilities": {class: p}, "multi_label": bool, ...}``.

The image is an upload (``file``; stored under the studies folder) or ``?image=`` naming an image of the studies
folder (an id, or a path inside it); any other path is refused with HTTP 403. Bad images are answered with HTTP 400
and the bundle's message.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType

from medkd_ext.errors import root_cause, user_message
from medkd_ext.label.bundles import SEGMENTATION, BundleModel

logger = logging.getLogger(__name__)

__all__ = ["APP_CONFIG", "UPLOADS", "BundleInferTask", "MedkdLabelApp"]

APP_CONFIG = "medkd_label.json"
"""The app's settings beside its ``main.py``: ``{"bundles": [folder, ...], "project_python": path}``."""

UPLOADS = ".uploads"
"""The studies folder's sub-folder for uploads and results (the server's ``TMPDIR``)."""


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


class BundleInferTask(InferTask):
    """MONAI Label's inference task for one trained bundle (:class:`BundleModel`).

    Args:
        model: the bundle, its network loaded.
        studies: the studies folder; images must lie inside it.
        project_python: the project's Python (has highdicom), for DICOM-SEG; ``None``: DICOM-SEG is refused.
    """

    def __init__(self, model: BundleModel, studies: str | os.PathLike, project_python: str | None = None) -> None:
        kind = InferType.SEGMENTATION if model.type == SEGMENTATION else InferType.CLASSIFICATION
        config = {"output_format": "nifti"} if model.type == SEGMENTATION else {}
        super().__init__(
            type=kind, labels=model.labels, dimension=model.spatial_dims, description=model.description,
            config=config,
        )
        self.model = model
        self.studies = Path(studies).resolve()
        self.uploads = self.studies / UPLOADS
        self.project_python = project_python

    def is_valid(self) -> bool:
        return True

    def info(self) -> dict[str, Any]:
        return {**super().info(), **self.model.info()}

    def _image(self, request: dict[str, Any]) -> Path:
        image = request.get("image")
        if not image:
            raise HTTPException(
                status_code=404,
                detail=f"no such image in the studies folder {self.studies}: give an image id, a path inside it, or "
                "upload the file (file=...).",
            )
        path = Path(str(image)).resolve()
        if not _inside(path, self.studies):
            raise HTTPException(
                status_code=403,
                detail=f"image {image} is outside the studies folder {self.studies}: upload it (file=...) or copy it "
                "into the studies folder.",
            )
        if not path.exists():
            raise HTTPException(status_code=404, detail=f"image {image} does not exist.")
        return path

    def __call__(self, request: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
        image = self._image(request)
        output_format = str(request.get("output_format", "nifti"))
        if self.model.type == SEGMENTATION and output_format not in ("nifti", "dicom_seg"):
            raise HTTPException(status_code=400, detail=f"output_format {output_format!r}: use 'nifti' or 'dicom_seg'.")
        work = Path(tempfile.mkdtemp(prefix="medkd-infer-"))
        try:
            try:
                prediction = self.model.predict(image, work)
            except Exception as error:  # the bundle's message, as its command line would end with it
                cause = root_cause(error)
                status = 400 if isinstance(cause, (ValueError, FileNotFoundError, KeyError)) else 500
                raise HTTPException(status_code=status, detail=f"{self.model.name}: {user_message(error)}") from error
            if prediction.mask_file is None:
                return None, prediction.result
            mask = Path(prediction.mask_file)
            result = dict(prediction.result)
            if self.model.type == SEGMENTATION and output_format == "dicom_seg":
                mask = self._dicom_seg(image, mask, work)
                result["output_format"] = "dicom_seg"
            # the response sends and then deletes this file: keep it outside the work folder removed below
            handle, kept = tempfile.mkstemp(suffix="".join(mask.suffixes), prefix=f"{self.model.name}-")
            os.close(handle)
            shutil.move(str(mask), kept)
            return kept, result
        finally:
            shutil.rmtree(work, ignore_errors=True)
            if image.parent == self.uploads and image.is_file():
                image.unlink()  # an upload: MONAI Label removes it after a response, not after an error

    def _dicom_seg(self, image: Path, mask: Path, work: Path) -> Path:
        if not image.is_dir():
            raise HTTPException(
                status_code=400,
                detail=f"output_format 'dicom_seg' needs a DICOM series folder as image; {image.name} is a file.",
            )
        if not self.project_python:
            raise HTTPException(status_code=400, detail="DICOM-SEG output is not available on this server.")
        out = work / "seg.dcm"
        command = [
            self.project_python, "-m", "medkd_ext.label", "dicom-seg", str(mask), str(image), str(out),
            "--labels", json.dumps(list(self.model.labels)), "--algorithm", f"medkd {self.model.name}",
            "--version", self.model.version,
        ]
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                              errors="replace")
        if done.returncode != 0 or not out.is_file():
            lines = done.stdout.strip().splitlines()
            raise HTTPException(status_code=400, detail=f"DICOM-SEG: {lines[-1] if lines else 'failed'}")
        return out


class MedkdLabelApp(MONAILabelApp):
    """The app: one :class:`BundleInferTask` per bundle listed in ``<app_dir>/medkd_label.json``."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        settings_file = Path(app_dir) / APP_CONFIG
        self.medkd = json.loads(settings_file.read_text())
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="medkd",
            description="Knowledge-distilled students of the medkd bundles", version="0.1.0",
        )

    def init_infers(self) -> dict[str, InferTask]:
        tasks: dict[str, InferTask] = {}
        for root in self.medkd["bundles"]:
            model = BundleModel(root)  # a checkpoint that does not fit its network stops the server here
            if model.name in tasks:
                raise ValueError(f"two bundles are named {model.name!r}; rename one folder.")
            tasks[model.name] = BundleInferTask(model, self.studies, self.medkd.get("project_python"))
            logger.info(f"+++ serving {model.name}: {model.type}, labels {list(model.labels)}")
        return tasks

    def infer(self, request: dict[str, Any], datastore: Any = None) -> dict[str, Any]:
        """MONAI Label's inference, with ``image`` also taken as a path relative to the studies folder (a DICOM
        series folder there: ``?image=<folder name>``), which MONAI Label's datastore does not list."""
        image = request.get("image")
        if isinstance(image, str) and image and not os.path.exists(image) and (Path(self.studies) / image).exists():
            request = {**request, "image": str(Path(self.studies) / image)}
        return super().infer(request, datastore)

    def init_trainers(self) -> dict[str, Any]:
        return {}

    def init_strategies(self) -> dict[str, Any]:
        return {}

    def init_scoring_methods(self) -> dict[str, Any]:
        return {}
