"""Running the stages of a multi-stage bundle, each an overlay of the bundle's one base workflow.

A bundle keeps one base training workflow, ``configs/train.json`` (data, transforms, validation, handlers, the
student), and writes every other stage as an overlay that replaces only what differs (network, loss terms, trainer,
checkpoint), the model-zoo's way for multi-stage bundles. ``train.json`` lists its stages as :class:`Stage` objects
and runs them with :func:`run_stages`.

A stage's config is the **raw config of the workflow that runs it** (``train.json``, any other file the user merged,
e.g. ``paper.json``, and every ``--id value`` given on the command line, nested ids included), then the stage's
overlay files merged in order as MONAI merges ``--config_file "['a.json', 'b.json']"``, then the stage's own ids
(e.g. ``source_index``). Nothing is forwarded by list: whatever the user set reaches every stage, except what a stage
overlay deliberately replaces. Each stage is one ``ConfigWorkflow`` (initialize, run, finalize), seeded by its own
``initialize``.

A stage names its outputs (checkpoints) in one place, its :class:`Stage` entry; a later stage that lacks them gets
:func:`stage_hint`'s message naming the stage to run.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle.utils import merge_kv
from torch import nn

from medkd_ext.distributed import (
    ONE_PER_RANK_ENV,
    TORCHRUN_ENV,
    barrier,
    gather_objects,
    is_distributed,
    is_main_process,
    rank,
    stage_scope,
    world_size,
)
from medkd_ext.engines.settings import check_recorded
from medkd_ext.errors import STAGE_ATTRIBUTE
from medkd_ext.handlers.resume import config_differences, state_path
from medkd_ext.networks.checkpoint import file_sha256, load_state_dict

__all__ = [
    "Stage",
    "as_flag",
    "check_override_types",
    "check_stage_output",
    "check_writable",
    "completion_path",
    "current_config",
    "disabled_stages",
    "for_each",
    "load_stage_output",
    "locate_bundle",
    "run_stage",
    "run_stages",
    "set_num_threads",
    "stage_config",
    "stage_hint",
    "stage_workflow",
]

logger = logging.getLogger(__name__)

BASE_CONFIG = "configs/train.json"
"""The base workflow of every bundle; it runs every stage in order."""


def as_flag(value: Any, name: str = "value") -> bool:
    """A boolean config value, also from the strings a command line gives (``"true"``/``"false"``, ``"1"``/``"0"``)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, Integral) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "1", "0", "yes", "no"):
        return value.strip().lower() in ("true", "1", "yes")
    raise ValueError(f"{name} must be true or false, got {value!r}.")


