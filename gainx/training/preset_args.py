"""``--preset`` on a command line: options that record being given, so that a preset never overrides them.

argparse fills every option's default before it reads the command line, so a default and a value typed
equal to it look the same afterwards. The actions here also add the option's ``dest`` to
``namespace.given_fields`` (a frozenset); :func:`preset_values` applies the preset to the fields not in it,
whatever the order of ``--preset`` and the other options.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from typing import Any

from gainx.training.presets import DEFAULT_PRESET, PRESETS, with_preset

GIVEN = "given_fields"


def _mark_given(namespace: argparse.Namespace, dest: str) -> None:
    setattr(namespace, GIVEN, getattr(namespace, GIVEN, frozenset()) | {dest})


class StoreGiven(argparse.Action):
    """``store``, recording the option as given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        setattr(namespace, self.dest, values)
        _mark_given(namespace, self.dest)


class BooleanGiven(argparse.BooleanOptionalAction):
    """``--flag`` / ``--no-flag``, recording the option as given."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        super().__call__(parser, namespace, values, option_string)
        _mark_given(namespace, self.dest)


def add_preset_arg(parser: argparse.ArgumentParser) -> None:
    """``--preset NAME`` (:data:`gainx.training.presets.PRESETS`)."""
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=DEFAULT_PRESET,
        help="named settings (gainx.training.presets): default (GAINext with counterfactual images pasted from the "
        "masks or boxes, colour jitter, the attention terms at the weights chosen on validation data, lr 3e-3, batch "
        "64, one warm-up epoch, no flips; docs/experiments.md), paper (the literal eq. 6-8: alpha 1, omega_e 10, "
        "with the trainer's general-purpose optimisation) or counterfactual (the default's images with L_cl only); "
        "options given explicitly override the preset's values",
    )


def preset_values(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """``fields`` read off ``args``, with ``args.preset`` applied to those not given on the command line."""
    values = {name: getattr(args, name) for name in fields}
    return with_preset(values, args.preset, getattr(args, GIVEN, frozenset()))
