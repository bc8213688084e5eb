"""Table IV of the attention-transfer paper on the demo data: transfer learning vs attention transfer.

As in the paper, every network starts from pre-trained weights (the ImageNet role: a DenseNet-121 pre-trained once
on the generic demo by ``train_pretrain.json``, or yours with ``--pretrained-ckpt``), and the in-domain teacher is a
DenseNet-121 trained once by ``train_teacher.json`` on the demo's related site (another hospital's larger dataset of
the same findings, the MIMIC-CXR role; or given with ``--teacher-ckpt``). For every seed seven students are trained
with ``bundles/attention_transfer_densenet/configs/train.json`` on the small ``train`` part and scored on the test
list with ``evaluate.json``, the paper's seven columns:

- transfer learning (cross-entropy alone, ``baseline=true``): DenseNet-121 with all layers trained, DenseNet-121
  with the last 34 layers trained (``trainable_layers=34``), DenseNet-40;
- attention transfer from the pre-trained network itself (Teacher_ImageNet, cross-domain: its generic classes,
  ``teacher_num_classes``) to a DenseNet-121 and a DenseNet-40 student;
- attention transfer from the in-domain teacher (Teacher_MIMIC-CXR) to a DenseNet-121 and a DenseNet-40 student.

The table gives the trainable parameters, test AUC (macro) and weighted F1 as mean +/- standard deviation over the
seeds, in percent. ``--no-pretraining`` starts every network from random weights instead (and leaves out the
cross-domain columns).

Example (from the repository root)::

    python scripts/at_tables.py --seeds 3 --max-epochs 20
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

from medkd_ext.engines import disabled_stages, parse_overrides, run_stage

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "attention_transfer_densenet" / "configs"
D121, D40 = "DenseNet121", "medkd_ext.networks.DenseNet40"
# (key, column title, student_net, baseline, trainable_layers, teacher: None, "generic" or "related")
COLUMNS = (
    ("tl_121", "Transfer Learning DenseNet-121", D121, True, None, None),
    ("tl_121_last34", "Transfer Learning DenseNet-121, last 34 layers", D121, True, 34, None),
    ("tl_40", "Transfer Learning DenseNet-40", D40, True, None, None),
    ("at_generic_121", "Attention Transfer, Teacher generic (ImageNet role), St DenseNet-121", D121, False, None,
     "generic"),
    ("at_generic_40", "Attention Transfer, Teacher generic (ImageNet role), St DenseNet-40", D40, False, None,
     "generic"),
    ("at_related_121", "Attention Transfer, Teacher related site (MIMIC-CXR role), St DenseNet-121", D121, False,
     None, "related"),
    ("at_related_40", "Attention Transfer, Teacher related site (MIMIC-CXR role), St DenseNet-40", D40, False, None,
     "related"),
)


def _trainable_millions(student_net: str, trainable_layers: int | None, overrides: dict[str, Any]) -> float:
    from monai.bundle import ConfigParser

    from medkd_ext.engines.attention_transfer import unfreeze_last_layers

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({**overrides, "student_net": student_net})
    network = parser.get_parsed_content("network_def")
    return sum(p.numel() for p in unfreeze_last_layers(network, trainable_layers)) / 1e6


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
                        help="an existing in-domain DenseNet-121 teacher; default: train one into --out-dir (once)")
    parser.add_argument("--pretrained-ckpt", type=Path, default=None,
                        help="pre-trained DenseNet-121 weights (e.g. ImageNet, torchvision or MONAI keys); default: "
                             "pre-train one on the generic demo into --out-dir (once)")
    parser.add_argument("--pretrained-classes", type=int, default=None,
                        help="classes of --pretrained-ckpt's classifier (the cross-domain teacher's "
                             "teacher_num_classes; default: the config's pretrain_num_classes)")
    parser.add_argument("--no-pretraining", action="store_true",
                        help="start every network from random weights (no cross-domain columns)")
    parser.add_argument("--max-epochs", type=int, default=None, help="student epochs (default: train.json's)")
    parser.add_argument("--teacher-max-epochs", type=int, default=None, help="teacher epochs (default: the config's)")
    parser.add_argument("--beta", type=float, default=None, help="attention weight 1/beta (default: train.json's)")
    parser.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=JSON",
                        help="extra config override for every run, e.g. --override image_size=64")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, got {args.seeds}")
    if args.no_pretraining and args.pretrained_ckpt is not None:
        parser.error("--no-pretraining and --pretrained-ckpt exclude each other")
    for name, path in (("--teacher-ckpt", args.teacher_ckpt), ("--pretrained-ckpt", args.pretrained_ckpt)):
        if path is not None and not path.is_file():
            parser.error(f"{name} {path} does not exist")
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

    # pre-training and the in-domain teacher, once, through train.json's own stages (their completion recorded)
    pretrained = None if args.no_pretraining else args.pretrained_ckpt or out / "models" / "pretrained.pt"
    teacher = args.teacher_ckpt or out / "models" / "teacher.pt"
    common["pretrained_ckpt"] = None if pretrained is None else str(pretrained)
    if (pretrained is not None and not pretrained.is_file()) or not teacher.is_file():
        values = {**common, "teacher_ckpt": str(teacher), "ckpt_dir": str(out / "models"),
                  "output_dir": str(out / "setup"), "seed": 0,
                  **disabled_stages(CONFIGS / "train.json", ("distill_init", "student", "evaluate"))}
        if args.teacher_max_epochs is not None:
            values["teacher_max_epochs"] = args.teacher_max_epochs
        start = time.perf_counter()
        run_stage(CONFIGS / "train.json", values)
        times["pretrain and teacher"] = time.perf_counter() - start

    columns = [c for c in COLUMNS if pretrained is not None or c[5] != "generic"]
    results: dict[str, dict[str, list[float]]] = {}
    for seed in range(args.seeds):
        for key, _, student_net, baseline, trainable_layers, source in columns:
            run_dir = out / f"seed{seed}" / key
            values = {**common, "seed": seed, "student_net": student_net, "baseline": baseline,
                      "trainable_layers": trainable_layers, "train_teacher_if_missing": False,
                      "teacher_ckpt": str(teacher), "ckpt_dir": str(run_dir), "output_dir": str(run_dir)}
            if source == "generic":  # the pre-trained network as a cross-domain teacher, with its own classes
                values["teacher_ckpt"] = str(pretrained)
                if args.pretrained_classes is not None:
                    values["teacher_num_classes"] = args.pretrained_classes
                else:
                    values["teacher_num_classes"] = "@pretrain_num_classes"
            start = time.perf_counter()
            run_stage(CONFIGS / "train.json", values)  # trains the student, then evaluates it on the test split
            times[f"seed{seed}/{key}"] = time.perf_counter() - start
            report = json.loads((run_dir / "metrics.json").read_text())
            scores = results.setdefault(key, {"auc": [], "f1": []})
            scores["auc"].append(report["auc_macro"])
            scores["f1"].append(report["f1_weighted"])
            print(f"seed {seed} {key}: AUC {report['auc_macro']:.4f} F1 {report['f1_weighted']:.4f} "
                  f"({times[f'seed{seed}/{key}']:.0f} s)", flush=True)

    params = {c[0]: _trainable_millions(c[2], c[4], common) for c in columns}
    origin = "pre-trained on the generic demo" if args.pretrained_ckpt is None else f"from {args.pretrained_ckpt}"
    lines = [
        f"Table IV layout, demo data, test split, {args.seeds} seed(s), mean +/- std in percent (every network "
        f"{'from random weights' if pretrained is None else origin})",
        "",
        "| metric | " + " | ".join(c[1] for c in columns) + " |",
        "|" + " --- |" * (len(columns) + 1),
        "| tp | " + " | ".join(f"{params[c[0]]:.1f}m" for c in columns) + " |",
        "| AUC | " + " | ".join(_fmt(results[c[0]]["auc"]) for c in columns) + " |",
        "| F1 (weighted) | " + " | ".join(_fmt(results[c[0]]["f1"]) for c in columns) + " |",
    ]
    print("\n".join(lines))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"scores": results, "seconds": times, "overrides": common}, indent=2))
    (out / "table_iv.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
