"""Per-epoch metrics to CSV (atomic rewrite) and, when the ``tensorboard`` extra is installed, TensorBoard
(without it: one plain line on stderr says so)."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from gainx._extras import MissingExtraError, require
from gainx.io import atomic_write_text


def read_metrics(path: Path) -> list[dict[str, float]]:
    """The rows of a run's ``metrics.csv`` (one per finished epoch, ``epoch`` first); none if it does not exist.
    A column a row has no value in (one logged only by some runs) is left out of that row."""
    if not path.exists():
        return []
    with path.open(newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


class MetricsLog:
    """Append-only table of per-epoch metrics, persisted after every epoch.

    On resume the existing CSV is read back, so the file always holds one row
    per finished epoch.
    """

    def __init__(self, out: Path, tensorboard: bool = True) -> None:
        self.path = out / "metrics.csv"
        self.rows = read_metrics(self.path)
        self.writer = None
        if tensorboard:
            try:
                require("tensorboard", extra="tensorboard", feature="TensorBoard logging")
            except MissingExtraError as exc:
                print(f"note: {exc}; metrics go to metrics.csv only", file=sys.stderr)
            else:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(out / "tensorboard"))

    def log(self, epoch: int, metrics: dict[str, float]) -> None:
        self.rows = [r for r in self.rows if int(r["epoch"]) < epoch] + [{"epoch": float(epoch), **metrics}]
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: (int(v) if k == "epoch" else f"{v:.6g}") for k, v in row.items()})
        atomic_write_text(self.path, buf.getvalue())
        if self.writer is not None:
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, epoch)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def epoch_summary(
    epoch: int, epochs: int, metrics: dict[str, float], best: bool = False, validation: str | None = None
) -> str:
    """One line for the console: losses (eq. 6 / 8 terms), accuracies, learning rate and time of an epoch.

    ``metrics`` holds ``loss``, ``loss_cl``, ``loss_am``, ``loss_e``, ``train_acc``, ``lr``, ``seconds`` and
    optionally ``val_<metric>`` and ``counterfactual_weight`` (a counterfactual image's weight in L_cl);
    ``best`` marks a new best validation value; ``validation`` names the data the ``val_`` values were
    measured on (``"val accuracy (10% of train held out) 0.912"``).
    """
    source = f" ({validation})" if validation else ""
    parts = [
        f"epoch {epoch}/{epochs}",
        f"loss {metrics['loss']:.4f} (cl {metrics['loss_cl']:.4f}, am {metrics['loss_am']:.4f}, "
        f"e {metrics['loss_e']:.4f})",
        f"train acc {metrics['train_acc']:.3f}",
    ]
    parts += [
        f"{key.replace('_', ' ')}{source} {value:.3f}" for key, value in metrics.items() if key.startswith("val_")
    ]
    if best:
        parts[-1] += " (best)"
    if "counterfactual_weight" in metrics:
        parts.append(f"counterfactual weight {metrics['counterfactual_weight']:.2f}")
    parts += [f"lr {metrics['lr']:.3g}", f"{metrics['seconds']:.1f}s"]
    return " | ".join(parts)
