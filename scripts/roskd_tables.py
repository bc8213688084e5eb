"""RoS-KD and its baselines on the demo (or any dataset): the paper's Table I and Table II over several seeds.

For every seed each teacher set the chosen methods need is trained once (``configs/train.json`` with its student and
evaluation stages disabled): the teachers on the overlapping subsets (RoS-KD, Baseline V) and the teachers on the
whole training split (Baselines II and III, as the paper defines them; ``medkd_ext.engines.roskd.TEACHER_DATA``).
Then every method is trained from its set (``configs/train.json --method <m> --train_teachers false``)
and evaluated on the test split; Baseline III and RoS-KD are also attacked (``configs/robustness.json`` over
``evaluate.json``: FGSM and PGD, L2, radius 128/255).
With ``--noise_rates`` the whole comparison is repeated at each rate of simulated label noise (the fraction of
training labels flipped to another class; teachers are trained again on each noisy label set), one pair of tables per
rate. Results are printed as mean +/- std over the seeds and written to ``<work_dir>/roskd_tables.json`` after every
seed.

    python scripts/roskd_tables.py --seeds 3 --noise_rates 0 0.2 0.4 --work_dir /tmp/roskd_tables
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medkd_ext.engines import disabled_stages, parse_overrides, run_stage  # noqa: E402
from medkd_ext.engines.roskd import ROSKD_METHODS, TEACHER_DATA, method_teacher_indices  # noqa: E402

CONFIGS = REPO / "bundles" / "roskd_classification" / "configs"
ROWS = {
    "student_only": "Baseline I",
    "hinton_kd": "Baseline II",
    "uniform_mkd": "Baseline III",
    "roskd_no_smoothing": "Baseline V",
    "roskd": "RoS-KD",
}
ATTACKED = ("uniform_mkd", "roskd")
METRICS = ("precision_macro", "recall_macro", "f1_macro")


def _mean_std(values: list[float]) -> str:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return f"{mean:.3f} +/- {std:.3f}"


def _noise_rates(args: argparse.Namespace) -> list[float | None]:
    return list(args.noise_rates) if args.noise_rates else [None]


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every seed of every noise rate (``None``: the config's); returns ``{"tables": [{"noise_rate": r, "seeds":
    [...]}], "times": {...}}``, also written to ``<work_dir>/roskd_tables.json`` after each seed."""
    work = Path(args.work_dir).resolve()
    results: dict[str, Any] = {"tables": [], "times": {}}
    for noise_rate in _noise_rates(args):
        table: dict[str, Any] = {"noise_rate": noise_rate, "seeds": []}
        results["tables"].append(table)
        root = work if noise_rate is None else work / f"noise_{noise_rate:g}"
        label = "" if noise_rate is None else f"noise {noise_rate:g} "
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            table["seeds"].append(_run_seed(args, seed, noise_rate, root / f"seed_{seed}", label, results["times"]))
            work.mkdir(parents=True, exist_ok=True)
            (work / "roskd_tables.json").write_text(json.dumps(results, indent=2))
    return results


def _run_seed(
    args: argparse.Namespace, seed: int, noise_rate: float | None, folder: Path, label: str, times: dict[str, float]
) -> dict[str, Any]:
    base = {"device": args.device, "seed": seed, "bundle_root": str(CONFIGS.parent)}
    base.update(parse_overrides(args.override))
    if args.dataset_dir:
        base["dataset_dir"] = args.dataset_dir
    if noise_rate is not None:
        base["noise_rate"] = noise_rate
    models = folder / "models"
    for data in sorted({TEACHER_DATA[m] for m in args.methods if m in TEACHER_DATA}):
        start = time.perf_counter()
        # the method selects the set to train: of those trained on this data, the one distilling the most teachers
        method = max((m for m in args.methods if TEACHER_DATA.get(m) == data),
                     key=lambda m: len(method_teacher_indices(m, 5, 4)))
        teacher_overrides = {**base, "method": method, "ckpt_dir": str(models),
                             "output_dir": str(folder / f"teachers_{data}")}
        teacher_overrides.update(disabled_stages(CONFIGS / "train.json", ("distill_init", "student", "evaluate")))
        if args.teacher_max_epochs is not None:
            teacher_overrides["teacher_max_epochs"] = args.teacher_max_epochs
        run_stage(CONFIGS / "train.json", overrides=teacher_overrides)
        times[f"{label}seed {seed} teachers ({data})"] = time.perf_counter() - start
    per_seed: dict[str, Any] = {"seed": seed}
    for method in args.methods:
        out = folder / method
        overrides = {
            **base,
            "method": method,
            "train_teachers": False,
            "ckpt_dir": str(models),
            "ckpt_file": str(models / f"model_{method}.pt"),
            "output_dir": str(out),
        }
        if args.max_epochs is not None:
            overrides["max_epochs"] = args.max_epochs
        start = time.perf_counter()
        run_stage(CONFIGS / "train.json", overrides=overrides)
        report = json.loads((out / "metrics.json").read_text())
        per_seed[method] = {"test": {k: report[k] for k in (*METRICS, "auc_macro", "accuracy")}}
        if method in ATTACKED:
            attack = {**overrides, "robustness#pgd_steps": args.pgd_steps}
            run_stage([CONFIGS / f for f in ("train.json", "evaluate.json", "robustness.json")], overrides=attack)
            robust = json.loads((out / "robustness.json").read_text())
            per_seed[method]["attacks"] = {
                a: {k: robust[a][k] for k in METRICS} for a in ("clean", "fgsm", "pgd") if a in robust
            }
        times[f"{label}seed {seed} {method}"] = time.perf_counter() - start
    return per_seed


