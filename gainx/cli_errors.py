"""How a failed ``gainx`` command reports its error on stderr.

An error in the user's input (a bad flag value, a missing file, a data set or checkpoint that does not fit, a
missing optional extra) is one line naming the problem. Any other exception (an import that fails inside a
dependency, a bug) is not the user's to fix from that line alone, so it is reported with its type, where it
was raised, the exceptions that caused it, and a hint to rerun with ``--debug`` for the full traceback.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from gainx._extras import MissingExtraError

PACKAGE = Path(__file__).resolve().parent
IMPORT_HINT = (
    "an error while importing a dependency usually means mismatched builds of its packages (e.g. a CUDA "
    "torchvision beside a CPU torch): reinstall them from one package index"
)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` reports a problem with the user's input: a ``ValueError`` (which includes
    ``DatasetError``), an ``OSError`` (missing files, permissions, full disks), a missing extra, or a
    ``RuntimeError`` / ``TypeError`` raised by gainx's own checks (not from inside a dependency)."""
    if isinstance(exc, (ValueError, OSError, MissingExtraError)):
        return True
    if isinstance(exc, (RuntimeError, TypeError)):
        frames = traceback.extract_tb(exc.__traceback__)
        return bool(frames) and _in_package(frames[-1].filename)
    return False


def describe_error(command: str, exc: BaseException) -> str:
    """The stderr text for ``exc`` raised by ``gainx <command>`` (see the module docstring)."""
    if is_user_error(exc):
        return f"gainx {command}: error: {exc}"
    lines = [f"gainx {command}: internal error: {type(exc).__name__}: {exc}"]
    frames = traceback.extract_tb(exc.__traceback__)
    if frames:
        last = frames[-1]
        lines.append(f"  raised at {last.filename}:{last.lineno} in {last.name}")
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    while cause is not None:
        lines.append(f"  caused by {type(cause).__name__}: {cause}")
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    if isinstance(exc, ImportError) or any("importlib._bootstrap" in f.filename for f in frames):
        lines.append(f"  hint: {IMPORT_HINT}")
    lines.append(f"  hint: rerun with --debug for the full traceback (gainx {command} --debug ...)")
    return "\n".join(lines)


def _in_package(filename: str) -> bool:
    try:
        Path(filename).resolve().relative_to(PACKAGE)
    except ValueError:
        return False
    return True
