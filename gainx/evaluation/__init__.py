"""Classification accuracy / mAP and attention localization (cue mIoU, pointing game)."""

from gainx.evaluation.evaluate import evaluate
from gainx.evaluation.metrics import LocalizationMeter, cue_mask, mean_average_precision

__all__ = ["LocalizationMeter", "cue_mask", "evaluate", "mean_average_precision"]
