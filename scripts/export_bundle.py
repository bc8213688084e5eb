"""Export a trained bundle for a clinician: a self-contained folder and ``.zip`` that runs without this repository.

The exported bundle holds its configs, docs, LICENSE, the weights (``models/model.pt``), the TorchScript model
(``models/model.ts``; ``models/model.onnx`` too when ONNX Runtime is installed and agrees), a SHA-256 manifest checked
before every run, and a README in a clinician's words. Its ``configs/inference.json`` needs ``torch``, ``monai`` and
MONAI's image readers, not ``medkd_ext``; see :mod:`medkd_ext.export`.

Example (from the repository root, after ``configs/train.json`` has trained the bundle)::

    python scripts/export_bundle.py bundles/joint_teacher_seg exported/joint_teacher_seg
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from medkd_ext.export import export_bundle


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="the bundle folder (e.g. bundles/roskd_classification) or its name")
    parser.add_argument("out", help="the folder to create for the exported bundle (a .zip is written beside it)")
    parser.add_argument("--ckpt_file", default=None, help="weights to export (default: the bundle's models/model.pt)")
    onnx = parser.add_mutually_exclusive_group()
    onnx.add_argument("--onnx", dest="onnx", action="store_true", default=None, help="require an ONNX model too")
    onnx.add_argument("--no-onnx", dest="onnx", action="store_false", help="do not export an ONNX model")
    parser.add_argument("--no-zip", dest="make_zip", action="store_false", help="do not write <out>.zip")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export folder")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        summary = export_bundle(args.bundle, args.out, args.ckpt_file, args.onnx, args.make_zip, args.overwrite)
    except (FileNotFoundError, ValueError, ImportError, TypeError) as error:
        print(f"export_bundle: error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
