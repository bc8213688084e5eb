"""Speed benchmark of the medkd bundles: distillation overhead, teacher-output cache, joint teacher, data loading and
inference backends, each measured in the same run on the bundles' own networks and trainers.

Run from the repository root (defaults: under 10 minutes on a 2-core CPU; cuda when available)::

    python scripts/benchmark.py
    python scripts/benchmark.py --device cpu --num_threads 2 --out eval/benchmark
    python scripts/benchmark.py --quick --device cpu --out /tmp/benchmark   # a small run (the test's)

It writes ``benchmark.json`` (every figure, its target, the timings it is made of, peak memory, the machine) and
``benchmark.md`` (the same as Markdown tables, also printed) into ``--out``. Figures:

- ``kd_step_ratio_1_teacher``, ``kd_step_ratio_5_teachers``: one RoS-KD distillation iteration
  (``medkd_ext.engines.DistillationTrainer`` as ``bundles/roskd_classification/configs/train.json`` builds it: the
  student, the loss terms of method ``roskd``, the teachers of ``teacher_defs``) / (one student-only iteration, MONAI's
  ``SupervisedTrainer`` on the same student, optimizer and supervised loss + the teachers' forward passes in
  ``eval()`` under ``torch.inference_mode()``), all on the same batch. Target <= 1.05.
- ``cached_epoch_ratio``: an epoch of that trainer (five teachers) with the teacher-output cache
  (``teacher_cache_views`` V), after the V epochs that compute the views / a student-only epoch over the same data.
  Target <= 1.2.
- ``joint_stage2_ratio``: a stage-2 iteration of ``bundles/joint_teacher_seg`` (``train_joint.json``: the
  ``JointTeacher`` over frozen dataset teachers) / a stage-1a iteration (``train_target_teacher.json``: the target
  teacher alone), same batch of patches. The paper reports about 3.
- ``student_vs_joint_inference``: sliding-window inference (the bundle's ``SlidingWindowInferer``: ``roi_size``,
  ``sw_batch_size`` 4, overlap 0.25) of the joint bundle's student / of the joint teacher, same volume. Target <= 0.33.
- ``load_share_roskd``, ``load_share_attention_transfer``, ``load_share_joint``: in each bundle's student-stage
  training loop (its ``CacheDataset``, train transforms, loader, ``num_workers`` and ``prefetch_batches``), the time
  spent in ``next(loader)`` / the time of the whole iteration (loading + training step). Target <= 0.05.
- ``inference_<student>_<backend>``: each bundle's student (RoS-KD ResNet-18, attention-transfer DenseNet-40,
  joint-teacher UNet) on one batch: eager PyTorch vs TorchScript (``torch.jit.script`` as MONAI's ``ckpt_export``,
  else ``torch.jit.trace``) and ONNX Runtime (when ``onnxruntime`` is installed: ``pip install -e '.[onnx]'``).
  The value is the speed-up over eager; the outputs must agree with eager within 1e-4.

The networks, loaders and trainers are built by ``monai.bundle.ConfigParser`` from the bundles' config files, with
command-line-style overrides only: the teachers are the configs' networks untrained (speed does not depend on the
weights, and no checkpoint or download is needed), the single RoS-KD teacher is ``hinton_teacher`` (the DenseNet of
Baseline II), the training handlers (validation, logging, checkpoints) are left out, and an iteration is the trainer's
``_iteration`` (forward, loss terms, backward, optimizer step; not ignite's event handlers). The cached-epoch figure
uses the first ``cache_cases`` training cases. ``--quick`` generates small demos in a temporary folder and shrinks
image, patch, batch and volume sizes and every count. Every time is the median of ``--repeats`` runs after warm-up runs
(``time.perf_counter``, ``torch.cuda.synchronize`` on CUDA); the figures that compare two things interleave their
runs, so that a load on the machine affects both sides alike. The ratios are reported against their targets as
measured: nothing here is tuned to pass.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import monai
import torch
from monai.bundle import ConfigParser
from monai.utils import set_determinism
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from a checkout without an installed medkd_ext
    sys.path.insert(0, str(REPO))

import medkd_ext.data  # noqa: E402
from medkd_ext.engines import set_num_threads  # noqa: E402
from medkd_ext.export import AGREEMENT_TOLERANCE, onnx_bytes, to_torchscript  # noqa: E402
from medkd_ext.networks.frozen import unwrap_network  # noqa: E402

BUNDLES = REPO / "bundles"
ROSKD, AT, JOINT = "roskd_classification", "attention_transfer_densenet", "joint_teacher_seg"
NOT_INSTALLED = "not installed"

# MONAI's SupervisedTrainer on the bundle's student, optimizer and supervised loss: the student-only iteration (as
# train_teacher.json builds the RoS-KD teachers' trainer).
STUDENT_ONLY_TRAINER = {
    "_target_": "SupervisedTrainer",
    "max_epochs": "@max_epochs",
    "device": "@device",
    "train_data_loader": "@train#dataloader",
    "network": "@network",
    "loss_function": "@loss",
    "optimizer": "@optimizer",
    "inferer": "@train#inferer",
    "train_handlers": "@train#handlers",
}


@dataclass(frozen=True)
class Settings:
    """What the benchmark runs; ``--quick`` shrinks every size and count (:data:`QUICK`)."""

    warmup: int = 2
    """untimed runs before the timed ones (iterations, inference batches)."""
    repeats: int = 7
    """timed runs of which the median is reported."""
    classification_size: int | None = None
    """``image_size`` of the classification bundles; ``None``: the bundles' default (64)."""
    classification_cases: int | None = None
    """cases of a classification demo generated for this run; ``None``: the bundles' default demo."""
    classification_batch: int | None = None
    """``batch_size`` of the classification bundles; ``None``: the bundles' default (16)."""
    segmentation_size: int | None = None
    """volume edge of a segmentation demo generated for this run; ``None``: the joint bundle's default demo."""
    roi_size: int | None = None
    """edge of the joint bundle's ``roi_size`` (training patch, sliding window); ``None``: its default (32)."""
    cache_views: int = 2
    """``teacher_cache_views`` V of the cached-epoch figure."""
    cache_cases: int | None = 128
    """training cases of the cached-epoch figure (the first of the bundle's training split); ``None``: all."""
    cached_epochs: int = 2
    """epochs timed after the V that compute the views (and after one warm-up epoch of the student-only trainer)."""
    load_iterations: int = 10
    """timed iterations of each student-stage training loop (load share)."""
    volume_size: int = 64
    """edge of the volume of the sliding-window inference figure."""
    inference_repeats: int = 3
    """timed sliding-window inferences."""
    backend_batch: int | None = None
    """batch of the inference-backend figures (at the bundles' default input sizes); ``None``: the bundles' own
    (``batch_size`` of the classification bundles, ``sw_batch_size`` of the joint bundle's sliding window)."""


