"""Short causes for export errors: the first line of a library's (often pages-long) message."""

from __future__ import annotations


def first_line(exc: BaseException) -> str:
    """``"TypeName: first non-empty line of the message"``."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")
