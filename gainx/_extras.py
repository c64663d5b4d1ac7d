"""Optional dependencies: import one, or say which ``pip install "gainx[extra]"`` provides it."""

from __future__ import annotations

import importlib
from types import ModuleType

# module name -> distribution name where they differ
_DISTRIBUTIONS = {
    "prometheus_client": "prometheus-client",
    "multipart": "python-multipart",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
}


class MissingExtraError(ImportError, RuntimeError):
    """An optional dependency is not installed; the message names the extra that installs it.

    Also a ``RuntimeError``, so the command line reports it as a one-line error."""


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """Import ``module``; when it is missing, raise :class:`MissingExtraError` naming ``extra``.

    ``feature`` says what needs it (e.g. ``"ONNX export"``); by default the extra's name.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name != top and not module.startswith(exc.name):
            raise  # the module is there but one of its own imports failed: show the real error
        package = _DISTRIBUTIONS.get(top, top)
        raise MissingExtraError(
            f'{feature or extra} needs {package!r}, which is not installed: pip install "gainx[{extra}]" '
            f"(or pip install {package})"
        ) from exc
