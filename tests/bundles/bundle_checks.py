"""The checks the MONAI model-zoo's CI runs on a bundle, shared by every bundle's tests.

``verify_metadata`` against the repository's schema (``bundles/metadata_schema.json``, written from MONAI's
bundle specification: nothing is downloaded), ``ConfigWorkflow(...).check_properties() == []``,
``verify_net_in_out`` on ``inference.json`` and ``ckpt_export`` to TorchScript compared with eager; and
:func:`stage_parsers`, the resolved config of every stage ``train.json`` runs, built without running anything.
"""

from __future__ import annotations

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
    """Stage name -> parser of the config that stage runs with, when ``config_files`` run with ``overrides``.

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
        parser = ConfigParser(stage_config(workflow.parser.get(), stage, configs))
        parser.parse()
        parsers[stage.name] = parser
    return parsers