QUICK = Settings(
    warmup=1,
    repeats=3,
    classification_size=32,
    classification_cases=48,
    classification_batch=8,
    segmentation_size=32,
    roi_size=16,
    cache_views=1,
    cache_cases=16,
    cached_epochs=1,
    load_iterations=2,
    volume_size=32,
    inference_repeats=2,
    backend_batch=2,
)


@dataclass
class Figure:
    """One measured figure: its value, its target and what it is made of."""

    key: str
    value: float | str
    unit: str
    target: str | None
    met: bool | None
    measures: str
    peak_memory_mb: float | None = None
    memory_kind: str = ""
    details: dict[str, Any] = field(default_factory=dict)


# -- timing and memory --------------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_once(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds ``fn()`` takes, the device synchronized before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(
    fns: Mapping[str, Callable[[], Any]], device: torch.device, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """``warmup`` untimed then ``repeats`` timed rounds of every ``fns`` entry in turn: {name: seconds per run}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(time_once(fn, device))
    return times


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def _proc_status_kib(field_name: str) -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    found = re.search(rf"^{field_name}:\s+(\d+)\s+kB", text, re.MULTILINE)
    return int(found.group(1)) if found else None


class PeakMemory:
    """Peak memory while the block runs.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``. CPU: the process's peak
    resident set size (``VmHWM`` of ``/proc/self/status``), reset when the block starts by writing 5 to
    ``/proc/self/clear_refs`` (Linux); where that is refused, ``resource.getrusage``'s peak since the process started.
    ``increase_mb`` is the peak minus the resident size when the block started (allocated memory on CUDA).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mb: float | None = None
        self.increase_mb: float | None = None
        self.kind = ""

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            self.kind = "CUDA max_memory_allocated"
            return self
        self._reset = False
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
        except OSError:
            pass
        self._start = (_proc_status_kib("VmRSS") or 0) * 1024
        self.kind = "process peak RSS" + ("" if self._reset else " since start")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            hwm = _proc_status_kib("VmHWM")
            if hwm is None:
                import resource

                hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
            peak = hwm * 1024
        self.peak_mb = peak / 2**20
        self.increase_mb = max(peak - self._start, 0) / 2**20


