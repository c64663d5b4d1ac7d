"""Dynamic batching: concurrent requests share model calls.

Each image is submitted on its own; a collector task groups pending images
into batches of up to ``max_batch`` and hands each batch to an inference
worker (one ONNX Runtime session per worker, each with its own thread so the
event loop never blocks). For an idle worker, a batch leaves as soon as it is
full, or when ``max_wait_ms`` has passed since the worker became free, or when
no other request is on its way (the app announces requests that are still
being read/decoded with :meth:`DynamicBatcher.arriving`), so a lone client
never pays the wait. Under load, a *full* batch is also queued on a busy
worker (one batch ahead at most): its thread starts it the moment the current
model call returns, without a round trip through the event loop, so the model
does not sit idle while the loop is busy answering the previous batch.
Partial batches only go to idle workers, so they keep collecting arrivals.
Images asking for explicit classes are only batched with images asking for
the same number of classes (the ``class_ids`` input is a rectangular
``(N, K)`` array).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from gainx.serve.errors import ApiError, busy
from gainx.serve.metrics import Metrics

log = logging.getLogger("gainx.serve")


class Session(Protocol):
    """What the batcher needs from :class:`gainx.runtime.AttentionSession`."""

    def run(self, images: np.ndarray, class_ids: np.ndarray | None = None) -> Any: ...


class Prediction(NamedTuple):
    """One image's share of a batched model call."""

    scores: np.ndarray  # (C,)
    classes: np.ndarray  # (K,) int64
    attention: np.ndarray  # (K, H, W) float32 in [0, 1]


@dataclass
class _Item:
    image: np.ndarray
    class_ids: tuple[int, ...] | None
    future: asyncio.Future = field(repr=False)

    @property
    def key(self) -> int | None:
        return None if self.class_ids is None else len(self.class_ids)


