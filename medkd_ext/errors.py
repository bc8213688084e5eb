"""The last line of a failed run says what is wrong, under MONAI's own command line.

``python -m monai.bundle run`` wraps an error raised while a config item is evaluated or instantiated, or while a
transform is applied, in exceptions of its own (``Failed to evaluate ConfigExpression``, ``Failed to instantiate
component``, ``applying transform``), whose text (the failing expression, the transform's repr) ends the traceback;
the message that names the bad file, key or stage stands dozens of lines above. :func:`install` (done when
``medkd_ext`` is imported, which every bundle config does) keeps Python's traceback as it is and adds one line after
it: the message of the error that caused the failure (:func:`root_cause`), with the stage it happened in when
:func:`medkd_ext.engines.run_stages` ran it. The exit status stays Python's (1).

Errors raised by medkd_ext name the file, key or stage themselves. Another library's error raised inside a MONAI
transform (a reader that fails on a damaged file, a spatial transform given an image of the wrong shape) often names
neither; the line then says which transform failed on which file(s), read from the data that MONAI's
``apply_transform`` was applying the transform to (:func:`transform_input`). Before the line is printed, the threads
that a failed ``CacheDataset`` left loading are let finish (:func:`wait_for_pool_workers`), so that the process exits
with status 1 and the line stays the last.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Mapping
from multiprocessing.dummy import DummyProcess
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "STAGE_ATTRIBUTE", "install", "report", "root_cause", "transform_input", "user_message", "wait_for_pool_workers"
]

STAGE_ATTRIBUTE = "medkd_stage"
"""Attribute :func:`medkd_ext.engines.run_stages` sets on an exception leaving a stage: the stage's name."""

_PACKAGE = Path(__file__).resolve().parent
_TRANSFORM_WRAPPER = "applying transform"  # the message of the RuntimeError monai.transforms.apply_transform raises
_MAX_SHOWN = 3
_WORKER_WAIT_S = 10.0


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions that caused it, outermost first (``__cause__``, else ``__context__``)."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        chain.append(current)
        seen.add(id(current))
        current = current.__cause__ if current.__cause__ is not None else current.__context__
    return chain


def _raised_here(error: BaseException) -> bool:
    """Whether ``error`` was raised by medkd_ext's own code (the last frame of its traceback is in the package)."""
    tb = error.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    try:
        return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_PACKAGE)
    except (OSError, ValueError):
        return False


def root_cause(error: BaseException) -> BaseException:
    """The error a user has to act on: one that medkd_ext raised (its messages name the file, key or stage), else the
    innermost of the chain (the original error under MONAI's wrappers).

    Of medkd_ext's errors, the innermost one is taken, or, when medkd_ext itself raised a further error from it
    (``raise ValueError(f"source dataset 0 ({path}): {error}") from error``, adding what it knows), the outermost of
    those that follow one another in the chain.
    """
    chain = _chain(error)
    ours = [i for i, e in enumerate(chain) if _raised_here(e)]
    if not ours:
        return chain[-1]
    index = ours[-1]
    while index > 0 and _raised_here(chain[index - 1]):
        index -= 1
    return chain[index]


def _describe_value(value: Any) -> str | None:
    """A path (a string holding a folder separator, or naming a file), or the file a MetaTensor was loaded from."""
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        return text if os.sep in text or "/" in text or os.path.exists(text) else None
    meta = getattr(value, "meta", None)
    if isinstance(meta, Mapping) and isinstance(meta.get("filename_or_obj"), (str, os.PathLike)):
        return os.fspath(meta["filename_or_obj"])
    return None


def transform_input(error: BaseException) -> str | None:
    """Which MONAI transform failed on which file(s): ``"LoadImaged on image '/d/a.nii.gz', label '/d/b.nii.gz'"``.

    Read from the innermost ``applying transform`` error of the chain: the data that ``apply_transform`` was applying
    the transform to (the locals of the frame that raised it). ``None`` when the error was not raised under a MONAI
    transform or the data name no file.
    """
    wrappers = [e for e in _chain(error) if isinstance(e, RuntimeError) and str(e).startswith(_TRANSFORM_WRAPPER)]
    if not wrappers:
        return None
    tb = wrappers[-1].__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    local = tb.tb_frame.f_locals
    transform, data = local.get("transform"), local.get("data")
    if isinstance(data, (list, tuple)) and len(data) == 1:
        data = data[0]
    if isinstance(data, Mapping):
        files = [(k, _describe_value(v)) for k, v in data.items()]
        shown = [f"{k} '{f}'" for k, f in files if f is not None]
    else:
        found = _describe_value(data)
        shown = [f"'{found}'"] if found is not None else []
    if not shown:
        return None
    more = f" and {len(shown) - _MAX_SHOWN} more" if len(shown) > _MAX_SHOWN else ""
    return f"{type(transform).__name__} on {', '.join(shown[:_MAX_SHOWN])}{more}"


def user_message(error: BaseException) -> str:
    """One line: ``<stage>: <Type>: <message>`` of :func:`root_cause` (new lines joined), followed by
    ``(in <transform> on <file>)`` when that error is another library's, raised inside a MONAI transform."""
    cause = root_cause(error)
    text = " ".join(str(cause).split()) or "(no message)"
    if isinstance(cause, KeyError) and len(cause.args) == 1 and isinstance(cause.args[0], str):
        text = cause.args[0]  # str(KeyError) adds quotes
    if not _raised_here(cause):
        context = transform_input(error)
        if context:
            text += f" (in {context})"
    stage = next((getattr(e, STAGE_ATTRIBUTE) for e in _chain(error) if hasattr(e, STAGE_ATTRIBUTE)), None)
    where = f"stage '{stage}': " if stage else ""
    return f"{where}{type(cause).__name__}: {text}"


def report(error: BaseException, file=None) -> None:
    """Print ``ERROR <user_message>`` as one line to ``file`` (stderr)."""
    stream = file if file is not None else sys.stderr
    print(f"ERROR {user_message(error)}", file=stream, flush=True)


def _hook(kind: type[BaseException], error: BaseException, tb: TracebackType | None) -> None:
    try:
        sys.stdout.flush()  # what the run printed comes before the traceback, even when both go to one file
    except Exception:
        pass
    traceback.print_exception(kind, error, tb)
    if not issubclass(kind, KeyboardInterrupt):
        try:
            wait_for_pool_workers()  # so that nothing they do at exit comes after the report
        except Exception:
            pass
        try:
            report(error)
        except Exception:  # the report must never hide the traceback
            pass


def wait_for_pool_workers(timeout: float = _WORKER_WAIT_S) -> None:
    """Let the threads of a ``ThreadPool`` that an error left running finish their current task (at most ``timeout``
    seconds in all), before the interpreter exits.

    MONAI's ``CacheDataset`` fills its cache with a ``ThreadPool``; when a transform fails on one case, the error
    reaches the main thread while a worker is still loading the next one. Exiting then stops that thread inside torch
    and aborts the process ("terminate called without an active exception", exit status 134) after the error was
    reported, so that its line was no longer the last.
    """
    deadline = time.monotonic() + timeout
    for thread in threading.enumerate():
        if isinstance(thread, DummyProcess) and thread is not threading.current_thread() and thread.is_alive():
            thread.join(max(0.0, deadline - time.monotonic()))


def install() -> None:
    """Make :func:`report` follow the traceback of an uncaught exception; leaves a hook someone else set alone."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _hook
