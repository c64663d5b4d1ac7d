"""Prometheus metrics of the server, exported with ``prometheus_client``.

Series exported (the server's own are prefixed ``gainx_``):

* ``gainx_requests_total{endpoint,method,status}`` — counter of finished HTTP requests;
* ``gainx_request_duration_seconds{endpoint}`` — histogram of request latency;
* ``gainx_batch_size`` — histogram of the number of images per model call;
* ``gainx_inference_duration_seconds`` — histogram of model-call latency;
* ``gainx_images_total`` — counter of images run through the model;
* ``gainx_abandoned_images_total`` — counter of images dropped before the model
  because their client had gone;
* ``gainx_inflight_requests`` and ``gainx_queue_depth`` — gauges (read at scrape time);
* ``process_*`` — the process's CPU time, memory, open files (``prometheus_client``'s
  process collector, Linux only).

Each :class:`Metrics` has its own registry, so several servers (or tests) in
one process do not share series. ``prometheus_client`` is thread-safe: updates
come from the event loop and from inference threads.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All server metrics; :meth:`render` gives the ``/metrics`` body."""

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        powers = {1 << i for i in range(max_batch.bit_length())}
        self._requests = Counter(
            "gainx_requests", "Finished HTTP requests.", ["endpoint", "method", "status"], registry=self.registry
        )
        self._latency = Histogram(
            "gainx_request_duration_seconds",
            "HTTP request latency.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._inference = Histogram(
            "gainx_inference_duration_seconds", "Model call latency.", buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self._batch = Histogram(
            "gainx_batch_size", "Images per model call.", buckets=sorted(powers | {max_batch}), registry=self.registry
        )
        self._images = Counter("gainx_images", "Images run through the model.", registry=self.registry)
        self._abandoned = Counter(
            "gainx_abandoned_images", "Images dropped before the model: their client had gone.", registry=self.registry
        )

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self._requests.labels(endpoint, method, str(status)).inc()
        self._latency.labels(endpoint).observe(seconds)

    def observe_batch(self, size: int, seconds: float) -> None:
        self._images.inc(size)
        self._batch.observe(size)
        self._inference.observe(seconds)

    def observe_abandoned(self, images: int) -> None:
        self._abandoned.inc(images)

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Register a gauge whose value ``read()`` returns at scrape time."""
        Gauge(name, help_text, registry=self.registry).set_function(read)

    def render(self) -> str:
        return generate_latest(self.registry).decode("utf-8")