def measured(device: torch.device, build: Callable[[], list[Figure]]) -> list[Figure]:
    """Run ``build`` (what one or several figures are made of, built and measured) inside :class:`PeakMemory`, after
    the objects of the previous figures are freed; record the peak and the wall time on its figures."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    start = time.perf_counter()
    with PeakMemory(device) as memory:
        figures = build()
    for figure in figures:
        figure.peak_memory_mb = round(memory.peak_mb, 1)
        figure.memory_kind = memory.kind
        figure.details["memory_increase_mb"] = round(memory.increase_mb, 1)
        figure.details["wall_s"] = round(time.perf_counter() - start, 1)
    return figures


def ratio_figure(key: str, value: float, target: float, measures: str, details: dict[str, Any]) -> Figure:
    return Figure(key, value, "ratio", f"<= {target:g}", value <= target, measures, details=details)


# -- the bundles' configs -------------------------------------------------------------------------------------------


@dataclass
class Context:
    """What every figure needs: the device, the settings, a scratch folder, the classification demo to use."""

    device: torch.device
    settings: Settings
    seed: int
    work_dir: Path
    classification_dir: str | None = None
    segmentation_dir: str | None = None


def bundle_parser(
    context: Context,
    bundle: str,
    files: Sequence[str],
    overrides: Mapping[str, Any] | None = None,
    run_sizes: bool = True,
) -> ConfigParser:
    """The bundle's config files merged in order, with ``overrides`` applied as command-line ids are
    (``python -m monai.bundle run --config_file "[...]" --id value``), checkpoints and outputs under the scratch
    folder, the bundle's training handlers (validation, logging, checkpoints) left out, seeded as the bundle's
    ``initialize`` seeds. ``run_sizes``: this run's data and input sizes (``--quick``'s), else the bundle's."""
    configs = BUNDLES / bundle / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in files])
    scratch = context.work_dir / bundle
    values: dict[str, Any] = {
        "bundle_root": str(BUNDLES / bundle),
        "ckpt_dir": str(scratch / "models"),
        "output_dir": str(scratch / "eval"),
        "device": f"$torch.device('{context.device}')",
        "seed": context.seed,
        "train#handlers": [],
    }
    if bundle in (ROSKD, AT) and run_sizes:
        if context.classification_dir is not None:
            values["dataset_dir"] = context.classification_dir
        if context.settings.classification_size is not None:
            values["image_size"] = context.settings.classification_size
        if context.settings.classification_batch is not None:
            values["batch_size"] = context.settings.classification_batch
    if bundle == JOINT and run_sizes:
        if context.segmentation_dir is not None:
            values["dataset_dir"] = context.segmentation_dir
        if context.settings.roi_size is not None:
            values["roi_size"] = [context.settings.roi_size] * 3
    values.update(overrides or {})
    parser.update(values)
    set_determinism(seed=context.seed)
    return parser


def first_batch(loader: Any) -> Any:
    return next(iter(loader))


def iteration(trainer: Any, batch: Any) -> Callable[[], Any]:
    """One training iteration of ``trainer`` (its ``_iteration``: forward, loss, backward, optimizer step) on
    ``batch``, as ``trainer.run()`` performs it for every batch."""
    return lambda: trainer._iteration(trainer, batch)


def roskd_teachers(count: int) -> str:
    """Override of the RoS-KD ``teachers`` id: the untrained networks of ``teacher_defs`` instead of checkpoints;
    ``count`` 1 takes the single-teacher baseline's teacher (``hinton_teacher``), 5 all of them."""
    if count == 1:
        return "$dict([(str(@hinton_teacher), @teacher_defs[@hinton_teacher])])"
    return f"$dict((str(i), t) for i, t in enumerate(@teacher_defs[:{count}]))"


