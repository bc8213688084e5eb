"""``python -m medkd_ext.label``: serve the trained bundles through MONAI Label.

    python -m medkd_ext.label serve --port 8000            # the three bundles of this repository, on 127.0.0.1
    python -m medkd_ext.label serve --bundle path/to/bundle --host 0.0.0.0 --conf key value
    python -m medkd_ext.label setup                        # only create MONAI Label's environment

``serve`` loads every bundle's trained ``models/model.pt`` here first (a checkpoint that does not fit its network
stops it, naming the file), creates or reuses MONAI Label's own environment (:mod:`medkd_ext.label.environment`),
writes the app into ``--workspace`` and runs ``monailabel start_server`` there, offline, until interrupted. Uploads
and results stay under the studies folder (``--studies``, default ``<workspace>/studies``).

``dicom-seg MASK SERIES OUT`` (used by the server) writes a DICOM-SEG of a NIfTI mask predicted for a DICOM series.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

BUNDLE_NAMES = ("roskd_classification", "attention_transfer_densenet", "joint_teacher_seg")


def default_workspace() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "medkd" / "label"


def _repository_bundles() -> list[Path]:
    """This repository's bundles that have a trained ``models/model.pt``; says which are skipped and why."""
    from medkd_ext.engines import locate_bundle

    found = []
    for name in BUNDLE_NAMES:
        try:
            root = Path(locate_bundle(name)).resolve()
        except FileNotFoundError:
            print(f"bundle {name}: not found; not served.")
            continue
        if (root / "models" / "model.pt").is_file():
            found.append(root)
        else:
            print(f"bundle {name}: no trained {root / 'models' / 'model.pt'} (train it: python -m monai.bundle run "
                  f"--config_file {root / 'configs' / 'train.json'}); not served.")
    return found


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m medkd_ext.label", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the trained bundles through MONAI Label")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine "
                       "only; 0.0.0.0 for every network interface)")
    serve.add_argument("--bundle", action="append", default=None, metavar="FOLDER",
                       help="a bundle folder to serve (repeat for several); default: this repository's trained ones")
    serve.add_argument("--workspace", type=Path, default=None, help=f"app folder (default {default_workspace()})")
    serve.add_argument("--studies", type=Path, default=None, help="studies folder (default <workspace>/studies)")
    serve.add_argument("--env", type=Path, default=None,
                       help="MONAI Label's environment (default $MEDKD_LABEL_ENV or ~/.cache/medkd/monailabel-0.8.5)")
    serve.add_argument("--conf", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                       help="passed to MONAI Label's start_server --conf")
    serve.add_argument("--check", action="store_true", help="load the bundles and prepare everything, then stop "
                       "instead of serving")
    setup = commands.add_parser("setup", help="create (or update) MONAI Label's environment and print its python")
    setup.add_argument("--env", type=Path, default=None)
    seg = commands.add_parser("dicom-seg", help="write a DICOM-SEG of a NIfTI mask predicted for a DICOM series")
    seg.add_argument("mask", type=Path)
    seg.add_argument("series", type=Path)
    seg.add_argument("out", type=Path)
    seg.add_argument("--labels", default='["lesion"]', help="JSON list: the name of each label value from 1")
    seg.add_argument("--algorithm", default="medkd")
    seg.add_argument("--version", default="0.1.0")
    return parser


def _write_app(workspace: Path, bundles: Sequence[Path]) -> Path:
    app = workspace / "app"
    app.mkdir(parents=True, exist_ok=True)
    (app / "main.py").write_text(
        '"""Written by python -m medkd_ext.label serve: the medkd bundles as a MONAI Label app."""\n\n'
        "from medkd_ext.label.app import MedkdLabelApp  # noqa: F401\n"
    )
    settings = {"bundles": [str(b) for b in bundles], "project_python": sys.executable}
    (app / "medkd_label.json").write_text(json.dumps(settings, indent=1))
    return app


def serve(args: argparse.Namespace) -> int:
    from medkd_ext.label.bundles import BundleModel
    from medkd_ext.label.environment import ensure_environment

    if args.bundle:
        roots = [Path(b).resolve() for b in args.bundle]
    else:
        roots = _repository_bundles()
        if not roots:
            raise SystemExit("no trained bundle to serve: train one (python -m monai.bundle run --config_file "
                             "bundles/<name>/configs/train.json) or give --bundle FOLDER.")
    names = set()
    for root in roots:
        model = BundleModel(root, device="cpu")  # refuses a missing or mismatched checkpoint, naming it
        if model.name in names:
            raise SystemExit(f"two bundles are named {model.name!r}: each is served under its folder's name.")
        names.add(model.name)
        print(f"{model.name}: {model.type}, {model.spatial_dims}D, labels {list(model.labels)} ({model.ckpt_file})")
    try:
        import highdicom  # noqa: F401
    except ImportError:
        print("highdicom is not installed here: DICOM-SEG output is off (pip install 'medkd-ext[dicom]').")
    workspace = (args.workspace or default_workspace()).expanduser().resolve()
    studies = (args.studies or workspace / "studies").expanduser().resolve()
    uploads = studies / ".uploads"  # medkd_ext.label.app.UPLOADS (that module imports MONAI Label)
    uploads.mkdir(parents=True, exist_ok=True)
    python = ensure_environment(args.env)
    app = _write_app(workspace, roots)
    command = [str(python), "-m", "monailabel.main", "start_server", "--app", str(app), "--studies", str(studies),
               "--host", args.host, "--port", str(args.port)]
    for key, value in args.conf:
        command += ["--conf", key, value]
    environ = {**os.environ, "TMPDIR": str(uploads), "TEMP": str(uploads), "TMP": str(uploads),
               "PYTHONUNBUFFERED": "1"}
    if args.check:
        check = subprocess.run(
            [str(python), "-c", "import sys; from medkd_ext.label.app import MedkdLabelApp; "
             "MedkdLabelApp(sys.argv[1], sys.argv[2], {}); print('app ready')", str(app), str(studies)],
            env=environ,
        )
        return check.returncode
    print(f"MONAI Label: http://{args.host}:{args.port} (studies: {studies}); Ctrl+C stops it.", flush=True)
    server = subprocess.Popen(command, env=environ)
    try:
        code = server.wait()
    except KeyboardInterrupt:
        server.send_signal(signal.SIGINT)
        code = server.wait()
        return 0
    if code != 0:
        print(f"MONAI Label's server stopped with exit code {code}; its log is above.", file=sys.stderr)
    return code


def dicom_seg(args: argparse.Namespace) -> int:
    import nibabel as nib
    import numpy as np

    from medkd_ext.transforms.dicom_seg import write_dicom_seg

    mask = nib.load(str(args.mask))
    written = write_dicom_seg(
        np.asarray(mask.dataobj), mask.affine, args.series, args.out, json.loads(args.labels),
        algorithm=args.algorithm, version=args.version,
    )
    print(written)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "setup":
        from medkd_ext.label.environment import ensure_environment

        print(ensure_environment(args.env))
        return 0
    if args.command == "dicom-seg":
        return dicom_seg(args)
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
