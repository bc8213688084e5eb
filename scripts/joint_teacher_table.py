"""Table 2 of Ceausescu et al. for the joint-teacher bundle: multi-head / dataset-specific / joint teacher / student.

For every seed, trains the bundle's stages (``train.json``) and the two baselines on the same data:

- dataset-specific: the student architecture trained on the target alone (the target-teacher stage with the
  student's architecture, width, epochs and supervised loss ``loss``, Dice + cross-entropy);
- multi-head: one shared student backbone with a head per dataset, trained on alternating batches of the target
  and every source (``train_multihead.json``);

then evaluates the four models on the target's held-out test cases with ``evaluate.json`` (each model's stage
overlays plus ``evaluate.json``, ``ckpt_file`` its checkpoint) and prints IoU, DSC, Recall, Precision and HD95 as
mean +/- std over the seeds (Markdown), with the number of test cases evaluated over all seeds and how many of
them had an empty prediction, an empty reference or both.

As in the paper, each dataset is the target once, the others its sources: on the demo (no ``dataset_dir`` or
datalist override) the script generates it once per target with that domain first (``--targets``, default every
domain: metastasis-, glioma- and stroke-like lesions) and prints one block per target.

Every case counts in the means (see ``medkd_ext.metrics.segmentation``): an empty prediction or reference scores 0
and HD95 the image diagonal in mm, both empty score 1 and HD95 0, Recall leaves out cases with an empty reference.
Example:

    python scripts/joint_teacher_table.py --seeds 3 --out /tmp/jt_table
    python scripts/joint_teacher_table.py --seeds 1 --targets source_1 --override max_epochs=20

``--resume`` reuses a seed whose four reports exist under ``<out>/.../seed_<n>/table`` and were made with the same
overrides (recorded in ``table/overrides.json``), so that an interrupted table goes on from its next seed.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from medkd_ext.data import SEGMENTATION_DOMAINS, make_segmentation_demo
from medkd_ext.engines import parse_overrides, recorded, run_stage
from medkd_ext.metrics.segmentation import SEGMENTATION_COUNTS

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "joint_teacher_seg"
CONFIGS = BUNDLE / "configs"
METRICS = ("IoU", "DSC", "Recall", "Precision", "HD95")
ROWS = ("multi-head", "dataset-specific", "joint teacher", "student")
COUNT_HEADERS = ("cases", "empty pred.", "empty ref.", "both empty")  # SEGMENTATION_COUNTS, summed over seeds
TARGET_TEACHER = ["train.json", "train_target_teacher.json"]
DATA_IDS = ("dataset_dir", "target_datalist", "source_datalists")


def demo_with_target(
    target: str, root: Path, size: int = 48, cases: tuple[int, int, int] = (6, 6, 16)
) -> dict[str, Any]:
    """The demo generated with ``target`` as its target domain (few training cases and the test cases) and the
    other domains as sources, under ``root/<target>``; returns the bundle's data overrides for it.

    ``size`` and ``cases`` (target training, target test, per source) default to the bundle's own demo."""
    domains = (target, *(d for d in SEGMENTATION_DOMAINS if d != target))
    paths = make_segmentation_demo(root / target, seed=0, size=size, n_target_train=cases[0], n_target_test=cases[1],
                                   n_source=cases[2], domains=domains)
    return {"dataset_dir": str(root / target), "target_datalist": str(paths[target]),
            "source_datalists": [str(paths[d]) for d in domains[1:]]}


def _run(files: list[str], overrides: dict[str, Any]) -> float:
    return run_stage([CONFIGS / f for f in files], overrides=overrides)


def _means(report: Path) -> dict[str, float]:
    """The mean row of an ``evaluate.json`` report (class ``all``, or the one foreground class): the metrics and the
    case counts (``n_cases``, ``n_empty_prediction``, ``n_empty_reference``, ``n_both_empty``)."""
    with report.open() as f:
        rows = [r for r in csv.DictReader(f) if r["case"] == "mean"]
    row = next((r for r in rows if r["class"] == "all"), rows[-1])
    return {**{m: float(row[m]) for m in METRICS}, **{n: int(row[n]) for n in SEGMENTATION_COUNTS}}


