"""Prometheus metrics in the text exposition format (version 0.0.4), no client library.

Series exported (all names prefixed ``gainx_``):

* ``requests_total{endpoint,method,status}`` — counter of finished HTTP requests;
* ``request_duration_seconds{endpoint}`` — histogram of request latency;
* ``batch_size`` — histogram of the number of images per model call;
* ``inference_duration_seconds`` — histogram of model-call latency;
* ``images_total`` — counter of images run through the model;
* ``inflight_requests`` and ``queue_depth`` — gauges (read at scrape time).

Updates come from the event loop and from inference threads, so every
mutation holds one lock.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(pairs: tuple[tuple[str, str], ...]) -> str:
    if not pairs:
        return ""
    escaped = (v.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"') for _, v in pairs)
    return "{" + ",".join(f'{k}="{v}"' for (k, _), v in zip(pairs, escaped)) + "}"


def _num(value: float) -> str:
    value = float(value)
    if value == float("inf"):
        return "+Inf"
    return str(int(value)) if value.is_integer() else repr(value)


class Histogram:
    """Cumulative-bucket histogram per label set (upper bounds inclusive: ``le``)."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...]) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError(f"histogram {name}: buckets must be strictly increasing, got {buckets}")
        self.name, self.help, self.buckets = name, help_text, tuple(buckets)
        self._series: dict[tuple[tuple[str, str], ...], list[float]] = {}

    def series(self, labels: tuple[tuple[str, str], ...] = ()) -> list[float]:
        """The series of ``labels`` (created at zero): one count per bucket, then +Inf, then the sum."""
        return self._series.setdefault(labels, [0.0] * (len(self.buckets) + 2))

    def observe(self, value: float, labels: tuple[tuple[str, str], ...] = ()) -> None:
        """Caller holds the registry lock."""
        series = self.series(labels)
        series[bisect_left(self.buckets, value)] += 1  # index len(buckets) is the +Inf bucket
        series[-1] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, series in sorted(self._series.items()):
            running = 0.0
            for bound, count in zip((*self.buckets, float("inf")), series):
                running += count
                lines.append(f"{self.name}_bucket{_labels(labels + (('le', _num(bound)),))} {_num(running)}")
            lines.append(f"{self.name}_sum{_labels(labels)} {_num(series[-1])}")
            lines.append(f"{self.name}_count{_labels(labels)} {_num(running)}")
        return lines


class Metrics:
    """All server metrics; :meth:`render` gives the ``/metrics`` body."""

    def __init__(self, max_batch: int) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[tuple[str, str], ...], int] = {}
        self._images = 0
        powers = {1 << i for i in range(max_batch.bit_length())}
        self.latency = Histogram("gainx_request_duration_seconds", "HTTP request latency.", LATENCY_BUCKETS)
        self.inference = Histogram("gainx_inference_duration_seconds", "Model call latency.", LATENCY_BUCKETS)
        self.batch = Histogram("gainx_batch_size", "Images per model call.", tuple(sorted(powers | {max_batch})))
        for hist in (self.inference, self.batch):  # unlabelled: exported at zero before the first batch
            hist.series()
        self.gauges: dict[str, tuple[str, Callable[[], float]]] = {}

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        key = (("endpoint", endpoint), ("method", method), ("status", str(status)))
        with self._lock:
            self._requests[key] = self._requests.get(key, 0) + 1
            self.latency.observe(seconds, (("endpoint", endpoint),))

    def observe_batch(self, size: int, seconds: float) -> None:
        with self._lock:
            self._images += size
            self.batch.observe(float(size))
            self.inference.observe(seconds)

    def add_gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        """Register a gauge whose value ``read()`` returns at scrape time."""
        self.gauges[name] = (help_text, read)

    def render(self) -> str:
        with self._lock:
            lines = ["# HELP gainx_requests_total Finished HTTP requests.", "# TYPE gainx_requests_total counter"]
            lines += [f"gainx_requests_total{_labels(k)} {v}" for k, v in sorted(self._requests.items())]
            lines += ["# HELP gainx_images_total Images run through the model.", "# TYPE gainx_images_total counter"]
            lines.append(f"gainx_images_total {self._images}")
            for hist in (self.latency, self.inference, self.batch):
                lines += hist.render()
        for name, (help_text, read) in sorted(self.gauges.items()):
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge", f"{name} {_num(read())}"]
        return "\n".join(lines) + "\n"