@dataclass
class Stage:
    """One stage of a bundle: overlay configs merged on the base workflow, the stage's own ids and its outputs.

    Written in a config as ``{"_target_": "medkd_ext.engines.Stage", "name": "joint_teacher", "config":
    "train_joint.json", "outputs": ["@joint_ckpt"]}``.

    Args:
        name: the stage's name, used in logs and messages (``"target_teacher"``, ``"teacher_3"``, ``"student"``).
        config: overlay file name(s) relative to the bundle's ``configs`` folder, merged in order after the running
            workflow's own config.
        ids: id -> raw config value set after the overlays (e.g. ``{"source_index": 1}``).
        outputs: files the stage writes; checked to exist after it ran, and named to a later stage that lacks them.
        enabled: a stage that is not enabled is skipped (``true``/``false``, also as command-line strings).
        reuse_outputs: skip the stage when every output exists already (a teacher trained once, or given by the user,
            and reused), unless a training state beside them shows that the stage was interrupted
            (:func:`medkd_ext.handlers.state_path`): then it runs again, or continues with ``--resume true``.
        one_per_rank: under torchrun with as many processes as there are consecutive ``one_per_rank`` stages (RoS-KD's
            k teachers on k GPUs), rank ``r`` trains the ``r``-th of them alone, in a process of its own on its own
            device, as a single-process run would; with another number of processes they run one after the other,
            each on every rank.
    """

    name: str
    config: str | Sequence[str]
    ids: Mapping[str, Any] = field(default_factory=dict)
    outputs: Sequence[str | os.PathLike] = ()
    enabled: bool | str = True
    reuse_outputs: bool | str = False
    one_per_rank: bool | str = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Stage name must be a non-empty string, got {self.name!r}.")
        self.config = [self.config] if isinstance(self.config, (str, os.PathLike)) else list(self.config)
        if not self.config or not all(isinstance(c, (str, os.PathLike)) for c in self.config):
            raise ValueError(f"stage '{self.name}': config must be a file name or a list of them, got {self.config!r}.")
        if isinstance(self.outputs, (str, os.PathLike)):
            self.outputs = [self.outputs]
        self.outputs = [str(o) for o in self.outputs]
        self.ids = dict(self.ids)
        self.enabled = as_flag(self.enabled, f"stage '{self.name}' enabled")
        self.reuse_outputs = as_flag(self.reuse_outputs, f"stage '{self.name}' reuse_outputs")
        self.one_per_rank = as_flag(self.one_per_rank, f"stage '{self.name}' one_per_rank")

    def command(self, bundle_root: str | os.PathLike | None = None) -> str:
        """The command line that runs this stage alone (the base workflow plus the stage's overlays).

        Args:
            bundle_root: the bundle's folder, to write the config paths from where the user runs (default: the
                bundle's folder itself, ``configs/...``).
        """
        root = "" if bundle_root in (None, "", ".") else os.fspath(bundle_root).rstrip("/") + "/"
        files = [root + BASE_CONFIG] + [f"{root}configs/{c}" for c in self.config]
        ids = "".join(f" --{k} {v}" for k, v in self.ids.items())
        return f"python -m monai.bundle run --config_file \"{files!r}\"{ids}"


def for_each(
    name: str,
    config: str | Sequence[str],
    index_id: str,
    count: int,
    outputs: Sequence[str | os.PathLike] = (),
    indices: Sequence[int] | None = None,
    **kwargs: Any,
) -> list[Stage]:
    """``count`` stages of one overlay, stage ``i`` named ``<name>_<i>`` with ``index_id`` set to ``i``.

    Args:
        name: base name of the stages.
        config: overlay file name(s) of every stage.
        index_id: the id that tells the overlay which one it is (``"source_index"``, ``"teacher_index"``).
        count: number of stages.
        outputs: one output per stage (``outputs[i]`` is written by stage ``i``), or empty.
        indices: only the stages of these indices (e.g. the one teacher a single-teacher method distils); default
            all ``count``.
        kwargs: other :class:`Stage` arguments, the same for every stage.
    """
    if isinstance(count, bool) or not isinstance(count, Integral) or count < 0:
        raise ValueError(f"for_each('{name}'): count must be a non-negative integer, got {count!r}.")
    outputs = list(outputs)
    if outputs and len(outputs) != count:
        raise ValueError(f"for_each('{name}'): {len(outputs)} outputs for {count} stages; give one per stage.")
    chosen = range(int(count)) if indices is None else list(indices)
    bad = [i for i in chosen if isinstance(i, bool) or not isinstance(i, Integral) or not 0 <= i < count]
    if bad:
        raise ValueError(f"for_each('{name}'): indices {bad} are not stage indices in [0, {count}).")
    return [
        Stage(f"{name}_{i}", config, ids={index_id: int(i)}, outputs=[outputs[i]] if outputs else (), **kwargs)
        for i in chosen
    ]


