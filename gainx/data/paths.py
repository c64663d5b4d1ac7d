"""Files named by a dataset index must stay inside the dataset folder unless the caller allows otherwise."""

from __future__ import annotations

from pathlib import Path

from gainx.data.records import DatasetError


def resolve_inside(
    root: Path, name: str, where: str, what: str, allow_outside_root: bool, base: Path | None = None
) -> Path:
    """``base / name`` (``base`` defaults to ``root``), refused when it leaves ``root``.

    ``name`` leaves the folder when it is absolute, climbs out with ``..`` or reaches a symlink that
    points outside ``root`` (checked on the resolved path, so a symlinked ``base`` pointing outside
    ``root`` is refused too). ``allow_outside_root=True`` accepts all three. A name holding a NUL byte
    names no file and is refused either way. ``where`` (the index file and line) and ``what`` (the
    column or role) lead the error message.
    """
    if "\x00" in name:
        raise DatasetError(f"{where}: {what} {name!r} holds a NUL byte, which no file name may contain")
    path = (root if base is None else base) / name
    if allow_outside_root:
        return path
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise DatasetError(
            f"{where}: {what} {name!r} leaves the dataset folder {root} (resolves to {resolved}); "
            f"pass allow_outside_root=True (command line: --allow-outside-root) to accept files outside it"
        )
    return path
