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
    body_deadline_s: float = 120.0  # total time allowed for a whole body (408)
    header_timeout_s: float = 10.0  # time to deliver a complete request head (then the connection is closed)
    send_timeout_s: float = 30.0  # time unsent answer bytes may wait for the client to read (then it is aborted)
    keep_alive_s: float = 5.0  # idle time of a kept-alive connection before it is closed
    max_connections: int = 512  # open connections; past it the longest-idle one is closed
    max_buffered_bytes: int = 256 * 2**20  # unsent answer bytes of all connections (past it: longest-waiting aborted)
    max_body_bytes_in_flight: int = 256 * 2**20  # request body bytes held by all requests at once (503 past it)
    max_pixels_in_flight: int = 50_000_000  # decoded pixels of all requests at once (past it images wait their turn)
    max_image_pixels: int = 25_000_000  # declared width * height (422 past it); ~75 MB decoded
    max_image_side: int = 20_000
    max_files: int = 64  # images per /v1/predict/batch request
    max_raw_pixels: int = 1024 * 1024  # per raw map (raw=H,W)
    max_raw_values: int = 4 * 1024 * 1024  # raw map values per request: images x classes x H x W (400 past it)
    max_request_pixels: int = 50_000_000  # declared pixels of all images of one request (422 past it)
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
            "max_raw_values",
            "max_request_pixels",
            "max_classes",
            "max_connections",
            "max_buffered_bytes",
            "max_body_bytes_in_flight",
            "max_pixels_in_flight",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {self.max_wait_ms}")
        for name in ("body_timeout_s", "body_deadline_s", "header_timeout_s", "send_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        in_flight = (("max_body_bytes_in_flight", "max_body_bytes"), ("max_pixels_in_flight", "max_image_pixels"))
        for budget, single in in_flight:
            if getattr(self, budget) < getattr(self, single):
                raise ValueError(
                    f"{budget} ({getattr(self, budget)}) is below {single} ({getattr(self, single)}): "
                    f"a request within {single} could never be served"
                )
        for name in ("topk", "image_threads"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
