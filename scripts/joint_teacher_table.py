"""Table 2 of Ceausescu et al. for the joint-teacher bundle: multi-head / dataset-specific / joint teacher / student.

For every seed, trains the bundle's three stages (``train.json``) and the two baselines on the same data:

- dataset-specific: the student architecture trained on the target alone (``train_target_teacher.json`` with the
  student's architecture, width, epochs and supervised loss ``seg_loss``, Dice + cross-entropy);
- multi-head: one shared student backbone with a head per dataset, trained on alternating batches of the target
  and every source (``train_multihead.json``);

then evaluates the four models on the target's held-out test cases and prints IoU, DSC, Recall, Precision and HD95
as mean +/- std over the seeds (Markdown). Example:

    python scripts/joint_teacher_table.py --seeds 3 --out /tmp/jt_table
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from monai.bundle import ConfigParser

from medkd_ext.engines import evaluate_segmentation, run_stage
from medkd_ext.networks import load_state_dict

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "joint_teacher_seg"
CONFIGS = BUNDLE / "configs"
METRICS = ("IoU", "DSC", "Recall", "Precision", "HD95")
ROWS = ("multi-head", "dataset-specific", "joint teacher", "student")


def _parser(config: str, overrides: dict[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.read_meta(str(CONFIGS / "metadata.json"))
    parser.update(overrides)
    parser.parse()
    return parser


def run_seed(seed: int, out: Path, extra: dict[str, Any]) -> tuple[dict[str, dict[str, float]], dict[str, float]]:
    """Train everything for one seed; return the target-test means per model and the wall time per run."""
    base = {"bundle_root": str(BUNDLE), "seed": seed, "ckpt_dir": str(out / "models"), "output_dir": str(out / "eval"),
            **extra}
    times: dict[str, float] = {}
    start = time.perf_counter()
    run_stage(CONFIGS / "train.json", overrides=base)
    times["train.json (3 stages)"] = time.perf_counter() - start
    student = _parser("train.json", base)
    # the student's architecture, epochs and supervised loss (Dice + CE), without teachers
    specific = {**base, "teacher_arch": student["student_arch"], "teacher_width": student["student_width"],
                "max_epochs": student["max_epochs"], "loss": student["seg_loss"],
                "ckpt_file": str(out / "models" / "baseline_specific.pt"), "output_dir": str(out / "eval_specific")}
    times["dataset-specific"] = run_stage(CONFIGS / "train_target_teacher.json", overrides=specific)
    multihead = {**base, "max_epochs": student["max_epochs"], "output_dir": str(out / "eval_multihead")}
    times["multi-head"] = run_stage(CONFIGS / "train_multihead.json", overrides=multihead)

    device = student.get_parsed_content("device")
    networks = {
        "student": load_state_dict(student.get_parsed_content("network_def"), out / "models" / "model.pt", device),
        "joint teacher": student.get_parsed_content("joint_teacher"),
        "dataset-specific": load_state_dict(
            _parser("train_target_teacher.json", specific).get_parsed_content("network_def"),
            out / "models" / "baseline_specific.pt", device),
        "multi-head": load_state_dict(
            _parser("train_multihead.json", multihead).get_parsed_content("network_def"),
            out / "models" / "baseline_multihead.pt", device),  # head 0 is the target's
    }
    test = {"target": student.get_parsed_content("datalists")["target_test"]}
    results = {}
    for name, network in networks.items():
        means = evaluate_segmentation(
            network.to(device).eval(), test, student.get_parsed_content("validate#preprocessing"),
            student.get_parsed_content("validate#inferer"), student.get_parsed_content("validate#postprocessing"),
            out / "table" / name.replace(" ", "_"), int(student["num_classes"]), device,
        )
        row = next(r for r in means["target"] if r["class"] == "all")
        results[name] = {m: float(row[m]) for m in METRICS}
    return results, times


def format_table(per_seed: list[dict[str, dict[str, float]]]) -> str:
    lines = ["| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for name in ROWS:
        cells = []
        for m in METRICS:
            values = np.array([r[name][m] for r in per_seed], dtype=float)
            values = values[np.isfinite(values)]
            cells.append(f"{values.mean():.3f} ± {values.std():.3f}" if len(values) else "n/a")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0 .. N-1)")
    parser.add_argument("--out", type=Path, default=Path("joint_teacher_table"), help="working folder")
    parser.add_argument("--override", action="append", default=[], metavar="ID=JSON",
                        help="bundle override for every run, e.g. --override max_epochs=20 (value parsed as JSON)")
    args = parser.parse_args()
    extra = {}
    for item in args.override:
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    per_seed, all_times = [], []
    for seed in range(args.seeds):
        results, times = run_seed(seed, args.out / f"seed_{seed}", extra)
        per_seed.append(results)
        all_times.append(times)
        print(f"seed {seed}: " + json.dumps(results), flush=True)
        print(f"seed {seed} wall times (s): " + json.dumps({k: round(v, 1) for k, v in times.items()}), flush=True)
    table = format_table(per_seed)
    print(f"\nTarget test set, mean ± std over {args.seeds} seed(s) (HD95 in mm):\n")
    print(table)
    (args.out / "table.md").write_text(table + "\n")


if __name__ == "__main__":
    main()
