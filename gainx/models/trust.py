"""Which model specs a checkpoint may have rebuilt: rebuilding a spec imports its module and calls its factory.

A checkpoint records the spec of its model (:mod:`gainx.models.factory`), and a
checkpoint is a file that may come from anyone. Its model is rebuilt without
asking only when the spec is *stock*:

* a built-in name (:data:`gainx.models.ARCHS`),
* ``timm:<name>``, ``<name>`` one of ``timm.list_models()``,
* ``torchvision.models:<name>`` or ``torchvision.models.<submodule>:<name>``
  naming one of torchvision's registered model builders
  (``torchvision.models.list_models()``; e.g. ``torchvision.models.resnet:resnet18``),

and its keyword arguments ask for no files or downloads (:data:`FETCH_KWARGS`).
Any other spec is refused *before its module is imported* (importing alone runs
code), unless the caller vouches for it: by naming the same spec
(``load_model(path, model=spec)``, ``--model SPEC``), or with
``trust_model_code=True`` (``--trust-model-code``). Even then the factory must
be a class or function defined in the module the spec names.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from gainx.models.factory import TIMM_PREFIX, is_factory_spec, is_torchvision_spec
from gainx.models.registry import ARCHS

# Keyword arguments of torchvision and timm builders that read files or download weights.
FETCH_KWARGS = frozenset(
    {
        "weights",
        "weights_backbone",
        "pretrained",
        "pretrained_backbone",
        "pretrained_cfg",
        "pretrained_cfg_overlay",
        "checkpoint_path",
        "cache_dir",
    }
)


def is_stock_spec(spec: str) -> bool:
    """Whether ``spec`` is a built-in name, ``timm:<name>`` or a ``torchvision.models`` builder spec."""
    return spec in ARCHS or spec.startswith(TIMM_PREFIX) or (":" in spec and is_torchvision_spec(spec))


def how_to_allow(spec: str) -> str:
    """The ways to allow rebuilding ``spec``, for error messages."""
    return (
        f"if you trust the file, allow it: pass the spec yourself (--model {spec} on the command line, "
        f"model={spec!r} in Python) or trust its code (--trust-model-code, trust_model_code=True)"
    )


def check_checkpoint_model(
    path: str | Path,
    spec: str,
    model_kwargs: dict[str, Any],
    model: str | None = None,
    trust_model_code: bool = False,
) -> None:
    """Raise ``ValueError`` unless the checkpoint ``path`` may have its model ``spec`` rebuilt (see the module).

    ``model``: the spec the caller expects (it must equal ``spec``, and allows it);
    ``trust_model_code``: allow any spec and keyword arguments.
    """
    if model is not None and model != spec:
        raise ValueError(f"{path} holds a {spec!r} model, not the {model!r} model given")
    if trust_model_code:
        return
    if is_stock_spec(spec):
        fetching = sorted(FETCH_KWARGS.intersection(model_kwargs))
        if fetching:
            raise ValueError(
                f"{path}: the keyword arguments {fetching} of its model {spec!r} would read files or download "
                f"weights; if you trust the file, allow it with --trust-model-code (trust_model_code=True in Python)"
            )
        return
    if model is None and is_factory_spec(spec):
        raise ValueError(
            f"{path}: its model {spec!r} is not a built-in name, timm:<name> or a torchvision.models builder, "
            f"and rebuilding it would import and run that code; {how_to_allow(spec)}"
        )


def add_trust_args(parser: argparse.ArgumentParser, model_flag: bool = True) -> None:
    """Add ``--trust-model-code`` (and, with ``model_flag``, ``--model SPEC``) to a command reading checkpoints."""
    if model_flag:
        parser.add_argument(
            "--model",
            default=None,
            metavar="SPEC",
            help="the checkpoint's model spec (package.module:factory): allows rebuilding it; it must equal the "
            "spec the checkpoint records",
        )
    parser.add_argument(
        "--trust-model-code",
        action="store_true",
        help="rebuild a checkpoint whose model spec is not a built-in name, timm:<name> or a torchvision.models "
        "builder: imports and runs the code it names (only for checkpoints you trust)",
    )
