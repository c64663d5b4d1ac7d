"""The run folder of a training run: what it holds, and when training may write into it."""

from __future__ import annotations

import shutil
from pathlib import Path

CHECKPOINT = "last.pt"  # written after every epoch
BEST = "best.pt"  # the epoch with the best validation metric so far
RUN_FILES = (CHECKPOINT, BEST, "metrics.csv", "config.json", "tensorboard")


def prepare_run_folder(out: Path, resume: bool, overwrite: bool, main: bool = True) -> None:
    """Refuse to train into a folder that holds a run unless asked to continue it (``resume``) or to
    start over (``overwrite``, which removes the old run's files; only on the ``main`` process)."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in the output folder, --overwrite replaces it: give one")
    if (out / CHECKPOINT).exists() and not (resume or overwrite):
        raise ValueError(
            f"{out} already holds a training run ({CHECKPOINT}); give --resume to continue it, "
            f"--overwrite to replace it, or another --out"
        )
    if overwrite and main:
        for name in RUN_FILES:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
