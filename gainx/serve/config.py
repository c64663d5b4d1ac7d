"""Server limits and batching settings (the ``gainx serve`` flags)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServeConfig:
    max_batch: int = 8  # images per model call
    max_wait_ms: float = 5.0  # how long a free worker waits for a batch to fill
    max_queue: int = 1024  # images waiting for a worker before 503
    max_body_bytes: int = 16 * 2**20  # request body limit (413 past it)
    body_timeout_s: float = 30.0  # idle time allowed while a body streams in (408)
    max_image_pixels: int = 25_000_000  # declared width * height (422 past it); ~75 MB decoded
    max_image_side: int = 20_000
    max_files: int = 64  # images per /v1/predict/batch request
    max_raw_pixels: int = 1024 * 1024  # per raw map (raw=H,W)
    max_classes: int = 16  # per image with classes=
    topk: int | None = None  # default classes per answer (None: the model's topk)
    image_threads: int | None = None  # threads decoding uploads and rendering answers (None: one per core)

    def __post_init__(self) -> None:
        for name in (
            "max_batch",
            "max_queue",
            "max_body_bytes",
            "max_image_pixels",
            "max_image_side",
            "max_files",
            "max_raw_pixels",
            "max_classes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0 or self.body_timeout_s <= 0:
            raise ValueError(
                f"need max_wait_ms >= 0 and body_timeout_s > 0, got {self.max_wait_ms}, {self.body_timeout_s}"
            )
        for name in ("topk", "image_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