class DynamicBatcher:
    """Groups submitted images into model calls across ``sessions`` (one worker each)."""

    def __init__(
        self,
        sessions: Sequence[Session],
        max_batch: int,
        max_wait_ms: float,
        max_queue: int,
        metrics: Metrics | None = None,
    ) -> None:
        if not sessions:
            raise ValueError("DynamicBatcher needs at least one session")
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                f"bad batcher limits: max_batch={max_batch}, max_queue={max_queue}, max_wait_ms={max_wait_ms}"
            )
        self.sessions = list(sessions)
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000.0, max_queue
        self.metrics = metrics
        self._pending: deque[_Item] = deque()
        self._arriving = 0
        self._closing = False
        self._wakeup: asyncio.Event | None = None
        self._load = [0] * len(self.sessions)  # batches handed to each worker and not finished (0, 1 or 2)
        self._collector: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._executors: list[ThreadPoolExecutor] = []

    # -- lifecycle ---------------------------------------------------------
    async def start(self) -> None:
        """Start the collector on the running event loop."""
        self._wakeup = asyncio.Event()
        self._executors = [
            ThreadPoolExecutor(1, thread_name_prefix=f"gainx-infer-{i}") for i in range(len(self.sessions))
        ]
        self._collector = asyncio.create_task(self._collect(), name="gainx-batcher")

    async def stop(self) -> None:
        """Refuse new work, finish every pending and running batch, then stop."""
        if self._collector is None:
            return
        self._closing = True
        self._wakeup.set()
        await self._collector
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        for executor in self._executors:
            executor.shutdown(wait=True)
        self._collector = None

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    @contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request that will submit soon (while its body is read/decoded)."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1
            if self._wakeup is not None:
                self._wakeup.set()

    # -- submission ----------------------------------------------------------
    def enqueue(self, images: Sequence[np.ndarray], class_ids: Sequence[int] | None = None) -> list[asyncio.Future]:
        """Queue ``(3, H, W)`` float32 images, all or none; their futures resolve to :class:`Prediction`.

        Synchronous, so a request can queue its images before it leaves
        :meth:`arriving` (the collector then sees them in the batch it is
        filling). Refused whole (503) when they do not all fit in the queue,
        so an overloaded server spends no model time on a refused request.
        """
        if self._collector is None or self._closing:
            raise ApiError(503, "shutting_down", "the server is shutting down")
        if len(self._pending) + len(images) > self.max_queue:
            raise busy(
                f"{len(self._pending)} images are waiting and this request adds "
                f"{len(images)} (queue limit {self.max_queue})",
                code="queue_full",
            )
        loop = asyncio.get_running_loop()
        ids = None if class_ids is None else tuple(class_ids)
        items = [_Item(image, ids, loop.create_future()) for image in images]
        self._pending.extend(items)
        self._wakeup.set()
        return [item.future for item in items]

    async def submit(self, image: np.ndarray, class_ids: Sequence[int] | None = None) -> Prediction:
        """Queue one image (:meth:`enqueue`) and wait for its :class:`Prediction`."""
        return await self.enqueue([image], class_ids)[0]

    # -- internals -----------------------------------------------------------
    def _count(self, key: int | None) -> int:
        return sum(1 for item in self._pending if item.key == key)

    def _take(self, key: int | None) -> list[_Item]:
        batch, rest, dropped = [], deque(), 0
        while self._pending:
            item = self._pending.popleft()
            if item.future.done():  # cancelled while waiting: its client has gone
                dropped += 1
            elif item.key == key and len(batch) < self.max_batch:
                batch.append(item)
            else:
                rest.append(item)
        self._pending = rest
        if dropped and self.metrics is not None:
            self.metrics.observe_abandoned(dropped)
        return batch

    async def _wait(self, timeout: float | None) -> None:
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
            pass

    def _worker(self, load: int) -> int | None:
        """The first worker holding exactly ``load`` batches (running or queued), or None."""
        return next((w for w, n in enumerate(self._load) if n == load), None)

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closing:
                    return
                await self._wait(None)
            key = self._pending[0].key
            worker = self._worker(0)
            if worker is None:  # every worker is busy: queue a full batch behind a running one, or wait
                worker = self._worker(1)
                if worker is None or self._count(key) < self.max_batch:
                    await self._wait(None)  # woken by a submission or a finished batch
                    continue
            else:
                deadline = loop.time() + self.max_wait
                while (
                    self._count(key) < self.max_batch
                    and self._arriving > 0
                    and not self._closing
                    and (left := deadline - loop.time()) > 0
                ):
                    await self._wait(left)
            batch = self._take(key)
            if batch:  # empty when everything pending was cancelled
                self._load[worker] += 1
                task = asyncio.create_task(self._run(worker, batch))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _run(self, worker: int, batch: list[_Item]) -> None:
        images = np.stack([item.image for item in batch])
        class_ids = None if batch[0].class_ids is None else np.array([item.class_ids for item in batch], np.int64)
        try:
            result, seconds = await asyncio.get_running_loop().run_in_executor(
                self._executors[worker], _timed, self.sessions[worker], images, class_ids
            )
        except Exception:
            log.exception("model call failed on a batch of %d image(s)", len(batch))
            error = ApiError(
                500,
                "inference_failed",
                f"the model failed on a batch of {len(batch)} image(s); the server log has the details",
            )
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(error)
        else:
            if self.metrics is not None:
                self.metrics.observe_batch(len(batch), seconds)
            for i, item in enumerate(batch):
                if not item.future.done():
                    item.future.set_result(Prediction(result.scores[i], result.classes[i], result.attention[i]))
        finally:
            self._load[worker] -= 1
            self._wakeup.set()


def _timed(session: Session, images: np.ndarray, class_ids: np.ndarray | None) -> tuple[Any, float]:
    """``session.run`` on the worker's thread, and how long the call took (not the wait of a queued batch)."""
    start = time.perf_counter()
    return session.run(images, class_ids), time.perf_counter() - start