def finished_seed(out: Path, extra: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """The target-test means of a seed already run in ``out`` with the overrides ``extra``, or None."""
    reports = {name: out / "table" / name.replace(" ", "_") / "metrics.csv" for name in ROWS}
    record = out / "table" / "overrides.json"
    if not record.is_file() or not all(r.is_file() for r in reports.values()):
        return None
    if json.loads(record.read_text(encoding="utf-8")) != json.loads(json.dumps(extra)):
        return None
    return {name: _means(report) for name, report in reports.items()}


def run_seed(seed: int, out: Path, extra: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Train everything for one seed; return the target-test means per model and the wall time per run."""
    models = out / "models"
    table = out / "table"
    (table / "overrides.json").unlink(missing_ok=True)  # written again once the four reports are
    base = {"bundle_root": str(BUNDLE), "seed": seed, "ckpt_dir": str(models), "output_dir": str(out / "eval"), **extra}
    times = {"train.json (every stage)": _run(["train.json"], base)}
    # the student's architecture, epochs and supervised loss (Dice + CE), without teachers
    specific = {**base, "teacher_arch": "@student_arch", "teacher_width": "@student_width",
                "target_teacher_max_epochs": "@max_epochs", "train#trainer#loss_function": "@loss",
                # recorded as a student's are, so that evaluate.json reads the architecture and patch size back
                "stage_settings": "$dict(@teacher_settings, **@model_settings)",
                "stage_ckpt": str(models / "baseline_specific.pt"), "output_dir": str(out / "eval_specific")}
    times["dataset-specific"] = _run(TARGET_TEACHER, specific)
    multihead = {**base, "output_dir": str(out / "eval_multihead")}
    times["multi-head"] = _run(["train.json", "train_multihead.json"], multihead)

    # the joint teacher's record holds no patch size (it does not depend on one): evaluate it with the student's
    joint = {**base, "roi_size": recorded(models / "model.pt", "roi_size")}
    evaluations = {
        "student": (["train.json"], base, models / "model.pt"),
        "joint teacher": (TARGET_TEACHER + ["train_joint.json"], joint, models / "joint_teacher.pt"),
        "dataset-specific": (TARGET_TEACHER, specific, models / "baseline_specific.pt"),
        "multi-head": (["train.json", "train_multihead.json"], multihead, models / "baseline_multihead.pt"),
    }
    results = {}
    for name, (files, overrides, ckpt) in evaluations.items():
        report_dir = out / "table" / name.replace(" ", "_")
        _run(files + ["evaluate.json"], {**overrides, "ckpt_file": str(ckpt), "output_dir": str(report_dir)})
        results[name] = _means(report_dir / "metrics.csv")
    (table / "overrides.json").write_text(json.dumps(extra, indent=1), encoding="utf-8")
    return results, times


def format_table(per_seed: list[dict[str, dict[str, float]]]) -> str:
    """Markdown: per model, each metric's mean ± std over the seeds, then the case counts summed over the seeds."""
    header = [*METRICS, *COUNT_HEADERS]
    lines = ["| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for name in ROWS:
        cells = []
        for m in METRICS:
            values = np.array([r[name][m] for r in per_seed], dtype=float)
            values = values[np.isfinite(values)]  # Recall is nan for a seed whose every case has an empty reference
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "n/a")
        cells += [str(sum(int(r[name][n]) for r in per_seed)) for n in SEGMENTATION_COUNTS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. N-1)")
    parser.add_argument("--out", type=Path, default=Path("joint_teacher_table"), help="working folder")
    parser.add_argument("--targets", nargs="+", default=None, choices=SEGMENTATION_DOMAINS,
                        help="demo domains to take as the target in turn (default: every one; not with own data)")
    parser.add_argument("--demo_size", type=int, default=48, help="demo volume size in voxels (default 48)")
    parser.add_argument("--demo_cases", type=int, nargs=3, default=[6, 6, 16], metavar=("TRAIN", "TEST", "SOURCE"),
                        help="demo cases: target training, target test, per source (default 6 6 16)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse seeds already run in --out with the same overrides (their four reports exist)")
    parser.add_argument("--override", action="append", default=[], metavar="ID=JSON",
                        help="bundle override for every run, e.g. --override max_epochs=20 (value parsed as JSON)")
    args = parser.parse_args(argv)
    try:
        extra = parse_overrides(args.override)
    except ValueError as error:
        parser.error(str(error))
    own_data = [k for k in DATA_IDS if k in extra]
    if own_data and args.targets:
        parser.error(f"--targets rotates the demo's domains; with your own data ({', '.join(own_data)}) give each "
                     "target's datalists in a run of its own.")
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    targets: list[str | None] = [None] if own_data else list(args.targets or SEGMENTATION_DOMAINS)
    blocks = []
    for target in targets:
        data = {} if target is None else demo_with_target(target, args.out / "data", args.demo_size,
                                                          tuple(args.demo_cases))
        folder = args.out if target is None else args.out / f"target_{target}"
        per_seed = []
        for seed in range(args.seeds):
            label = "" if target is None else f"target {target}, "
            seed_dir, overrides = folder / f"seed_{seed}", {**extra, **data}
            results = finished_seed(seed_dir, overrides) if args.resume else None
            if results is not None:
                print(f"{label}seed {seed}: reused from {seed_dir}: " + json.dumps(results), flush=True)
            else:
                results, times = run_seed(seed, seed_dir, overrides)
                print(f"{label}seed {seed}: " + json.dumps(results), flush=True)
                print(f"{label}seed {seed} wall times (s): " + json.dumps({k: round(v, 1) for k, v in times.items()}),
                      flush=True)
            per_seed.append(results)
        title = "Target test set" if target is None else f"Target {target} (sources: the other domains), test set"
        blocks.append(
            f"{title}, mean ± std over {args.seeds} seed(s) (HD95 in mm; cases: evaluated over all seeds, of which "
            f"with an empty prediction / an empty reference / both empty):\n\n{format_table(per_seed)}"
        )
        print("\n" + blocks[-1] + "\n", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text("\n\n".join(blocks) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