def describe_batch(batch: Mapping[str, Any]) -> str:
    return "x".join(str(s) for s in batch["image"].shape)


# -- figures --------------------------------------------------------------------------------------------------------


def kd_step_figures(context: Context) -> list[Figure]:
    """``kd_step_ratio`` for one teacher and for five (RoS-KD networks and loss terms, one batch of the demo)."""
    figures = []
    for count in (1, 5):
        figures += measured(context.device, lambda count=count: [kd_step_ratio(context, count)])
    return figures


def kd_step_ratio(context: Context, count: int) -> Figure:
    settings, device = context.settings, context.device
    distill = bundle_parser(context, ROSKD, ["train.json"], {"teachers": roskd_teachers(count)})
    trainer = distill.get_parsed_content("train#trainer")
    student = bundle_parser(context, ROSKD, ["train.json"], {"train#trainer": STUDENT_ONLY_TRAINER})
    plain = student.get_parsed_content("train#trainer")
    batch = first_batch(trainer.data_loader)
    images = batch["image"].to(device)
    teachers = [unwrap_network(t) for t in trainer.teachers.values()]

    def teachers_forward() -> None:
        with torch.inference_mode():
            for teacher in teachers:
                teacher.eval()
                teacher(images)

    runs = {
        "student_only": iteration(plain, batch),
        "teachers_forward": teachers_forward,
        "kd": iteration(trainer, batch),
    }
    times = interleaved_times(runs, device, settings.warmup, settings.repeats)
    t = {name: median(v) for name, v in times.items()}
    value = t["kd"] / (t["student_only"] + t["teachers_forward"])
    names = ", ".join(type(n).__name__ for n in teachers)
    key = "kd_step_ratio_1_teacher" if count == 1 else f"kd_step_ratio_{count}_teachers"
    return ratio_figure(
        key, value, 1.05,
        f"RoS-KD DistillationTrainer iteration ({count} teacher(s): {names}; loss terms of method roskd) / "
        f"(SupervisedTrainer iteration of the {type(plain.network).__name__} student + the teachers' forward "
        f"passes), batch {describe_batch(batch)}",
        {f"{name}_s": v for name, v in t.items()} | {"times_s": times, "batch": describe_batch(batch)},
    )


def cached_epoch_figure(context: Context) -> list[Figure]:
    """``cached_epoch_ratio``: an epoch read from the teacher-output cache (five RoS-KD teachers) / a student-only
    epoch, the same data.

    The cached trainer first runs the V epochs that compute the views, the student-only trainer one warm-up epoch;
    then the two alternate, one epoch each, ``cached_epochs`` times (each ``run()`` continues the previous one).
    """
    settings = context.settings
    views = settings.cache_views
    subset = {}
    if settings.cache_cases is not None:
        subset = {"train#dataset#data": f"$@splits['train'][:{settings.cache_cases}]"}
    distill = bundle_parser(
        context, ROSKD, ["train.json"],
        {"teachers": roskd_teachers(5), "teacher_cache_views": views, "max_epochs": views} | subset,
    )
    trainer = distill.get_parsed_content("train#trainer")
    student_only = {"train#trainer": STUDENT_ONLY_TRAINER, "max_epochs": 1}
    student = bundle_parser(context, ROSKD, ["train.json"], student_only | subset)
    plain = student.get_parsed_content("train#trainer")
    cached_times, plain_times = epoch_times(trainer), epoch_times(plain)
    trainer.run()
    plain.run()
    for _ in range(settings.cached_epochs):
        for engine in (plain, trainer):
            engine.state.max_epochs += 1
            engine.run()
    cache = trainer.teacher_cache
    cached, alone = median(cached_times[views:]), median(plain_times[1:])
    batches = len(trainer.data_loader)
    return [
        ratio_figure(
            "cached_epoch_ratio", cached / alone, 1.2,
            f"RoS-KD epoch (5 teachers, teacher_cache_views={views}, {len(trainer.data_loader.dataset)} cases, "
            f"{batches} batches of {distill.get_parsed_content('batch_size')}) after the {views} epoch(s) computing "
            "the views / SupervisedTrainer epoch of the student on the same data",
            {
                "cached_epoch_s": cached, "student_only_epoch_s": alone, "cached_epochs_s": cached_times,
                "student_only_epochs_s": plain_times, "cache_stats": dict(cache.stats),
                "cached_views": cache.num_cached(), "cache_storage": dict(cache.plan.terms) if cache.plan else {},
            },
        )
    ]