def disabled_stages(config_file: str | os.PathLike, names: Iterable[str]) -> dict[str, bool]:
    """The overrides that disable the stages named ``names`` in a bundle's ``config_file`` (its ``"stages"`` list):
    ``{"stages#<i>#enabled": False}``, found by name so that a script keeps working when stages are added.

    Raises:
        ValueError: a name that no stage of the file has (the names it has are listed).
    """
    stages = json.loads(Path(config_file).read_text(encoding="utf-8")).get("stages", [])
    by_name = {entry.get("name"): i for i, entry in enumerate(stages) if isinstance(entry, Mapping)}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"{config_file} has no stage named {missing}; its stages are {list(by_name)}.")
    return {f"stages#{by_name[n]}#enabled": False for n in names}


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Command-line overrides ``id=value`` (the scripts' ``--override``) as a dict of bundle ids: each value parsed as
    JSON (``64``, ``[1, 2]``, ``true``, ``null``), else kept as the string, as ``python -m monai.bundle run`` takes
    ``--id value``; nested ids (``network_def#widen_factor``) stay as written.

    Raises:
        ValueError: an item without ``=`` or without an id (the item named).
    """
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--override takes id=value (the value as JSON, e.g. image_size=64), got {item!r}.")
        try:
            overrides[key.strip()] = json.loads(text)
        except ValueError:
            overrides[key.strip()] = text
    return overrides


def _flatten(stages: Iterable[Stage | Iterable[Stage]]) -> list[Stage]:
    flat: list[Stage] = []
    for stage in stages:
        if isinstance(stage, Stage):
            flat.append(stage)
        elif isinstance(stage, Iterable) and not isinstance(stage, (str, Mapping)):
            flat.extend(_flatten(stage))
        else:
            raise TypeError(f"stages must be Stage objects (or lists of them), got {type(stage).__name__}.")
    return flat


def current_config() -> dict[str, Any]:
    """The raw config of the bundle workflow whose expression is being evaluated.

    That is the files the user gave merged in order, with every command-line ``--id value`` applied (macros and
    relative ids already expanded by MONAI's parser). It is found as the ``ConfigParser`` evaluating the calling
    expression, so call it only from a config expression (``"$medkd_ext.engines.run_stages(...)"``).
    """
    frame = sys._getframe(1)
    while frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, ConfigParser):
            return owner.get()
        frame = frame.f_back
    raise RuntimeError(
        "current_config() is called from a bundle config expression (\"$medkd_ext.engines.run_stages(...)\"); "
        "outside a config, pass the base config to run_stages(..., base_config=...)."
    )


def stage_config(
    base_config: Mapping[str, Any], stage: Stage, config_dir: str | os.PathLike
) -> dict[str, Any]:
    """The raw config of ``stage``: a copy of ``base_config``, its overlays merged in order, then its own ids."""
    parser = ConfigParser(config=copy.deepcopy(dict(base_config)))
    for name in stage.config:
        path = Path(config_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"stage '{stage.name}': config file {path} does not exist.")
        for key, value in ConfigParser.load_config_file(str(path)).items():
            merge_kv(parser, key, value)
    parser.update(dict(stage.ids))
    return parser.get()


def stage_workflow(
    base_config: Mapping[str, Any],
    stage: Stage,
    config_dir: str | os.PathLike,
    workflow_type: str = "train",
    config: Mapping[str, Any] | None = None,
) -> ConfigWorkflow:
    """A MONAI ``ConfigWorkflow`` (not initialised) over :func:`stage_config` (or ``config``, when the caller has
    built it already)."""
    config_dir = Path(config_dir)
    logging_file = config_dir / "logging.conf"
    workflow = ConfigWorkflow(
        config_file=None,
        meta_file=str(config_dir / "metadata.json"),
        logging_file=str(logging_file) if logging_file.is_file() else False,
        workflow_type=workflow_type,
    )
    workflow.config_root_path = config_dir
    workflow.parser.set(dict(config) if config is not None else stage_config(base_config, stage, config_dir))
    return workflow


def _run_workflow(workflow: ConfigWorkflow) -> None:
    workflow.initialize()
    try:
        workflow.run()
    finally:
        workflow.finalize()


def _kind(value: Any) -> str | None:
    """The kind of a literal default that a value given for it must have; ``None``: anything goes."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Integral):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, (list, tuple)):
        return "list"
    return None


def _fits(value: Any, kind: str) -> bool:
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        return True  # an expression or a reference: its value is known only when it is evaluated
    if kind == "boolean":
        return isinstance(value, (bool, Integral, str))  # parsed by as_flag, which refuses anything else
    numbers = (Integral,) if kind == "integer" else (Integral, float)
    if isinstance(value, (list, tuple)):  # a size or spacing per axis, for a single default (or a list default)
        return kind == "list" or all(isinstance(v, numbers) and not isinstance(v, bool) for v in value)
    if kind == "list":
        return isinstance(value, (Integral, float)) and not isinstance(value, bool)  # one value for every axis
    return isinstance(value, numbers) and not isinstance(value, bool)


def check_override_types(config: Mapping[str, Any], defaults_file: str | os.PathLike) -> None:
    """Refuse, before any stage trains, a top-level id whose value is not of the kind of its literal default in
    ``defaults_file`` (the bundle's ``train.json``): ``--max_epochs abc`` for the integer 80, ``--learning_rate
    fast`` for a number, ``--roi_size abc`` for a list (a number is one value for every axis, a list of numbers a
    value per axis). Ids whose default is an expression, a string or null are checked where they are used.

    Raises:
        TypeError: naming the id, the value given and the kind and value of the default.
    """
    path = Path(defaults_file)
    if not path.is_file():
        return
    defaults = ConfigParser.load_config_file(str(path))
    wrong = []
    for key, default in defaults.items():
        kind = _kind(default)
        if kind is None or key not in config or config[key] == default or _fits(config[key], kind):
            continue
        article = "an" if kind == "integer" else "a"
        wrong.append(f"{key} = {config[key]!r} is not {article} {kind} (default {default!r})")
    if wrong:
        raise TypeError(f"wrong value type in the ids given to {path}: " + "; ".join(wrong) + ".")


def completion_path(output: str | os.PathLike) -> Path:
    """Where :func:`run_stages` records that the stage writing ``output`` finished: ``models/model.pt`` ->
    ``models/state/model.done.json`` (beside the stage's training state, :func:`medkd_ext.handlers.state_path`)."""
    return state_path(output).with_suffix(".done.json")


def _resume_flag(config: Mapping[str, Any]) -> bool:
    value = config.get("resume", False)
    if isinstance(value, str) and value[:1] in ("$", "@", "%"):
        raise ValueError(f"resume must be true or false, not an expression ({value!r}).")
    return as_flag(value, "resume")


def _record_completion(stage: Stage, config: Mapping[str, Any]) -> None:
    """After ``stage`` finished: record its config and its outputs' SHA-256; remove its training state."""
    if not stage.outputs or not is_main_process():
        return
    record = {
        "stage": stage.name,
        "config": json.loads(json.dumps(dict(config), default=str)),
        "outputs": {os.path.basename(o): file_sha256(o) for o in stage.outputs},
    }
    path = completion_path(stage.outputs[0])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    for output in stage.outputs:
        state = state_path(output)
        if state.is_file():
            state.unlink()


def _completed(stage: Stage, config: Mapping[str, Any]) -> str | None:
    """Why ``stage`` must run again (``None``: it finished with this config and its outputs are as it wrote them)."""
    if not stage.outputs:
        return "it writes no file to check"
    path = completion_path(stage.outputs[0])
    if not path.is_file():
        return f"no record of it finishing ({path})"
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        recorded_outputs, recorded_config = record["outputs"], record["config"]
    except (ValueError, KeyError, TypeError):
        return f"its record {path} cannot be read"
    differences = config_differences(recorded_config, config)
    if differences:
        return "it ran with other settings (" + "; ".join(differences[:3]) + ")"
    for output in stage.outputs:
        if not Path(output).is_file():
            return f"{output} is missing"
        if recorded_outputs.get(os.path.basename(output)) != file_sha256(output):
            return f"{output} is not the file it wrote"
    return None


def check_writable(folders: Mapping[str, str | os.PathLike]) -> None:
    """Create each folder if needed and check that a file can be written in it, before any stage trains.

    Args:
        folders: id -> folder, e.g. ``{"ckpt_dir": @ckpt_dir, "output_dir": @output_dir}``.

    Raises:
        PermissionError: naming the id and the folder, for the first one that cannot be written.
    """
    for key, folder in folders.items():
        path = Path(folder)
        try:
            path.mkdir(parents=True, exist_ok=True)
            handle, name = tempfile.mkstemp(dir=path, prefix=".write-check-")
            os.close(handle)
            os.remove(name)
        except OSError as error:
            raise PermissionError(
                f"cannot write to {key} '{folder}' ({error.strerror or error}): give --{key} a folder you can write."
            ) from error


def _name_stage(error: BaseException, stage: Stage) -> None:
    if not hasattr(error, STAGE_ATTRIBUTE):
        try:
            setattr(error, STAGE_ATTRIBUTE, stage.name)  # the last line of the run names it (medkd_ext.errors)
        except AttributeError:
            pass


def _config_to_run(
    stage: Stage, base: Mapping[str, Any], config_dir: str | os.PathLike, resume: bool, times: dict[str, float]
) -> dict[str, Any] | None:
    """The raw config ``stage`` runs with, or ``None`` (and its time 0.0 in ``times``) when it is skipped."""
    if not stage.enabled:
        logger.info("stage %s skipped: not enabled", stage.name)
        times[stage.name] = 0.0
        return None
    if stage.reuse_outputs and stage.outputs and all(Path(o).is_file() for o in stage.outputs):
        interrupted = [str(state_path(o)) for o in stage.outputs if state_path(o).is_file()]
        if not interrupted:
            logger.info("stage %s skipped: its outputs %s exist", stage.name, stage.outputs)
            times[stage.name] = 0.0
            return None
        logger.info("stage %s runs although its outputs exist: it was interrupted (%s)", stage.name, interrupted)
    config = stage_config(base, stage, config_dir)
    if resume:
        reason = _completed(stage, config)
        if reason is None:
            logger.info("stage %s skipped (--resume true): it finished with these settings, its outputs %s are "
                        "as it wrote them", stage.name, stage.outputs)
            barrier()  # every rank has decided before rank 0 removes a state file another rank may still read
            for output in stage.outputs:  # a later, interrupted rerun of a finished stage: its output stands
                if is_main_process() and state_path(output).is_file():
                    state_path(output).unlink()
            times[stage.name] = 0.0
            return None
        logger.info("stage %s runs (--resume true): %s", stage.name, reason)
    return config


def _finish(stage: Stage, config: Mapping[str, Any]) -> None:
    missing = [o for o in stage.outputs if not Path(o).is_file()]
    if missing:
        raise RuntimeError(f"stage '{stage.name}' finished without writing {missing}; see its log above.")
    _record_completion(stage, config)
    barrier()


def _one_per_rank_group(flat: Sequence[Stage], index: int) -> list[Stage]:
    """The consecutive ``one_per_rank`` stages from ``index`` when there is one per rank, else ``[]``."""
    if not is_distributed() or not flat[index].one_per_rank:
        return []
    group = []
    for stage in flat[index:]:
        if not stage.one_per_rank:
            break
        group.append(stage)
    if len(group) != world_size():
        if index == 0 or not flat[index - 1].one_per_rank:
            logger.info("%d one-per-rank stages for %d processes: each runs on every rank, one after the other",
                        len(group), world_size())
        return []
    return group


def _run_one_per_rank(
    group: Sequence[Stage], base: Mapping[str, Any], config_dir: str | os.PathLike, resume: bool
) -> dict[str, float]:
    """Rank ``r`` runs ``group[r]`` alone: a ``python -m monai.bundle run`` of its config without torchrun's
    environment (``LOCAL_RANK`` stays, so ``multi_gpu_train.json``'s device is this rank's GPU), so that it trains as a
    single-process run does; every rank then checks every output and rank 0 records them."""
    times: dict[str, float] = {}
    configs = [_config_to_run(stage, base, config_dir, resume, times) for stage in group]
    stage, config = group[rank()], configs[rank()]
    outcome: tuple[str, int, float] = (stage.name, 0, 0.0)
    if config is not None:
        logger.info("running stage %s alone on rank %d", stage.name, rank())
        outcome = _run_alone(stage, config, Path(config_dir))
    outcomes = gather_objects(outcome)
    failed = [(name, r, code) for r, (name, code, _) in enumerate(outcomes) if code != 0]
    if failed:
        name, r, code = failed[0]
        raise RuntimeError(f"stage '{name}' failed on rank {r} (exit status {code}); see that rank's log above.")
    for (name, _, seconds), stage, config in zip(outcomes, group, configs, strict=True):
        if config is None:
            continue
        times[name] = seconds
        logger.info("stage %s finished in %.1f s", name, seconds)
        _finish(stage, config)
    return times


def _run_alone(stage: Stage, config: Mapping[str, Any], config_dir: Path) -> tuple[str, int, float]:
    """``stage`` with ``config`` as a process of its own, outside the process group; (name, exit status, seconds)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TORCHELASTIC_", "GROUP_", "ROLE_"))
           and k not in (*TORCHRUN_ENV, "LOCAL_WORLD_SIZE")}
    env[ONE_PER_RANK_ENV] = str(rank())
    with tempfile.TemporaryDirectory(prefix=f"medkd-{stage.name}-") as folder:
        config_file = Path(folder) / "config.json"
        config_file.write_text(json.dumps(dict(config), default=str), encoding="utf-8")
        command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(config_file),
                   "--meta_file", str(config_dir / "metadata.json")]
        if (config_dir / "logging.conf").is_file():
            command += ["--logging_file", str(config_dir / "logging.conf")]
        start = time.perf_counter()
        code = subprocess.run(command, env=env, check=False).returncode
    return stage.name, code, time.perf_counter() - start


def run_stages(
    stages: Iterable[Stage | Iterable[Stage]],
    config_dir: str | os.PathLike,
    base_config: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Run ``stages`` in order, each a ``ConfigWorkflow`` over the running workflow's config plus its overlays.

    With ``resume`` true in the config (``--resume true``), a stage that finished before with the same config (ids
    other than :data:`medkd_ext.handlers.resume.RUN_ONLY_IDS`) and whose outputs still have the SHA-256 it recorded
    (:func:`completion_path`) is skipped; the others run with ``resume``, so an interrupted stage continues from its
    last saved epoch (:class:`medkd_ext.handlers.TrainingState`). After a stage finishes, its completion is recorded
    and its training state removed.

    Args:
        stages: :class:`Stage` objects or lists of them (as :func:`for_each` returns).
        config_dir: the bundle's ``configs`` folder, where the overlays are.
        base_config: the raw config the stages are built on; default the workflow evaluating this call
            (:func:`current_config`), so that every id the user gave reaches every stage.

    Returns:
        Stage name -> wall time in seconds (``0.0`` for a skipped stage).

    Raises:
        RuntimeError: a stage finished without writing one of its outputs.
    """
    base = current_config() if base_config is None else base_config
    check_override_types(base, Path(config_dir) / "train.json")
    resume = _resume_flag(base)
    flat = _flatten(stages)
    interrupted = [(s.name, state_path(o)) for s in flat if s.enabled for o in s.outputs[:1] if state_path(o).is_file()]
    if interrupted and not resume:
        logger.warning(
            "an earlier run was interrupted in stage %s (its training state: %s); this run starts every stage over. "
            "To skip the stages that finished and continue that one, run the same command with --resume true.",
            interrupted[0][0], interrupted[0][1],
        )
    times: dict[str, float] = {}
    with stage_scope():
        index = 0
        while index < len(flat):
            group = _one_per_rank_group(flat, index)
            if group:
                times.update(_run_one_per_rank(group, base, config_dir, resume))
                index += len(group)
                continue
            stage = flat[index]
            index += 1
            config = _config_to_run(stage, base, config_dir, resume, times)
            if config is None:
                continue
            logger.info("running stage %s", stage.name)
            start = time.perf_counter()
            try:
                _run_workflow(stage_workflow(base, stage, config_dir, config=copy.deepcopy(config)))
            except BaseException as error:
                _name_stage(error, stage)
                raise
            barrier()  # rank 0 has written the stage's outputs before any rank looks for them
            times[stage.name] = time.perf_counter() - start
            logger.info("stage %s finished in %.1f s", stage.name, times[stage.name])
            _finish(stage, config)
    return times


def stage_hint(
    stages: Iterable[Stage | Iterable[Stage]], path: str | os.PathLike, bundle_root: str | os.PathLike | None = None
) -> str:
    """What to run to get ``path``: the stage whose outputs name it, for a missing-checkpoint message.

    Args:
        stages: the bundle's stages (its ``stages`` id).
        path: the missing file.
        bundle_root: the bundle's folder, so that the command in the message runs from where the user is.
    """
    target = os.path.normpath(os.fspath(path))
    root = "" if bundle_root in (None, "", ".") else os.fspath(bundle_root).rstrip("/") + "/"
    for stage in _flatten(stages):
        if any(os.path.normpath(o) == target for o in stage.outputs):
            return (
                f"written by stage '{stage.name}': run {root}{BASE_CONFIG}, which runs every stage in order, "
                f"or that stage alone: {stage.command(bundle_root)}"
            )
    return f"run {root}{BASE_CONFIG} first, which writes it"


def load_stage_output(
    network: nn.Module,
    path: str | os.PathLike,
    device: str | torch.device,
    stages: Iterable[Stage | Iterable[Stage]] = (),
    bundle_root: str | os.PathLike | None = None,
    settings: Mapping[str, Any] | None = None,
) -> nn.Module:
    """``network`` on ``device`` with the weights a stage wrote to ``path``; a missing or unfitting file is reported
    with the stage that writes it (:func:`stage_hint`) and the command that runs it.

    ``settings`` (id -> this run's value), when given, are checked against the record the stage wrote beside
    ``path`` (:func:`check_stage_output`) before anything is loaded.
    """
    hint = stage_hint(stages, path, bundle_root)
    if settings is not None and os.path.isfile(path):
        check_stage_output(path, settings, hint)
    return load_state_dict(network.to(device), path, device=device, stage_hint=hint)


def check_stage_output(path: str | os.PathLike, settings: Mapping[str, Any], hint: str) -> None:
    """Refuse a stage output (a teacher) whose record disagrees with ``settings``: a stage run alone without the
    files or ids the stage that wrote ``path`` ran with (``paper.json``, your data) stops before training, naming
    each id with both values, instead of training on mismatched input or data."""
    check_recorded(
        path,
        settings,
        advice=f"Give this stage the config files and ids that stage ran with, or train that stage again ({hint}).",
    )


def run_stage(
    config_file: str | os.PathLike | Sequence[str | os.PathLike],
    overrides: Mapping[str, Any] | None = None,
    meta_file: str | os.PathLike | None = None,
    workflow_type: str = "train",
) -> float:
    """Run config file(s) merged in order, with ``overrides``, as one ``ConfigWorkflow``; return its wall time.

    What ``python -m monai.bundle run --config_file "[...]" --id value`` does, for scripts and tests.
    """
    files = [Path(config_file)] if isinstance(config_file, (str, os.PathLike)) else [Path(f) for f in config_file]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"run_stage: config file {f} does not exist.")
    start = time.perf_counter()
    workflow = ConfigWorkflow(
        config_file=[str(f) for f in files],
        meta_file=str(meta_file if meta_file is not None else files[0].parent / "metadata.json"),
        workflow_type=workflow_type,
        **dict(overrides or {}),
    )
    _run_workflow(workflow)
    return time.perf_counter() - start


def set_num_threads(num_threads: int | None) -> int:
    """Set the number of CPU threads torch uses (``num_threads`` of every bundle) and return it.

    ``None`` takes half of the CPU cores this process may use (at least 1), so that a training does not thrash with
    another process on the same machine (a demo epoch went from 7 s to 175 s with two processes each using every
    core); a positive integer is used as given.
    """
    if num_threads is None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        num_threads = max(1, cores // 2)
    if isinstance(num_threads, bool) or not isinstance(num_threads, Integral) or num_threads < 1:
        raise ValueError(f"num_threads must be a positive integer or null (half the cores), got {num_threads!r}.")
    torch.set_num_threads(int(num_threads))
    return int(num_threads)


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
