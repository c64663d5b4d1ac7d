"""GAIN / GAINext objective and its loss terms."""

from gainx.losses.gain import GAIN, METHODS, GAINOutput
from gainx.losses.terms import attention_mining_loss, classification_loss, guidance_loss

__all__ = ["GAIN", "GAINOutput", "METHODS", "attention_mining_loss", "classification_loss", "guidance_loss"]