def epoch_times(trainer: Any) -> list[float]:
    """Seconds of every epoch of ``trainer`` (filled as it runs)."""
    from ignite.engine import Events

    times: list[float] = []
    start: list[float] = []

    def started(engine: Any) -> None:
        synchronize(engine.state.device)
        start.append(time.perf_counter())

    def completed(engine: Any) -> None:
        synchronize(engine.state.device)
        times.append(time.perf_counter() - start[-1])

    trainer.add_event_handler(Events.EPOCH_STARTED, started)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, completed)
    return times


def joint_parsers(context: Context) -> tuple[ConfigParser, ConfigParser]:
    """The joint bundle's stage 1a (target teacher) and stage 2 (joint teacher over untrained dataset teachers)."""
    untrained = {"teachers": "$[@teacher_def().to(@device) for _ in @teacher_ckpts]"}
    target = bundle_parser(context, JOINT, ["train.json", "train_target_teacher.json"])
    joint = bundle_parser(context, JOINT, ["train.json", "train_target_teacher.json", "train_joint.json"], untrained)
    return target, joint


def joint_stage2_figure(context: Context) -> list[Figure]:
    """``joint_stage2_ratio``: a stage-2 (joint teacher) iteration / a stage-1a (target teacher) iteration."""
    settings = context.settings
    target, joint = joint_parsers(context)
    target_trainer = target.get_parsed_content("train#trainer")
    joint_trainer = joint.get_parsed_content("train#trainer")
    batch = first_batch(target_trainer.data_loader)
    times = interleaved_times(
        {"target_teacher": iteration(target_trainer, batch), "joint_teacher": iteration(joint_trainer, batch)},
        context.device, settings.warmup, settings.repeats,
    )
    t = {name: median(v) for name, v in times.items()}
    teachers = len(joint.get_parsed_content("teacher_ckpts"))
    arch = joint.get_parsed_content("teacher_arch")
    value = t["joint_teacher"] / t["target_teacher"]
    return [
        Figure(
            "joint_stage2_ratio", value, "ratio", "~3 (paper)", None,
            f"joint-teacher stage-2 iteration (JointTeacher over {teachers} frozen {arch} teachers, DiceCE) / "
            f"stage-1a iteration (target {arch} teacher, Dice), batch {describe_batch(batch)}",
            details={f"{name}_s": v for name, v in t.items()} | {"times_s": times, "batch": describe_batch(batch)},
        )
    ]


def student_vs_joint_figure(context: Context) -> list[Figure]:
    """``student_vs_joint_inference``: sliding-window inference of the joint bundle's student / of its joint teacher."""
    settings, device = context.settings, context.device
    _, joint = joint_parsers(context)
    teacher = joint.get_parsed_content("network").eval()
    student = joint.get_parsed_content("student_def")().to(device).eval()
    inferer = joint.get_parsed_content("validate#inferer")
    size = settings.volume_size
    generator = torch.Generator().manual_seed(context.seed)
    volume = torch.randn((1, joint.get_parsed_content("in_channels"), size, size, size), generator=generator)
    volume = volume.to(device)

    def infer(network: nn.Module) -> Callable[[], Any]:
        def run() -> None:
            with torch.inference_mode():
                inferer(volume, network)

        return run

    times = interleaved_times(
        {"student": infer(student), "joint_teacher": infer(teacher)}, device, 1, settings.inference_repeats
    )
    t = {name: median(v) for name, v in times.items()}
    return [
        ratio_figure(
            "student_vs_joint_inference", t["student"] / t["joint_teacher"], 0.33,
            f"SlidingWindowInferer (roi_size {inferer.roi_size}, sw_batch_size {inferer.sw_batch_size}, overlap "
            f"{inferer.overlap}) on a 1x1x{size}^3 volume: {joint.get_parsed_content('student_arch')} student / "
            "joint teacher",
            {f"{name}_s": v for name, v in t.items()} | {"times_s": times, "volume": [size] * 3},
        )
    ]


