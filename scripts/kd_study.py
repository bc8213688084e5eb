"""The KD study (Sarfraz, Arani and Zonooz, "Knowledge distillation beyond model compression") on a dataset.

Every method of the study (``distill_method`` of ``bundles/roskd_classification``, its single-teacher mode) and the
student trained alone (``Baseline``) are trained for several seeds in each setting the chosen tables need, then
scored on the dataset's test split:

- ``III``: generalisation (the study's Table III): the data as given.
- ``V``: label noise (Table V): the training labels corrupted at each rate (default 0, 0.2, 0.4, 0.6; each label
  replaced, with that probability, by a class drawn uniformly from all classes, the study's noise), the teacher
  retrained on the same noisy labels for each rate and seed (a seed fixes the noise, the validation split and the
  training).
- ``VI``: class imbalance (Table VI): the training split sub-sampled to the study's power law
  (``medkd_ext.data.sampling.power_law_imbalance``) for each gamma (default 0.2, 0.6, 1, 2), with the largest and
  smallest class in the study's 5000:250 ratio (by default the largest class keeps as many cases as the smallest
  class of the data has), the teacher retrained for each gamma; the test split is unchanged.
- ``transfer``: the transferability of adversarial examples (Fig. 1): PGD (L-infinity, eps 0.031, step 0.003, 20
  steps) on each model of the ``III`` setting (the teacher and every student), success rate on each other model,
  counted on the test images that both classify correctly (``medkd_ext.metrics.transferability``).

Each teacher is trained by ``configs/train.json`` with only its teacher stage enabled; each student by
``configs/train.json --distill_method <m>`` (``Baseline``: ``--method student_only``), which also evaluates it.
Results are printed as Markdown (mean +/- std over the seeds, accuracy in percent, the best mean of a column in bold)
and written to ``<work_dir>/kd_study.md``, ``kd_study.csv`` (one row per run) and ``kd_study_transfer.csv``.
Every finished run is recorded in ``<work_dir>/results.json``: rerunning the same command after an interruption
continues with the runs that are missing (and more seeds, methods or tables can be added the same way).

    python scripts/kd_study.py --work_dir kd_study_runs                       # every table, 3 seeds, the demo data
    python scripts/kd_study.py --methods baseline hinton dml --tables V --seeds 5 --datalist my/dataset.json

Options the bundle has (network, epochs, image size, ...) are given with ``--override id=JSON`` and reach every run.
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import math
import os
import statistics
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medkd_ext.engines.kd_study import KD_METHODS, needs_teacher  # noqa: E402
from medkd_ext.engines.stages import parse_overrides  # noqa: E402

CONFIGS = REPO / "bundles" / "roskd_classification" / "configs"
TRAIN = CONFIGS / "train.json"
TABLES = ("III", "V", "VI", "transfer")
NAMES = {
    "baseline": "Baseline",
    "hinton": "Hinton",
    "bss": "BSS",
    "fitnet": "FitNet",
    "fsp": "FSP",
    "at": "AT",
    "sp": "SP",
    "rkd_d": "RKD-D",
    "rkd_a": "RKD-A",
    "rkd_da": "RKD-DA",
    "one": "ONE",
    "dml": "DML",
}
"""Row names of the study's tables, in its order; ``baseline`` is the student trained alone (cross-entropy)."""
assert set(NAMES) == {"baseline", *KD_METHODS}, "a method of medkd_ext.engines.kd_study has no row name"
IMBALANCE_RATIO = 5000 / 250
"""The study's largest : smallest class size."""
TEACHER = "teacher"
TRANSFER = "transfer"

logger = logging.getLogger("kd_study")


def _fmt_float(value: float) -> str:
    return f"{value:g}"


# ----------------------------------------------------------------------------------------------------------- settings


def settings_for(tables: list[str], noise_rates: list[float], gammas: list[float]) -> list[dict[str, Any]]:
    """The settings (data conditions) the chosen tables need, each trained with its own teacher: ``clean`` (the data
    as given; Table III, Table V's rate 0 and the transfer matrix), ``noise_<rate>`` and ``imbalance_<gamma>``."""
    settings = []
    if {"III", "transfer"} & set(tables) or ("V" in tables and 0 in noise_rates):
        settings.append({"name": "clean", "noise_rate": 0.0, "gamma": None})
    if "V" in tables:
        settings += [{"name": f"noise_{_fmt_float(r)}", "noise_rate": r, "gamma": None} for r in noise_rates if r]
    if "VI" in tables:
        settings += [{"name": f"imbalance_{_fmt_float(g)}", "noise_rate": 0.0, "gamma": g} for g in gammas]
    return settings


