"""Training loop (gainx.training.trainer), checkpoints and distributed plumbing."""
from gainx.training.checkpoint import load_checkpoint, load_model, save_checkpoint
from gainx.training.config import TrainConfig

__all__ = ["TrainConfig", "load_checkpoint", "load_model", "save_checkpoint"]