def load_share_figures(context: Context) -> list[Figure]:
    """``load_share_<bundle>`` for the student stage of every bundle."""
    untrained_joint = {
        "joint_teacher": "$@joint_def.to(@device)",
    }
    stages = [
        ("load_share_roskd", ROSKD, {"teachers": roskd_teachers(5)}),
        ("load_share_attention_transfer", AT, {"teacher": "@teacher_def"}),
        ("load_share_joint", JOINT, untrained_joint),
    ]
    figures = []
    for key, bundle, overrides in stages:
        figures += measured(context.device, lambda k=key, b=bundle, o=overrides: [load_share(context, k, b, o)])
    return figures


def load_share(context: Context, key: str, bundle: str, overrides: Mapping[str, Any]) -> Figure:
    """Student-stage training loop of ``bundle`` over its own loader: the time in ``next(loader)`` / the total."""
    settings, device = context.settings, context.device
    parser = bundle_parser(context, bundle, ["train.json"], overrides)
    trainer = parser.get_parsed_content("train#trainer")
    loader = trainer.data_loader
    batches = iter_forever(loader)
    waits, totals, shape = [], [], ""
    for i in range(settings.warmup + settings.load_iterations):
        synchronize(device)
        start = time.perf_counter()
        batch = next(batches)
        loaded = time.perf_counter()
        shape = shape or describe_batch(batch)
        trainer._iteration(trainer, batch)
        synchronize(device)
        end = time.perf_counter()
        if i >= settings.warmup:
            waits.append(loaded - start)
            totals.append(end - start)
    value = sum(waits) / sum(totals)
    workers = getattr(loader, "num_workers", 0)
    return ratio_figure(
        key, value, 0.05,
        f"{bundle} student stage: time in next(loader) / iteration time over {len(totals)} iterations "
        f"({type(loader.dataset).__name__}, num_workers {workers}, prefetch_batches {getattr(loader, 'prefetch', 0)}, "
        f"batch {shape})",
        {
            "wait_s": sum(waits), "total_s": sum(totals), "iterations": len(totals), "num_workers": workers,
            "median_wait_s": median(waits), "median_iteration_s": median(totals),
        },
    )


def iter_forever(loader: Any) -> Iterator[Any]:
    """The loader's batches, epoch after epoch (a new iterator per epoch, as ignite makes one)."""
    while True:
        yield from loader


# -- inference backends -----------------------------------------------------------------------------------------------


def students(context: Context) -> list[tuple[str, nn.Module, torch.Tensor]]:
    """(name, student network, one input batch) of every bundle: the networks built by the bundles' configs, inputs
    of the bundles' default sizes (the demo data is not read)."""
    device, batch = context.device, context.settings.backend_batch
    generator = torch.Generator().manual_seed(context.seed)
    rows = []
    for name, bundle in (("roskd_student", ROSKD), ("at_student", AT)):
        parser = bundle_parser(context, bundle, ["train.json"], {"dataset_dir": "unused"}, run_sizes=False)
        size = parser.get_parsed_content("image_size")
        channels = parser.get_parsed_content("in_channels")
        shape = (batch or parser.get_parsed_content("batch_size"), channels, size, size)
        rows.append((name, parser.get_parsed_content("network_def"), torch.randn(shape, generator=generator)))
    parser = bundle_parser(context, JOINT, ["train.json"], {"dataset_dir": "unused"}, run_sizes=False)
    inferer = parser.get_parsed_content("validate#inferer")
    channels = parser.get_parsed_content("in_channels")
    shape = (batch or inferer.sw_batch_size, channels, *parser.get_parsed_content("roi_size"))
    rows.append(("joint_student", parser.get_parsed_content("network_def"), torch.randn(shape, generator=generator)))
    return [(name, network.to(device).eval(), x.to(device)) for name, network, x in rows]


def onnx_session(network: nn.Module, example: torch.Tensor, device: torch.device, threads: int) -> tuple[Any, str]:
    """An ONNX Runtime session of ``network`` exported with ``torch.onnx.export`` (TorchScript-based exporter)."""
    import onnxruntime as ort

    model = onnx_bytes(network, example)
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, sess_options=options, providers=providers)
    return session, f"onnxruntime {ort.__version__} ({session.get_providers()[0]})"


