"""Named training recipes: the one place that holds the settings ``gainx train --preset``,
``gainx experiment`` and the defaults share.

A preset is data, a mapping of :class:`~gainx.training.config.TrainConfig` field -> value:

* ``paper``: the objective of the paper as published, eq. 4-8 with its weights (``guidance="paper"``,
  α = 1, ω_e = 10, σ = 0.5, ω = 10, Grad-CAM weights as constants), trained with the trainer's
  general-purpose optimisation (AdamW lr 1e-3, weight decay 1e-4, batch 32, cosine schedule, random
  flips, no warm-up). ``TrainConfig``'s and :class:`gainx.losses.GAIN`'s defaults are this preset's values
  (:data:`DEFAULT_PRESET`; ``tests/test_presets.py`` holds them equal). It does not fix the method, so it
  applies to GAIN (eq. 6) and GAINext (eq. 8).
* ``counterfactual``: the recipe of the bias tables in ``docs/experiments.md``: GAINext whose annotated
  objects are pasted onto other classes' backgrounds with their colour channels permuted
  (``guidance="counterfactual"``, ``counterfactual_jitter="colour"``, 32 images per batch, each weighing 4
  batch images in L_cl), trained with L_cl only (α = ω_e = 0: the attention streams off), with the
  experiments' optimisation :data:`EXPERIMENT_TRAINING`.

:data:`EXPERIMENT_TRAINING` is the optimisation of every ``gainx experiment`` run; a run with a preset
takes the preset's values over it.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from types import MappingProxyType
from typing import Any

EXPERIMENT_TRAINING: Mapping[str, Any] = MappingProxyType(
    {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4, "batch_size": 64, "am_warmup": 1, "augment": False}
)

PAPER: Mapping[str, Any] = MappingProxyType(
    {
        "guidance": "paper",
        "alpha": 1.0,
        "omega_e": 10.0,
        "sigma": 0.5,
        "omega": 10.0,
        "second_order": False,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 1e-4,
        "batch_size": 32,
        "scheduler": "cosine",
        "augment": True,
        "am_warmup": 0,
    }
)

COUNTERFACTUAL: Mapping[str, Any] = MappingProxyType(
    {
        **EXPERIMENT_TRAINING,
        "method": "gainext",
        "guidance": "counterfactual",
        "alpha": 0.0,
        "omega_e": 0.0,
        "counterfactuals": 32,
        "counterfactual_weight": 4.0,
        "counterfactual_jitter": "colour",
        "counterfactual_backgrounds": 0,
    }
)

PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType({"paper": PAPER, "counterfactual": COUNTERFACTUAL})
DEFAULT_PRESET = "paper"  # the preset whose values TrainConfig's and GAIN's defaults are


def preset(name: str) -> dict[str, Any]:
    """A copy of the preset ``name`` (field -> value); a ValueError names the presets for an unknown name."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return dict(PRESETS[name])


def with_preset(values: Mapping[str, Any], name: str | None, given: Collection[str] = ()) -> dict[str, Any]:
    """``values`` with the preset ``name``'s values applied, except for the fields in ``given``
    (set explicitly, so they win over the preset); ``name=None`` returns ``values`` unchanged.

    ``with_preset(values, name, given)[f]`` is ``values[f]`` for ``f`` in ``given`` or outside the preset,
    else the preset's value.
    """
    chosen = preset(name) if name is not None else {}
    unknown = sorted(set(chosen) - set(values))
    if unknown:
        raise ValueError(f"preset {name!r} sets fields {unknown} that are not among the values {sorted(values)}")
    return {**values, **{k: v for k, v in chosen.items() if k not in given}}
