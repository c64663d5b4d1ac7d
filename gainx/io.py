"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

The temporary file is created with mode 0600 (``tempfile.mkstemp``); it gets the mode a plain ``open`` would
give (``0o666`` less the process umask) before the rename, so other users and containers can read what gainx
writes wherever the umask allows it."""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def current_umask() -> int:
    """The process umask, read from ``/proc/self/status`` where it is listed (Linux), which leaves it
    untouched for other threads; elsewhere set and restored at once."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path``; on success it replaces ``path``.

    On any exception the temporary file is removed and ``path`` is untouched,
    so readers never see a half-written file. A full disk (or quota) gives an
    ``OSError`` naming ``path``. A process killed mid-write leaves its
    temporary file behind: :func:`remove_stale_temporaries` clears those.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(path), suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            message = (
                f"cannot write {path}: no space left on the device holding {path.parent} "
                f"({os.strerror(exc.errno)}); the previous {path.name}, if any, is unchanged"
            )
            raise OSError(exc.errno, message) from exc
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _temporary_prefix(path: Path) -> str:
    return f".{path.name}."


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_open` left next to ``path`` when its process was killed.

    Only call this while no other process is writing ``path``. Returns the files removed.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f"{glob.escape(_temporary_prefix(path))}*.tmp")) if path.parent.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w") as fh:
        fh.write(text)