def onnxruntime_installed() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def inference_backend_figures(context: Context) -> list[Figure]:
    """Eager vs TorchScript vs ONNX Runtime for each bundle's student: speed-up and agreement with eager."""
    figures = []
    for name, network, x in students(context):
        figures += measured(context.device, lambda n=name, net=network, x=x: backend_figures(context, n, net, x))
    return figures


def backend_figures(context: Context, name: str, network: nn.Module, x: torch.Tensor) -> list[Figure]:
    settings, device = context.settings, context.device
    with torch.inference_mode():
        reference = network(x)
    runners: dict[str, Callable[[], torch.Tensor]] = {}
    how: dict[str, str] = {}

    def eager() -> torch.Tensor:
        with torch.inference_mode():
            return network(x)

    runners["eager"] = eager
    scripted, how["torchscript"] = to_torchscript(network, x)

    def script() -> torch.Tensor:
        with torch.inference_mode():
            return scripted(x)

    runners["torchscript"] = script
    onnx_error = None
    if onnxruntime_installed():
        try:
            session, how["onnxruntime"] = onnx_session(network, x, device, torch.get_num_threads())
            x_numpy = x.detach().cpu().numpy()
            runners["onnxruntime"] = lambda: torch.from_numpy(session.run(None, {"image": x_numpy})[0])
        except Exception as error:  # reported in the row instead of stopping the benchmark
            onnx_error = f"export failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}"
    # one more warm-up round than elsewhere: the TorchScript profiling executor optimises after its first runs
    times = interleaved_times(runners, device, settings.warmup + 2, settings.repeats)
    t = {backend: median(v) for backend, v in times.items()}
    shape = "x".join(str(s) for s in x.shape)
    figures = []
    for backend in ("torchscript", "onnxruntime"):
        key = f"inference_{name}_{backend}"
        target = "max abs diff vs eager <= 1e-4"
        measures = f"{name} ({type(network).__name__}), batch {shape}: eager time / {backend} time"
        if backend not in runners:
            value = NOT_INSTALLED if onnx_error is None else onnx_error
            figures.append(Figure(key, value, "speed-up", target, None, measures, details={"eager_s": t["eager"]}))
            continue
        with torch.inference_mode():
            output = runners[backend]()
        diff = float((output.to(reference.device).float() - reference.float()).abs().max())
        agrees = diff <= AGREEMENT_TOLERANCE
        figures.append(
            Figure(
                key, t["eager"] / t[backend], "speed-up", target, agrees, measures,
                details={
                    "eager_s": t["eager"], f"{backend}_s": t[backend], "max_abs_diff": diff, "agrees": agrees,
                    "how": how[backend], "batch": shape, "times_s": {b: times[b] for b in ("eager", backend)},
                },
            )
        )
    return figures


# -- machine, report ------------------------------------------------------------------------------------------------


def machine(device: torch.device, threads: int) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
        cpu = found.group(1).strip() if found else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cores_available": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = NOT_INSTALLED
    return info


def format_value(figure: Figure) -> str:
    if isinstance(figure.value, str):
        return figure.value
    return f"{figure.value:.2f}x" if figure.unit == "speed-up" else f"{figure.value:.3f}"


def format_met(figure: Figure) -> str:
    if figure.met is None:
        return "n/a"
    return "met" if figure.met else "not met"