def _tables(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The tables of a results file; one written before ``--noise_rates`` existed is one table at the config's."""
    if "tables" in results:
        return results["tables"]
    return [{"noise_rate": None, "seeds": results["seeds"]}]


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Several runs' results (other seeds, other noise rates) as one: seeds of the same noise rate are pooled."""
    merged: dict[str, Any] = {"tables": [], "times": {}}
    by_rate: dict[float | None, dict[str, Any]] = {}
    for part in parts:
        for table in _tables(part):
            rate = table["noise_rate"]
            if rate not in by_rate:
                by_rate[rate] = {"noise_rate": rate, "seeds": []}
                merged["tables"].append(by_rate[rate])
            by_rate[rate]["seeds"] += table["seeds"]
        merged["times"].update(part.get("times", {}))
    merged["tables"].sort(key=lambda t: -1.0 if t["noise_rate"] is None else t["noise_rate"])
    return merged


def format_tables(results: dict[str, Any], methods: list[str]) -> str:
    blocks = []
    for table in _tables(results):
        seeds = table["seeds"]
        rate = table["noise_rate"]
        noise = "" if rate is None else f", label noise {rate:g} (fraction of training labels flipped)"
        lines = [f"Table I{noise}: test split, macro averages, mean +/- std over {len(seeds)} seed(s)", ""]
        lines += ["| Settings | Precision | Recall | F1 |", "|---|---|---|---|"]
        for method in methods:
            cells = [_mean_std([s[method]["test"][k] for s in seeds]) for k in METRICS]
            lines.append(f"| {ROWS[method]} | " + " | ".join(cells) + " |")
        attacked = [m for m in ATTACKED if m in methods]
        if attacked:
            lines += ["", f"Table II{noise}: L2 attacks, radius 128/255 (each method with its own teachers)", ""]
            lines += [
                "| Attack | Settings | Precision before | Recall before | F1 before | Precision after | Recall after "
                "| F1 after |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for attack in ("pgd", "fgsm"):
                for method in attacked:
                    before = [_mean_std([s[method]["attacks"]["clean"][k] for s in seeds]) for k in METRICS]
                    after = [_mean_std([s[method]["attacks"][attack][k] for s in seeds]) for k in METRICS]
                    lines.append(f"| {attack.upper()} | {ROWS[method]} | " + " | ".join(before + after) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (runs) to average")
    parser.add_argument("--first_seed", type=int, default=0)
    parser.add_argument("--work_dir", default="roskd_tables_runs", help="folder of the models and reports")
    parser.add_argument("--dataset_dir", default=None, help="dataset folder (default: the embedded demo)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--methods", nargs="+", default=list(ROWS), choices=list(ROSKD_METHODS))
    parser.add_argument("--teacher_max_epochs", type=int, default=None, help="teacher epochs (default: the config's)")
    parser.add_argument("--max_epochs", type=int, default=None, help="student epochs (default: the config's)")
    parser.add_argument("--noise_rates", nargs="+", type=float, default=None,
                        help="repeat the comparison at each of these label-noise rates (default: the config's)")
    parser.add_argument("--pgd_steps", type=int, default=10)
    parser.add_argument("--override", nargs="*", default=[], help="extra top-level overrides key=value (JSON values)")
    parser.add_argument(
        "--from_json", nargs="+", default=None, help="print the tables of earlier runs' roskd_tables.json files"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        merged = merge([json.loads(Path(path).read_text()) for path in args.from_json])
        print(format_tables(merged, args.methods))
        print("\nwall times (s): " + ", ".join(f"{k}: {v:.0f}" for k, v in merged["times"].items()))
        return 0
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    bad = [r for r in args.noise_rates or [] if not 0 <= r < 1]
    if bad:
        parser.error(f"--noise_rates must lie in [0, 1), got {bad}")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    results = run(args)
    print(format_tables(results, args.methods))
    print("\nwall times (s): " + ", ".join(f"{k}: {v:.0f}" for k, v in results["times"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
