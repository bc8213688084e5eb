"""Running the stages of a multi-stage bundle in order.

A multi-stage bundle keeps one config per stage (``train_teachers.json``, ``train_student.json``, ...), each a
complete MONAI train workflow, and a ``train.json`` that runs the earlier stages with :func:`run_stages` before its
own trainer, passing its top-level ids (``device``, ``dataset_dir``, ``seed``, ...) on, so that one command line
override reaches every stage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

__all__ = ["run_stage", "run_stages", "locate_bundle"]

logger = logging.getLogger(__name__)


def locate_bundle(name: str) -> str:
    """The folder of bundle ``name``, for a config's ``bundle_root`` default.

    The current folder when the command runs inside the bundle (it has ``configs/`` and the bundle's name), else
    ``bundles/<name>`` under the current folder (the repository root, as the README's commands run), else the
    bundle beside the installed ``medkd_ext`` package (an editable install run from elsewhere).
    """
    here = Path.cwd()
    if here.name == name and (here / "configs").is_dir():
        return "."
    candidates = [Path("bundles") / name, Path(__file__).resolve().parents[2] / "bundles" / name]
    for candidate in candidates:
        if (candidate / "configs").is_dir():
            return str(candidate)
    raise FileNotFoundError(
        f"bundle '{name}' not found in {here}, {here / 'bundles'} or beside medkd_ext; run from the repository root "
        "or pass --bundle_root <path to the bundle>."
    )


def run_stage(
    config_file: str | Path | Sequence[str | Path],
    overrides: Mapping[str, Any] | None = None,
    meta_file: str | Path | None = None,
    logging_file: str | Path | None = None,
    workflow_type: str = "train",
) -> float:
    """Run one stage config as a MONAI ``ConfigWorkflow`` (initialize, run, finalize).

    Args:
        config_file: the stage's config, or a list of configs merged in order (a stage plus overlays).
        overrides: id -> value set on the stage's parser before it is initialised.
        meta_file: the bundle's ``metadata.json``; defaults to ``configs/metadata.json`` beside the config.
        logging_file: a logging config; ``None`` leaves logging as the caller set it.
        workflow_type: ``"train"`` or ``"infer"``.

    Returns:
        The stage's wall time in seconds.
    """
    files = [Path(config_file)] if isinstance(config_file, (str, Path)) else [Path(f) for f in config_file]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"run_stage: config file {f} does not exist.")
    if meta_file is None:
        meta_file = files[0].parent / "metadata.json"
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files] if len(files) > 1 else str(files[0]),
        meta_file=str(meta_file),
        logging_file=str(logging_file) if logging_file is not None else None,
        workflow_type=workflow_type,
        **dict(overrides or {}),
    )
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()
    elapsed = time.perf_counter() - start
    logger.info("stage %s finished in %.1f s", files[-1].name, elapsed)
    return elapsed


def run_stages(
    config_dir: str | Path,
    stages: Sequence[str | Sequence[str] | Mapping[str, Any]],
    overrides: Mapping[str, Any] | None = None,
    skip_if_exists: Mapping[str, str | Path] | None = None,
    overlays: Sequence[str | Path] = (),
) -> dict[str, float]:
    """Run stage configs of a bundle in order, each with the same top-level overrides.

    Args:
        config_dir: the bundle's ``configs`` folder.
        stages: config file names (relative to ``config_dir``), lists of names merged in order, or dicts
            ``{"config": name or list, "overrides": {...}}`` whose overrides add to the common ones (e.g. the
            index of the source dataset a stage trains on).
        overrides: id -> value passed to every stage (e.g. ``{"device": @device, "dataset_dir": @dataset_dir}``).
        skip_if_exists: stage name -> output file; a stage whose output exists is skipped (used for a teacher that
            only has to be trained once).
        overlays: config files merged after every stage's config (e.g. ``paper.json``), so that an overlay given
            to ``train.json`` applies to every stage.

    Returns:
        Stage name -> wall time in seconds (``0.0`` for a skipped stage).
    """
    config_dir = Path(config_dir)
    times: dict[str, float] = {}
    for stage in stages:
        extra: Mapping[str, Any] = {}
        if isinstance(stage, Mapping):
            extra = stage.get("overrides", {})
            stage = stage["config"]
        names = [stage] if isinstance(stage, str) else list(stage)
        key = names[0] + "".join(f" {k}={v}" for k, v in extra.items())
        output = (skip_if_exists or {}).get(names[0])
        if output is not None and Path(output).exists():
            logger.info("stage %s skipped: its output %s exists", key, output)
            times[key] = 0.0
            continue
        logger.info("running stage %s", key)
        times[key] = run_stage(
            [config_dir / n for n in names] + [Path(o) for o in overlays], overrides={**(overrides or {}), **extra}
        )
    return times