def cell(value: Any) -> str:
    """``value`` as the text of a Markdown table cell (no line breaks, ``|`` escaped)."""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown(report: Mapping[str, Any], figures: Sequence[Figure]) -> str:
    info = report["machine"]
    lines = [
        "# medkd speed benchmark",
        "",
        f"{report['date']}; {info['cpu']} ({info['cores_available']} cores available, torch threads "
        f"{info['torch_threads']}), device {info['device']}{', ' + info['gpu'] if 'gpu' in info else ''}; "
        f"torch {info['torch']}, "
        f"MONAI {info['monai']}, onnxruntime {info['onnxruntime']}; "
        f"{'--quick; ' if report['quick'] else ''}wall time {report['wall_time_s']:.0f} s.",
        "",
        "| figure | value | target | met | peak memory, MiB (+ over start) | measures |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for f in figures:
        memory = "" if f.peak_memory_mb is None else f"{f.peak_memory_mb:.0f} (+{f.details['memory_increase_mb']:.0f})"
        cells = [f.key, format_value(f), f.target or "", format_met(f), memory, f.measures]
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    lines += [
        "",
        "Inference backends (time per batch, median):",
        "",
        "| student | backend | ms per batch | speed-up vs eager | max abs diff vs eager | agrees (<= 1e-4) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    seen_eager = set()
    for f in figures:
        if not f.key.startswith("inference_"):
            continue
        student, backend = f.key[len("inference_") :].rsplit("_", 1)
        if student not in seen_eager:
            seen_eager.add(student)
            lines.append(f"| {student} | eager | {1000 * f.details['eager_s']:.1f} | 1.00x | 0 | yes |")
        if isinstance(f.value, str):
            lines.append(f"| {student} | {backend} | {cell(f.value)} | | | |")
            continue
        d = f.details
        lines.append(
            f"| {student} | {backend} | {1000 * d[f'{backend}_s']:.1f} | {f.value:.2f}x | {d['max_abs_diff']:.2e} | "
            f"{'yes' if d['agrees'] else 'no'} |"
        )
    lines += ["", f"Peak memory: {figures[0].memory_kind if figures else ''}, per figure."]
    return "\n".join(lines) + "\n"


def plain(value: Any) -> Any:
    """``value`` with floats that JSON cannot hold (inf, nan) as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


FIGURE_FUNCTIONS: tuple[Callable[[Context], list[Figure]], ...] = (
    kd_step_figures,
    lambda context: measured(context.device, lambda: cached_epoch_figure(context)),
    lambda context: measured(context.device, lambda: joint_stage2_figure(context)),
    lambda context: measured(context.device, lambda: student_vs_joint_figure(context)),
    load_share_figures,
    inference_backend_figures,
)


def run_benchmark(
    device: torch.device, settings: Settings, out: Path, seed: int = 0, num_threads: int | None = None,
    quick: bool = False,
) -> dict[str, Any]:
    """Measure every figure, write ``benchmark.json`` and ``benchmark.md`` into ``out``; return the report."""
    start = time.perf_counter()
    threads = set_num_threads(num_threads)
    out.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="medkd_benchmark_") as scratch:
        context = Context(device=device, settings=settings, seed=seed, work_dir=Path(scratch))
        if settings.classification_cases is not None:
            demo = medkd_ext.data.make_classification_demo(
                Path(scratch) / "classification_demo", seed=seed, n_cases=settings.classification_cases,
                n_test=max(2, settings.classification_cases // 8), size=settings.classification_size or 64,
            )
            context.classification_dir = str(demo["dataset_json"].parent)
        if settings.segmentation_size is not None:
            demo = medkd_ext.data.make_segmentation_demo(
                Path(scratch) / "segmentation_demo", seed=seed, size=settings.segmentation_size, n_target_train=4,
                n_target_test=0, n_source=2,
            )
            context.segmentation_dir = str(demo["target"].parent.parent)
        for figure_function in FIGURE_FUNCTIONS:
            figures += figure_function(context)
    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "quick": quick,
        "machine": machine(device, threads),
        "settings": asdict(settings) | {"seed": seed},
        "wall_time_s": time.perf_counter() - start,
        "figures": {f.key: {k: v for k, v in asdict(f).items() if k != "key"} for f in figures},
    }
    (out / "benchmark.json").write_text(json.dumps(plain(report), indent=2) + "\n", encoding="utf-8")
    text = markdown(report, figures)
    (out / "benchmark.md").write_text(text, encoding="utf-8")
    return report | {"markdown": text}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="eval/benchmark", help="folder of benchmark.json and benchmark.md")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    parser.add_argument("--num_threads", type=int, default=None, help="torch CPU threads (default: half the cores)")
    parser.add_argument("--quick", action="store_true", help="small sizes and counts (a smoke test, not a result)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per measurement (median reported)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed runs before the timed ones")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available here.")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    settings = QUICK if args.quick else Settings()
    if args.repeats is not None:
        settings = replace(settings, repeats=args.repeats)
    if args.warmup is not None:
        settings = replace(settings, warmup=args.warmup)
    report = run_benchmark(device, settings, Path(args.out), args.seed, args.num_threads, args.quick)
    print(report["markdown"], end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