def imbalanced_datalist(datalist: Path, test_split: str, gamma: float, counts: tuple[int, int], out: Path) -> Path:
    """A ``dataset.json`` whose training list is ``datalist``'s sub-sampled to the power law of ``gamma`` (class 0
    largest, ``counts`` = largest, smallest class size; the draw's seed is 0, so the data of a gamma is the same for
    every seed) and whose ``test_split`` list is ``datalist``'s, with absolute paths."""
    from medkd_ext.data import load_datalist
    from medkd_ext.data.sampling import power_law_imbalance

    training = load_datalist(datalist, "training")
    kept = power_law_imbalance(training, gamma, counts[0], counts[1], seed=0)
    content: dict[str, Any] = {"training": kept, test_split: load_datalist(datalist, test_split)}
    if datalist.suffix.lower() == ".json":
        labels = json.loads(datalist.read_text(encoding="utf-8")).get("labels")
        if labels is not None:
            content["labels"] = labels
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(content, indent=1))
    return out


def default_counts(datalist: Path, num_classes: int) -> tuple[int, int]:
    """Largest and smallest class size of the imbalance settings: the largest is the size of the data's smallest
    class (every class can then give what the power law asks), the smallest that divided by the study's ratio."""
    from medkd_ext.data import load_datalist

    sizes = [0] * num_classes
    for item in load_datalist(datalist, "training"):
        sizes[int(item["label"])] += 1
    largest = min(sizes)
    return largest, max(1, round(largest / IMBALANCE_RATIO))


# --------------------------------------------------------------------------------------------------------------- runs


def _accuracy_on_test(network: Any, data: dict[str, Any]) -> float:
    import torch

    network.eval()
    with torch.no_grad():
        predictions = torch.cat([network(x).argmax(1).cpu() for x in data["images"].split(64)])
    return float((predictions == data["labels"]).float().mean())


def _test_data(overrides: dict[str, Any]) -> dict[str, Any]:
    """The test split's images and labels, preprocessed as the bundle evaluates them, on the run's device."""
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(TRAIN))
    parser.update(overrides)
    transform = parser.get_parsed_content("validate#preprocessing")
    items = [transform(dict(item)) for item in parser.get_parsed_content("test_items")]
    device = torch.device(parser.get_parsed_content("device"))
    images = torch.stack([torch.as_tensor(item["image"]).as_subclass(torch.Tensor) for item in items]).float()
    labels = torch.tensor([int(item["label"]) for item in items])
    return {"images": images.to(device), "labels": labels, "device": device, "parser": parser}


def _network(parser: Any, definition: str, path: str, device: Any) -> Any:
    from medkd_ext.networks.checkpoint import load_state_dict

    network = parser.get_parsed_content(definition, lazy=False).to(device)
    return load_state_dict(network, path, device=device).eval()


