"""The run folder of a training run: what it holds, and when training may write into it."""

from __future__ import annotations

import shutil
from pathlib import Path

CHECKPOINT = "last.pt"  # written after every epoch
BEST = "best.pt"  # the epoch with the best validation metric so far
RUN_FILES = (CHECKPOINT, BEST, "metrics.csv", "config.json", "tensorboard")


def check_run_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to train into a folder that holds a run unless asked to continue it (``resume``) or to
    start over (``overwrite``; :func:`clear_run_folder` then removes the old run once training starts)."""
    if resume and overwrite:
        raise ValueError("--resume continues the run in the output folder, --overwrite replaces it: give one")
    if (out / CHECKPOINT).exists() and not (resume or overwrite):
        raise ValueError(
            f"{out} already holds a training run ({CHECKPOINT}); give --resume to continue it, "
            f"--overwrite to replace it, or another --out"
        )


def clear_run_folder(out: Path) -> None:
    """Remove the files of the run in ``out`` (:data:`RUN_FILES`) for ``--overwrite``; other files stay."""
    for name in RUN_FILES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
