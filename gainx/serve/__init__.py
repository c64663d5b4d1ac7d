"""``gainx serve``: an HTTP inference server (Starlette + uvicorn) for exported attention models.

The names below are imported on first use (PEP 562), so registering the ``serve`` command does not
need the ``serve`` extra; running it does (``pip install "gainx[serve]"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gainx._lazy import lazy_names

_LAZY = {
    "create_app": "gainx.serve.app",
    "DynamicBatcher": "gainx.serve.batcher",
    "Prediction": "gainx.serve.batcher",
    "ServeConfig": "gainx.serve.config",
    "ApiError": "gainx.serve.errors",
}
__all__ = ["ApiError", "DynamicBatcher", "Prediction", "ServeConfig", "create_app"]

if TYPE_CHECKING:
    from gainx.serve.app import create_app
    from gainx.serve.batcher import DynamicBatcher, Prediction
    from gainx.serve.config import ServeConfig
    from gainx.serve.errors import ApiError


__getattr__ = lazy_names(__name__, _LAZY, globals())
