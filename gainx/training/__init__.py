"""Training loop (gainx.training.trainer), checkpoints and distributed plumbing."""

from gainx.training.checkpoint import save_checkpoint
from gainx.training.config import TrainConfig

__all__ = ["TrainConfig", "save_checkpoint"]
