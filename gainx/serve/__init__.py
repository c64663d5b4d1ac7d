"""``gainx serve``: an HTTP inference server (Starlette + uvicorn) for exported attention models."""

from gainx.serve.app import create_app
from gainx.serve.batcher import DynamicBatcher, Prediction
from gainx.serve.config import ServeConfig
from gainx.serve.errors import ApiError

__all__ = ["ApiError", "DynamicBatcher", "Prediction", "ServeConfig", "create_app"]