def execute(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job of the study (in this process or a worker) and return its record; a failure is raised again as a
    ``RuntimeError`` whose message is the one a user acts on (the stage and the original error, not MONAI's wrapper:
    the exception reaches the main process without its chain)."""
    from medkd_ext.errors import user_message

    try:
        return _execute(job)
    except Exception as error:
        raise RuntimeError(user_message(error)) from error


def _execute(job: dict[str, Any]) -> dict[str, Any]:
    from medkd_ext.engines import run_stage, set_num_threads

    logging.disable(logging.INFO)  # the runs' progress logs (the bundles' logging.conf shows INFO); warnings stay
    # but one: MONAI's LoadImage says on every construction that the GPU DICOM decoder nvImageCodec is missing, a
    # line per run and loader worker on a machine without it (the study runs hundreds)
    logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
    set_num_threads(job["overrides"].get("num_threads"))
    start = time.perf_counter()
    if job["kind"] == TEACHER:
        run_stage(TRAIN, job["overrides"])
        data = _test_data(job["overrides"])
        teacher = _network(data["parser"], f"teacher_defs#{job['teacher_index']}", job["ckpt"], data["device"])
        record: dict[str, Any] = {"accuracy": _accuracy_on_test(teacher, data)}
    elif job["kind"] == TRANSFER:
        import torch
        from torch import nn

        from medkd_ext.metrics.attacks import pgd, transferability

        data = _test_data(job["overrides"])
        models = {}
        for name, (definition, path) in job["models"].items():
            models[name] = _network(data["parser"], definition, path, data["device"])
        attack = functools.partial(
            pgd, loss_fn=nn.CrossEntropyLoss(), radius=job["eps"], step=job["step"], steps=job["steps"], norm="linf"
        )
        with torch.enable_grad():
            record = {"matrix": transferability(models, data["images"], data["labels"], attack)}
    else:
        run_stage(TRAIN, job["overrides"])
        report = json.loads((Path(job["overrides"]["output_dir"]) / "metrics.json").read_text())
        record = {"accuracy": report["accuracy"], "f1_macro": report["f1_macro"]}
    record["seconds"] = time.perf_counter() - start
    return record


class Study:
    """The jobs of a study, the record of those finished (``results.json``) and the tables made from it."""

    def __init__(self, args: argparse.Namespace) -> None:
        from monai.bundle import ConfigParser

        self.args = args
        self.work = Path(args.work_dir).resolve()
        self.common: dict[str, Any] = {"bundle_root": str(CONFIGS.parent), "noise_mode": "symmetric"}
        if args.datalist:
            self.common["datalist"] = str(Path(args.datalist).resolve())
        for key, epochs in (("max_epochs", args.max_epochs), ("teacher_max_epochs", args.teacher_max_epochs)):
            if epochs is not None:
                self.common[key] = epochs
        try:
            self.common.update(parse_overrides(args.override))
        except ValueError as error:
            raise SystemExit(f"kd_study.py: {error}") from None
        if args.device:
            self.common["device"] = args.device
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self.common.setdefault("num_threads", max(1, cores // args.workers))
        probe = ConfigParser()
        probe.read_config(str(TRAIN))
        probe.update(self.common)
        if probe.get_parsed_content("is_multi_label"):
            raise SystemExit(
                "kd_study.py: the study's label noise, power-law imbalance and transferability are defined for "
                "multi-class data; multi_label true (or class_columns) is not supported."
            )
        self.datalist = Path(probe.get_parsed_content("datalist"))
        self.test_split = probe.get_parsed_content("test_split")
        self.teacher_index = int(probe.get_parsed_content("hinton_teacher"))
        self.num_teachers = int(probe.get_parsed_content("num_teachers"))
        self.num_classes = int(probe.get_parsed_content("num_classes"))
        self.counts = tuple(args.imbalance_counts or default_counts(self.datalist, self.num_classes))
        self.methods = list(args.methods)
        self.seeds = list(range(args.first_seed, args.first_seed + args.seeds))
        self.settings = settings_for(args.tables, args.noise_rates, args.gammas)
        self.pgd = {"eps": args.pgd_eps, "step": args.pgd_step, "steps": args.pgd_steps}
        self.fingerprint = {
            "datalist": str(self.datalist),
            "overrides": {k: v for k, v in self.common.items() if k not in ("device", "num_threads")},
            "imbalance_counts": list(self.counts),
            "pgd": self.pgd,
        }
        self.results_path = self.work / "results.json"
        self.runs: dict[str, Any] = {}
        if self.results_path.is_file():
            saved = json.loads(self.results_path.read_text())
            if saved.get("study") != self.fingerprint and not args.restart:
                differ = sorted(k for k in self.fingerprint if saved.get("study", {}).get(k) != self.fingerprint[k])
                raise SystemExit(
                    f"kd_study.py: {self.results_path} records a study with other settings ({', '.join(differ)}); "
                    "give another --work_dir, the same settings to continue it, or --restart to start it over."
                )
            if not args.restart:
                self.runs = saved.get("runs", {})

    # jobs ------------------------------------------------------------------------------------------------------

    def _folder(self, setting: dict[str, Any], seed: int) -> Path:
        return self.work / setting["name"] / f"seed_{seed}"

    def _overrides(self, setting: dict[str, Any], seed: int) -> dict[str, Any]:
        values = {**self.common, "seed": seed, "noise_rate": setting["noise_rate"]}
        if setting["gamma"] is not None:
            path = self.work / "data" / setting["name"] / "dataset.json"
            if not path.is_file():
                imbalanced_datalist(self.datalist, self.test_split, setting["gamma"], self.counts, path)
            values.update({"datalist": str(path), "class_columns": None, "num_classes": self.num_classes})
        return values

    def _teacher_ckpt(self, setting: dict[str, Any], seed: int) -> Path:
        return self._folder(setting, seed) / TEACHER / "models" / f"teacher_full_{self.teacher_index}.pt"

    def jobs(self) -> list[dict[str, Any]]:
        """Every job of the study in order (seed, setting; the teacher before its students), finished ones included."""
        from medkd_ext.engines import disabled_stages

        jobs = []
        for seed in self.seeds:
            for setting in self.settings:
                folder, values = self._folder(setting, seed), self._overrides(setting, seed)
                teacher_models = folder / TEACHER / "models"
                want_teacher = any(needs_teacher(m) for m in self.methods if m != "baseline") or (
                    setting["name"] == "clean" and "transfer" in self.args.tables
                )
                if want_teacher:
                    overrides = {**values, "distill_method": "hinton", "ckpt_dir": str(teacher_models),
                                 "output_dir": str(folder / TEACHER)}
                    overrides.update(disabled_stages(TRAIN, ("distill_init", "student", "evaluate")))
                    jobs.append({"key": f"{setting['name']}/seed_{seed}/{TEACHER}", "kind": TEACHER, "after": [],
                                 "overrides": overrides, "teacher_index": self.teacher_index,
                                 "ckpt": str(self._teacher_ckpt(setting, seed))})
                for method in self.methods:
                    run = folder / method
                    overrides = {**values, "train_teachers": False, "ckpt_dir": str(run / "models"),
                                 "output_dir": str(run)}
                    if method == "baseline":
                        overrides.update({"method": "student_only", "distill_method": None})
                        after = []
                    else:
                        overrides["distill_method"] = method
                        after = [f"{setting['name']}/seed_{seed}/{TEACHER}"] if needs_teacher(method) else []
                        overrides["teacher_ckpts"] = (
                            f"$medkd_ext.engines.roskd.teacher_paths({str(teacher_models)!r}, @num_teachers, "
                            "@teacher_data)"
                        )
                    jobs.append({"key": f"{setting['name']}/seed_{seed}/{method}", "kind": "student", "after": after,
                                 "overrides": overrides})
                if setting["name"] == "clean" and "transfer" in self.args.tables:
                    models = {TEACHER: (f"teacher_defs#{self.teacher_index}", str(self._teacher_ckpt(setting, seed)))}
                    models.update({m: ("network_def", str(folder / m / "models" / "model.pt")) for m in self.methods})
                    jobs.append({"key": f"clean/seed_{seed}/{TRANSFER}", "kind": TRANSFER, "overrides": values,
                                 "after": [f"clean/seed_{seed}/{m}" for m in (TEACHER, *self.methods)],
                                 "models": models, **self.pgd})
        return jobs

    def _finished(self, job: dict[str, Any]) -> bool:
        """Whether ``job`` is recorded (a transfer matrix: with every model it asks for; a new method remakes it)."""
        record = self.runs.get(job["key"])
        if record is None or job["kind"] != TRANSFER:
            return record is not None
        return set(job["models"]) <= set(record["matrix"])

    def save(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        tmp = self.results_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"study": self.fingerprint, "runs": self.runs}, indent=1))
        os.replace(tmp, self.results_path)

    def run(self) -> None:
        """Run the jobs that are not recorded yet (``--workers`` at a time), recording each as it finishes."""
        todo = [job for job in self.jobs() if not self._finished(job)]
        total, done_before = len(todo), 0
        print(f"kd_study: {total} run(s) to do in {self.work} ({len(self.runs)} recorded before)", flush=True)
        self.save()
        started = time.perf_counter()
        pool = ProcessPoolExecutor(self.args.workers) if self.args.workers > 1 else None
        running: dict[Future, dict[str, Any]] = {}
        try:
            while todo or running:
                ready = [job for job in todo if all(k in self.runs for k in job["after"])]
                for job in ready[: max(0, self.args.workers - len(running))]:
                    todo.remove(job)
                    if pool is None:
                        future: Future = Future()
                        try:
                            future.set_result(execute(job))
                        except BaseException as error:  # reported below, with the run named
                            future.set_exception(error)
                    else:
                        future = pool.submit(execute, job)
                    running[future] = job
                if not running:
                    waiting = sorted({k for job in todo for k in job["after"] if k not in self.runs})
                    raise RuntimeError(f"runs {[j['key'] for j in todo]} wait for {waiting}, which no job makes.")
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    job = running.pop(future)
                    try:
                        self.runs[job["key"]] = future.result()
                    except BaseException as error:
                        logger.error("run %s failed", job["key"], exc_info=error)
                        raise RuntimeError(
                            f"run {job['key']} failed: {error}. The runs that finished are kept in "
                            f"{self.results_path}: fix the cause and run the same command again to continue."
                        ) from error
                    self.save()
                    done_before += 1
                    elapsed = time.perf_counter() - started
                    left = elapsed / done_before * (total - done_before)
                    print(f"[{done_before:>4}/{total}] {job['key']}: {self._summary(job['key'])} "
                          f"({self.runs[job['key']]['seconds']:.0f} s; about {left / 60:.0f} min left)", flush=True)
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _summary(self, key: str) -> str:
        record = self.runs[key]
        if "matrix" in record:
            return "transferability measured"
        return f"accuracy {100 * record['accuracy']:.2f}%"

    # tables ----------------------------------------------------------------------------------------------------

    def _cell(self, setting: str, method: str, metric: str = "accuracy") -> list[float]:
        return [100 * r[metric] for s in self.seeds if (r := self.runs.get(f"{setting}/seed_{s}/{method}"))]

    @staticmethod
    def _mean_std(values: list[float]) -> str:
        if not values:
            return "-"
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.fmean(values):.2f} +/- {std:.2f}"

    def _method_table(self, columns: list[tuple[str, str, str]]) -> list[str]:
        """Rows: the methods; columns: ``(setting, title, metric)``."""
        best = {}
        for setting, _, metric in columns:
            means = [statistics.fmean(v) for m in self.methods if (v := self._cell(setting, m, metric))]
            best[setting, metric] = max(means) if means else math.nan
        lines = ["| Method | " + " | ".join(c[1] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for method in self.methods:
            cells = []
            for setting, _, metric in columns:
                values = self._cell(setting, method, metric)
                text = self._mean_std(values)
                cells.append(f"**{text}**" if values and statistics.fmean(values) == best[setting, metric] else text)
            lines.append(f"| {NAMES[method]} | " + " | ".join(cells) + " |")
        return lines

    def _rate(self, seed: int, target: str, source: str) -> float | None:
        record = self.runs.get(f"clean/seed_{seed}/{TRANSFER}")
        if record is None:
            return None
        cell = record["matrix"].get(target, {}).get(source)
        return 100 * cell["fooled"] / cell["both_correct"] if cell and cell["both_correct"] else None

    def markdown(self) -> str:
        a = self.args
        lines = [
            "# KD study on " + str(self.datalist),
            "",
            f"Seeds {self.seeds}; test-split accuracy (%) as mean +/- std over the seeds; the best mean of a column in "
            "bold. Teacher: teacher_defs[" + str(self.teacher_index) + "] of roskd_classification; student: its "
            f"network_def. Overrides: {json.dumps(self.fingerprint['overrides'])}.",
            "",
            "## Teachers (the study's Table II)",
            "",
            "| Setting | Accuracy |",
            "|---|---|",
        ]
        lines += [f"| {s['name']} | {self._mean_std(self._cell(s['name'], TEACHER))} |" for s in self.settings]
        if "III" in a.tables:
            lines += ["", "## Table III: generalisation", ""]
            lines += self._method_table([("clean", "Accuracy", "accuracy"), ("clean", "F1 (macro)", "f1_macro")])
        if "V" in a.tables:
            columns = [("clean" if not r else f"noise_{_fmt_float(r)}", f"sigma = {_fmt_float(r)}", "accuracy")
                       for r in a.noise_rates]
            lines += ["", "## Table V: label noise (symmetric, over all classes)", ""] + self._method_table(columns)
        if "VI" in a.tables:
            columns = [(f"imbalance_{_fmt_float(g)}", f"gamma = {_fmt_float(g)}", "accuracy") for g in a.gammas]
            lines += ["", f"## Table VI: class imbalance (largest class {self.counts[0]}, smallest {self.counts[1]})",
                      ""] + self._method_table(columns)
        if "transfer" in a.tables:
            models = [*self.methods, TEACHER]
            names = {**NAMES, TEACHER: "Teacher"}
            lines += ["", f"## Fig. 1: transferability of PGD examples (L-inf eps {a.pgd_eps}, step {a.pgd_step}, "
                      f"{a.pgd_steps} steps), success rate (%) from source (columns) to target (rows), on the test "
                      "images both classify correctly, mean over the seeds", ""]
            lines += ["| target \\ source | " + " | ".join(names[m] for m in models) + " |",
                      "|---" * (len(models) + 1) + "|"]
            for target in models:
                cells = []
                for source in models:
                    rates = [r for s in self.seeds if (r := self._rate(s, target, source)) is not None]
                    cells.append(f"{statistics.fmean(rates):.1f}" if rates else "-")
                lines.append(f"| {names[target]} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def write(self) -> str:
        text = self.markdown()
        self.work.mkdir(parents=True, exist_ok=True)
        (self.work / "kd_study.md").write_text(text, encoding="utf-8")
        by_name = {s["name"]: s for s in self.settings}
        with open(self.work / "kd_study.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["setting", "noise_rate", "gamma", "seed", "method", "accuracy", "f1_macro", "seconds"])
            for key, record in self.runs.items():
                setting, seed, method = key.split("/")
                if method == TRANSFER or setting not in by_name:
                    continue
                s = by_name[setting]
                writer.writerow([setting, s["noise_rate"], "" if s["gamma"] is None else s["gamma"],
                                 int(seed[len("seed_"):]), method, record["accuracy"], record.get("f1_macro", ""),
                                 round(record["seconds"], 1)])
        with open(self.work / "kd_study_transfer.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["seed", "source", "target", "fooled", "both_correct", "success_rate"])
            for seed in self.seeds:
                record = self.runs.get(f"clean/seed_{seed}/{TRANSFER}")
                for target, row in (record or {}).get("matrix", {}).items():
                    for source, cell in row.items():
                        rate = cell["fooled"] / cell["both_correct"] if cell["both_correct"] else ""
                        writer.writerow([seed, source, target, cell["fooled"], cell["both_correct"], rate])
        return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="kd_study_runs", help="folder of the runs, results.json and the tables")
    parser.add_argument("--datalist", default=None, help="dataset.json or CSV (default: the bundle's demo data)")
    parser.add_argument("--methods", nargs="+", default=list(NAMES), choices=list(NAMES), metavar="METHOD",
                        help=f"rows to train (default all): {', '.join(NAMES)}")
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES, help="default: all")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (the study: 5)")
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--noise_rates", nargs="+", type=float, default=[0.0, 0.2, 0.4, 0.6])
    parser.add_argument("--gammas", nargs="+", type=float, default=[0.2, 0.6, 1.0, 2.0])
    parser.add_argument("--imbalance_counts", nargs=2, type=int, default=None, metavar=("LARGEST", "SMALLEST"),
                        help="class sizes of the imbalance settings (default: the data's smallest class, 20:1)")
    parser.add_argument("--max_epochs", type=int, default=None, help="student epochs (default: the bundle's)")
    parser.add_argument("--teacher_max_epochs", type=int, default=None, help="teacher epochs (default: the bundle's)")
    parser.add_argument("--pgd_eps", type=float, default=0.031)
    parser.add_argument("--pgd_step", type=float, default=0.003)
    parser.add_argument("--pgd_steps", type=int, default=20)
    parser.add_argument("--device", default=None, help="default: the bundle's (cuda:0 when available)")
    parser.add_argument("--workers", type=int, default=1, help="runs at a time, each in a process of its own")
    parser.add_argument("--override", nargs="*", default=[], metavar="ID=JSON",
                        help="bundle ids for every run, e.g. image_size=32 network_def#widen_factor=0.25")
    parser.add_argument("--restart", action="store_true", help="forget the runs recorded in work_dir")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.workers < 1:
        parser.error("--seeds and --workers must be >= 1")
    bad = [r for r in args.noise_rates if not 0 <= r <= 1] + [g for g in args.gammas if g <= 0]
    if bad:
        parser.error(f"noise rates must lie in [0, 1] and gammas be positive; got {bad}")
    if args.imbalance_counts and not 1 <= args.imbalance_counts[1] <= args.imbalance_counts[0]:
        parser.error("--imbalance_counts takes LARGEST >= SMALLEST >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    study = Study(args)
    try:
        study.run()
    finally:
        text = study.write()
    print(text)
    print(f"tables: {study.work / 'kd_study.md'}; runs: {study.work / 'kd_study.csv'}, "
          f"{study.work / 'kd_study_transfer.csv'}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (RuntimeError, ValueError, FileNotFoundError) as error:
        print(f"kd_study.py: {error}", file=sys.stderr)
        raise SystemExit(1) from None
