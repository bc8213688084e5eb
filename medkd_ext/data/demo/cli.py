"""Command line of the demo generators.

::

    python -m medkd_ext.data.demo --task segmentation --out DIR [--seed S]
    python -m medkd_ext.data.demo --task classification --out DIR [--seed S] [--spatial-dims 2|3] [--multi-label]
        [--site target|related]
    python -m medkd_ext.data.demo --task pretraining --out DIR [--seed S] [--spatial-dims 2|3]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .cache import DEMO_MANIFEST_NAME
from .classification import CLASSIFICATION_SITES, make_classification_demo
from .pretraining import make_pretraining_demo
from .segmentation import make_segmentation_demo

__all__ = ["main"]

_DESCRIPTION = "Synthetic demo datasets, so that every bundle runs out of the box without downloading data."


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m medkd_ext.data.demo --task ... --out DIR``."""
    parser = argparse.ArgumentParser(prog="python -m medkd_ext.data.demo", description=_DESCRIPTION)
    parser.add_argument("--task", required=True, choices=("segmentation", "classification", "pretraining"))
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3), default=2, help="classification, pretraining")
    parser.add_argument("--multi-label", action="store_true", help="classification only")
    parser.add_argument("--site", choices=CLASSIFICATION_SITES, default="target",
                        help="classification only: the bundles' demo or another hospital's images of its findings")
    args = parser.parse_args(argv)
    before = _manifest_mtime(args.out)
    if args.task == "segmentation":
        paths = make_segmentation_demo(args.out, seed=args.seed)
    elif args.task == "pretraining":
        paths = make_pretraining_demo(args.out, seed=args.seed, spatial_dims=args.spatial_dims)
    else:
        paths = make_classification_demo(
            args.out, seed=args.seed, spatial_dims=args.spatial_dims, multi_label=args.multi_label, site=args.site
        )
    reused = before is not None and before == _manifest_mtime(args.out)
    state = "complete dataset found, reused" if reused else "written"
    print(f"{args.task} demo ({state}) in {args.out}:")
    for name, path in paths.items():
        print(f"  {name}: {path}")
    return 0


def _manifest_mtime(out_dir: Path) -> int | None:
    try:
        return (out_dir / DEMO_MANIFEST_NAME).stat().st_mtime_ns
    except OSError:
        return None
