"""Reproduction experiments of the paper's claims.

* :func:`run_bias`: baseline, GAIN, GAINext with masks / boxes at several
  annotation budgets, the guidance variants and the recipes (presets of
  :mod:`gainx.training.presets`), on the decoy and co-occurrence bias
  benchmarks, over seeds (paper sec. 5, Table 4);
* :func:`run_bias_data`: the same comparison on a data set on disk, with its
  bias-consistent and bias-conflicting splits named;
* :func:`run_localization`: cue mIoU and pointing game of Grad-CAM, GAIN and
  GAINext on the shapes-on-clutter benchmark (paper sec. 4);
* :func:`write_cues` / :func:`evaluate_cues`: localization cues as PNG label
  maps and their mIoU against masks.
"""

from gainx.experiments.bias import run_bias, run_bias_data
from gainx.experiments.cues import cue_label_map, evaluate_cues, write_cues
from gainx.experiments.localization import run_localization

__all__ = ["cue_label_map", "evaluate_cues", "run_bias", "run_bias_data", "run_localization", "write_cues"]
