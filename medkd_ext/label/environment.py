"""MONAI Label's own virtual environment, created on first use and reused after.

MONAI Label 0.8.5 pins what this project cannot share: pydicom 2.4.4 (highdicom needs pydicom 3), numpy < 2 (for
pydicom-seg), and it depends on torchvision and a CUDA build of ``sam2``. None of that is needed to serve these
bundles, so MONAI Label is installed without its dependencies into an environment of its own, beside exactly the
packages its server imports (:data:`REQUIREMENTS`), the same ``torch`` version as this environment's and MONAI 1.6.1.
``medkd_ext`` itself is not installed there: the environment points at this package's folder (a link), so it always
runs the code of this checkout.

The environment lives in ``$MEDKD_LABEL_ENV``, else ``$XDG_CACHE_HOME/medkd/monailabel-<version>`` (default
``~/.cache``). It is rebuilt when :data:`REQUIREMENTS` or the torch version change (a stamp file records them).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["MONAILABEL_VERSION", "REQUIREMENTS", "default_location", "ensure_environment", "environment_python"]

MONAILABEL_VERSION = "0.8.5"

REQUIREMENTS = (
    "monai[nibabel,pydicom,itk,ignite,tensorboard,tqdm,fire,pillow,psutil]==1.6.1",
    "numpy<2",
    "scipy",
    "SimpleITK",
    "pydicom==2.4.4",
    "dicomweb-client==0.59.1",
    "pynetdicom==2.0.2",
    "pydicom-seg==0.4.1",
    "uvicorn>=0.29.0",
    "pydantic>=2.7.0",
    "pydantic-settings>=2.2.1",
    "python-dotenv>=1.0.1",
    "fastapi>=0.110.2",
    "python-multipart>=0.0.9",
    "httpx>=0.27.0",
    "schedule>=1.2.1",
    "timeloop>=1.0.2",
    "expiringdict>=1.2.2",
    "expiring_dict>=1.1.0",
    "cachetools>=5.3.3",
    "watchdog>=4.0.0",
    "pynrrd>=1.0.0",
    "girder-client>=3.2.3",
    "einops>=0.7.0",
    "pyyaml>=6.0.1",
    "filelock>=3.11.0",
    "passlib>=1.7.4",
    "pyjwt>=2.8.0",
    "bcrypt>=4.1.2",
    "shapely>=2.0.4",
    "requests>=2.31.0",
    "requests-toolbelt>=1.0.0",
    "urllib3>=2.2.1",
    "google-auth>=2.29.0",
)
"""What MONAI Label's server imports (its own pins where it has them), without torchvision, sam2 or the DICOMweb
cloud extras; ``torch`` is added at the version of this environment's, and ``monailabel`` without dependencies."""

_STAMP = "medkd-label-env.json"
_LINK_DIR = "medkd_src"


def _torch_requirement() -> str:
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def _signature() -> dict[str, object]:
    return {
        "python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "torch": _torch_requirement(),
        "monailabel": MONAILABEL_VERSION,
        "requirements": hashlib.sha256("\n".join(REQUIREMENTS).encode()).hexdigest(),
    }


def default_location() -> Path:
    """``$MEDKD_LABEL_ENV``, else ``$XDG_CACHE_HOME/medkd/monailabel-<version>`` (``~/.cache`` by default)."""
    if os.environ.get("MEDKD_LABEL_ENV"):
        return Path(os.environ["MEDKD_LABEL_ENV"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "medkd" / f"monailabel-{MONAILABEL_VERSION}"


def environment_python(location: str | os.PathLike) -> Path:
    """The Python interpreter of the virtual environment at ``location``."""
    location = Path(location)
    return location / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


@contextlib.contextmanager
def _locked(location: Path) -> Iterator[None]:
    """One process at a time builds the environment at ``location`` (others wait, then reuse it)."""
    location.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{location}.lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # Windows: no lock
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_current(location: Path) -> bool:
    stamp = location / _STAMP
    try:
        return json.loads(stamp.read_text()) == _signature() and environment_python(location).is_file()
    except (OSError, ValueError):
        return False


def _run(command: list[str], what: str, log: Callable[[str], None]) -> None:
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, encoding="utf-8",
                            errors="replace")
    if result.returncode != 0:
        tail = "\n".join(result.stdout.strip().splitlines()[-15:])
        log(tail)
        raise RuntimeError(f"creating MONAI Label's environment failed while {what} (exit {result.returncode}): "
                           f"{' '.join(command)}")


def _link_package(location: Path) -> None:
    """Make this ``medkd_ext`` importable in the environment at ``location`` (a link to its folder, and a ``.pth``
    file naming the folder holding the link), so that the environment runs this checkout's code."""
    package = Path(__file__).resolve().parents[1]
    links = location / _LINK_DIR
    links.mkdir(exist_ok=True)
    link = links / "medkd_ext"
    if link.is_symlink() or link.exists():
        if link.is_symlink() and link.resolve() == package:
            pass
        elif link.is_symlink() or link.is_file():
            link.unlink()
        else:
            shutil.rmtree(link)
    if not link.exists():
        try:
            link.symlink_to(package, target_is_directory=True)
        except OSError:  # no symlinks (Windows without the right): a copy, refreshed at every start
            shutil.copytree(package, link, ignore=shutil.ignore_patterns("__pycache__"))
    purelib = subprocess.run(
        [str(environment_python(location)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        stdout=subprocess.PIPE, encoding="utf-8", check=True,
    ).stdout.strip()
    Path(purelib, "medkd_ext_checkout.pth").write_text(f"{links}\n")


def ensure_environment(location: str | os.PathLike | None = None, log: Callable[[str], None] = print) -> Path:
    """Create (or reuse) MONAI Label's environment at ``location`` (default :func:`default_location`) and return its
    Python interpreter.

    A first build installs about 3 GB from the package index (``torch`` at this environment's version first, so that
    pip picks the same build) and takes a few minutes; later calls only refresh the link to ``medkd_ext``.

    Raises:
        RuntimeError: pip failed (the command and pip's last lines are given).
    """
    location = Path(location) if location is not None else default_location()
    location = location.expanduser().resolve()
    with _locked(location):
        if not _is_current(location):
            if location.exists():
                log(f"MONAI Label environment {location} is out of date: rebuilding it.")
                shutil.rmtree(location)
            log(f"Creating MONAI Label's environment in {location} (once; a few minutes, about 3 GB) ...")
            _run([sys.executable, "-m", "venv", str(location)], "creating the virtual environment", log)
            python = str(environment_python(location))
            pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            _run(pip + [_torch_requirement()], "installing torch", log)
            _run(pip + list(REQUIREMENTS), "installing MONAI Label's dependencies", log)
            _run(pip + ["--no-deps", f"monailabel=={MONAILABEL_VERSION}"], "installing monailabel", log)
            (location / _STAMP).write_text(json.dumps(_signature(), indent=1))
        _link_package(location)
    return environment_python(location)
