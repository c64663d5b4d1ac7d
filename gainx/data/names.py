"""Class lists read from dataset files: at most :data:`MAX_CLASSES` names, none repeated."""

from __future__ import annotations

from collections.abc import Sequence

from gainx.data.records import MAX_CLASSES, DatasetError

SHOWN_REPEATS = 5  # repeated names quoted in an error message; the rest are counted


def check_class_names(names: Sequence[str], where: str) -> None:
    """Refuse a class list longer than :data:`MAX_CLASSES` or naming a class twice.

    Runs in time linear in ``len(names)`` (the length is checked first, so an overlong list is refused
    without reading it further); the message quotes at most :data:`SHOWN_REPEATS` repeated names.
    """
    if len(names) > MAX_CLASSES:
        raise DatasetError(f"{where}: {len(names)} classes, more than the {MAX_CLASSES} a uint8 label map holds")
    seen: set[str] = set()
    repeated: dict[str, None] = {}  # insertion-ordered set
    for name in names:
        if name in seen:
            repeated[name] = None
        seen.add(name)
    if repeated:
        shown = list(repeated)[:SHOWN_REPEATS]
        more = f" and {len(repeated) - len(shown)} more" if len(repeated) > len(shown) else ""
        raise DatasetError(f"{where}: duplicate classes {shown}{more}")
