"""Writing checkpoints atomically (temporary file, fsync, rename); the format and the
safe reader are in :mod:`gainx.models.checkpoint`."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from gainx.io import atomic_open
from gainx.models.checkpoint import MODEL_KEYS


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename); a full disk is named as such."""
    missing = [k for k in ("model", *MODEL_KEYS) if k not in state]
    if missing:
        raise ValueError(f"checkpoint for {path} lacks {missing}")
    buffer = io.BytesIO()  # serialized first: torch.save's own writer reports a full disk without errno or file
    torch.save(state, buffer)
    with atomic_open(path, "wb") as fh:
        fh.write(buffer.getbuffer())
