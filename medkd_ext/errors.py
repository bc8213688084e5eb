"""The last line of a failed run says what is wrong, under MONAI's own command line.

``python -m monai.bundle run`` wraps an error raised while a config item is evaluated or instantiated, or while a
transform is applied, in exceptions of its own (``Failed to evaluate ConfigExpression``, ``Failed to instantiate
component``, ``applying transform``), whose text (the failing expression, the transform's repr) ends the traceback;
the message that names the bad file, key or stage stands dozens of lines above. :func:`install` (done when
``medkd_ext`` is imported, which every bundle config does) keeps Python's traceback as it is and adds one line after
it: the message of the error that caused the failure (:func:`root_cause`), with the stage it happened in when
:func:`medkd_ext.engines.run_stages` ran it. The exit status stays Python's (1).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from types import TracebackType

__all__ = ["STAGE_ATTRIBUTE", "install", "report", "root_cause", "user_message"]

STAGE_ATTRIBUTE = "medkd_stage"
"""Attribute :func:`medkd_ext.engines.run_stages` sets on an exception leaving a stage: the stage's name."""

_PACKAGE = Path(__file__).resolve().parent


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
    """The error a user has to act on: the innermost one that medkd_ext raised (its messages name the file, key or
    stage), else the innermost of the chain (the original error under MONAI's wrappers)."""
    chain = _chain(error)
    ours = [e for e in chain if _raised_here(e)]
    return ours[-1] if ours else chain[-1]


def user_message(error: BaseException) -> str:
    """One line: ``<stage>: <Type>: <message>`` of :func:`root_cause` (new lines joined)."""
    cause = root_cause(error)
    text = " ".join(str(cause).split()) or "(no message)"
    if isinstance(cause, KeyError) and len(cause.args) == 1 and isinstance(cause.args[0], str):
        text = cause.args[0]  # str(KeyError) adds quotes
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
            report(error)
        except Exception:  # the report must never hide the traceback
            pass


def install() -> None:
    """Make :func:`report` follow the traceback of an uncaught exception; leaves a hook someone else set alone."""
    if sys.excepthook is sys.__excepthook__:
        sys.excepthook = _hook
