"""Table IV of the attention-transfer paper on the demo data: transfer learning vs attention transfer.

For every seed, four students are trained with ``bundles/attention_transfer_densenet/configs/train.json`` on the
small training part and scored on the test list with ``evaluate.json``: DenseNet-121 and DenseNet-40, each by
transfer learning (cross-entropy alone, ``baseline=true``) and by attention transfer from one in-domain DenseNet-121
teacher (trained once by ``train_teacher.json`` on the larger source part, or given with ``--teacher-ckpt``). The
table gives test AUC (macro) and weighted F1 as mean +/- standard deviation over the seeds, in percent.

Example (from the repository root)::

    python scripts/at_tables.py --seeds 3
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from medkd_ext.engines import parse_overrides, run_stage

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "attention_transfer_densenet" / "configs"
STUDENTS = (("DenseNet121", "DenseNet-121"), ("medkd_ext.networks.DenseNet40", "DenseNet-40"))
METHODS = (("tl", "Transfer Learning", True), ("at", "Attention Transfer", False))


def _trainable_millions(student_net: str, overrides: dict[str, Any]) -> float:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({**overrides, "student_net": student_net})
    network = parser.get_parsed_content("network_def")
    return sum(p.numel() for p in network.parameters() if p.requires_grad) / 1e6


def _fmt(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    std = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.2f} +/- {std:.2f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="number of runs (seeds 0 .. N-1) per cell")
    parser.add_argument("--out-dir", type=Path, default=REPO / "bundles" / "attention_transfer_densenet" / "eval"
                        / "at_tables", help="checkpoints, reports and results.json go here")
    parser.add_argument("--teacher-ckpt", type=Path, default=None,
                        help="an existing DenseNet-121 teacher; default: train one into --out-dir (once)")
    parser.add_argument("--max-epochs", type=int, default=None, help="student epochs (default: train.json's)")
    parser.add_argument("--teacher-max-epochs", type=int, default=None, help="teacher epochs (default: the config's)")
    parser.add_argument("--beta", type=float, default=None, help="attention weight 1/beta (default: train.json's)")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                        help="extra config override for every run, e.g. --override image_size=64")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    logging.basicConfig(level=logging.WARNING, stream=sys.stdout)

    common: dict[str, Any] = {"device": args.device}
    try:
        common.update(parse_overrides(args.override))
    except ValueError as error:
        parser.error(str(error))
    if args.max_epochs is not None:
        common["max_epochs"] = args.max_epochs
    if args.beta is not None:
        common["beta"] = args.beta
    out = args.out_dir
    times: dict[str, float] = {}

    teacher = args.teacher_ckpt or out / "teacher" / "teacher.pt"
    if not teacher.is_file():
        if args.teacher_ckpt is not None:
            parser.error(f"--teacher-ckpt {teacher} does not exist")
        teacher_overrides = {**common, "teacher_ckpt": str(teacher), "output_dir": str(out / "teacher"), "seed": 0}
        if args.teacher_max_epochs is not None:
            teacher_overrides["teacher_max_epochs"] = args.teacher_max_epochs
        times["teacher"] = run_stage([CONFIGS / "train.json", CONFIGS / "train_teacher.json"], teacher_overrides)

    results: dict[str, dict[str, list[float]]] = {}
    for seed in range(args.seeds):
        for student_net, student_name in STUDENTS:
            for method, _, baseline in METHODS:
                cell = f"{method}/{student_name}"
                run_dir = out / f"seed{seed}" / method / student_name
                values = {
                    **common,
                    "seed": seed,
                    "student_net": student_net,
                    "baseline": baseline,
                    "teacher_ckpt": str(teacher),
                    "train_teacher_if_missing": False,
                    "ckpt_dir": str(run_dir),
                    "output_dir": str(run_dir),
                }
                start = time.perf_counter()
                run_stage(CONFIGS / "train.json", values)  # trains the student, then evaluates it on the test split
                times[f"seed{seed}/{cell}"] = time.perf_counter() - start
                report = json.loads((run_dir / "metrics.json").read_text())
                scores = results.setdefault(cell, {"auc": [], "f1": []})
                scores["auc"].append(report["auc_macro"])
                scores["f1"].append(report["f1_weighted"])
                print(f"seed {seed} {cell}: AUC {report['auc_macro']:.4f} F1 {report['f1_weighted']:.4f} "
                      f"({times[f'seed{seed}/{cell}']:.0f} s)", flush=True)

    columns = [(m, s) for m, _, _ in METHODS for _, s in STUDENTS]
    params = {s: _trainable_millions(n, common) for n, s in STUDENTS}
    header = "| metric | " + " | ".join(
        f"{title} {'St ' if m == 'at' else ''}{s}" for m, title, _ in METHODS for _, s in STUDENTS
    ) + " |"
    lines = [
        f"Table IV layout, demo data, test split, {args.seeds} seed(s), mean +/- std in percent "
        "(attention transfer: in-domain DenseNet-121 teacher)",
        "",
        header,
        "|" + " --- |" * (len(columns) + 1),
        "| tp | " + " | ".join(f"{params[s]:.1f}m" for _, s in columns) + " |",
        "| AUC | " + " | ".join(_fmt(results[f"{m}/{s}"]["auc"]) for m, s in columns) + " |",
        "| F1 (weighted) | " + " | ".join(_fmt(results[f"{m}/{s}"]["f1"]) for m, s in columns) + " |",
    ]
    print("\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"scores": results, "seconds": times, "overrides": common}, indent=2))
    (out / "table_iv.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
