"""Dynamic batching (gainx.serve.batcher) against a fake session with AttentionSession's interface."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from gainx.runtime import AttentionResult
from gainx.serve.batcher import DynamicBatcher
from gainx.serve.errors import ApiError
from gainx.serve.metrics import Metrics

C, H, W = 5, 4, 6


class FakeSession:
    """Outputs derived from each image's constant value v: scores[c] = v + c, maps = v."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None) -> None:
        self.delay, self.gate = delay, gate
        self.calls: list[tuple[int, int | None]] = []  # (batch size, K of class_ids or None)
        self.starts: list[float] = []  # perf_counter() at the start of each call
        self.threads: set[str] = set()

    def run(self, images: np.ndarray, class_ids: np.ndarray | None = None) -> AttentionResult:
        self.starts.append(time.perf_counter())
        self.calls.append((len(images), None if class_ids is None else class_ids.shape[1]))
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        values = images[:, 0, 0, 0]
        if np.any(values < 0):
            raise ValueError("negative image")
        scores = values[:, None] + np.arange(C, dtype=np.float32)
        classes = np.argsort(-scores, 1)[:, :2] if class_ids is None else class_ids
        attention = np.broadcast_to(values[:, None, None, None], (len(images), classes.shape[1], H, W))
        return AttentionResult(scores, classes.astype(np.int64), attention.astype(np.float32))


def image(value: float) -> np.ndarray:
    return np.full((3, H, W), value, np.float32)


def check(pred, value: float, class_ids=None) -> None:
    np.testing.assert_array_equal(pred.scores, value + np.arange(C, dtype=np.float32))
    np.testing.assert_array_equal(pred.classes, [4, 3] if class_ids is None else class_ids)
    assert np.all(pred.attention == np.float32(value))


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def started(sessions, **kw) -> DynamicBatcher:
    args = dict(max_batch=4, max_wait_ms=5.0, max_queue=1000) | kw
    batcher = DynamicBatcher(sessions, **args)
    await batcher.start()
    return batcher


def test_concurrent_submissions_are_batched_and_routed() -> None:
    session = FakeSession()
    metrics = Metrics(max_batch=4)

    async def main():
        batcher = await started([session], metrics=metrics)
        preds = await asyncio.gather(*(batcher.submit(image(v)) for v in range(11)))
        await batcher.stop()
        return preds

    for v, pred in enumerate(run(main())):
        check(pred, v)
    sizes = [n for n, _ in session.calls]
    assert sum(sizes) == 11 and max(sizes) == 4 and all(1 <= n <= 4 for n in sizes)
    assert "gainx_images_total 11" in metrics.render()


def test_lone_request_does_not_wait() -> None:
    async def main():
        batcher = await started([FakeSession()], max_wait_ms=2000)
        start = time.perf_counter()
        check(await batcher.submit(image(1.0)), 1.0)
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return elapsed

    assert run(main()) < 1.0


def test_waits_for_announced_requests_up_to_max_wait() -> None:
    session = FakeSession()

    async def late(batcher, value, delay):
        with batcher.arriving():
            await asyncio.sleep(delay)
            return await batcher.submit(image(value))

    async def main():
        batcher = await started([session], max_wait_ms=3000)
        # the second request is announced while the first is queued: one batch of 2
        preds = await asyncio.gather(batcher.submit(image(0)), late(batcher, 1, 0.1))
        await batcher.stop()
        return preds

    for v, pred in enumerate(run(main())):
        check(pred, v)
    assert session.calls == [(2, None)]


def test_max_wait_bounds_the_wait() -> None:
    async def main():
        batcher = await started([FakeSession()], max_wait_ms=150)
        with batcher.arriving():  # a request that never comes
            start = time.perf_counter()
            check(await batcher.submit(image(2)), 2)
            elapsed = time.perf_counter() - start
        await batcher.stop()
        return elapsed

    assert 0.13 <= run(main()) < 1.5


def test_class_id_requests_are_batched_by_k() -> None:
    session = FakeSession()
    wanted = [None, (1,), (0, 2), None, (3,), (4, 4), None, (2,)]

    async def main():
        batcher = await started([session], max_batch=8)
        preds = await asyncio.gather(*(batcher.submit(image(i), ids) for i, ids in enumerate(wanted)))
        await batcher.stop()
        return preds

    for i, (pred, ids) in enumerate(zip(run(main()), wanted)):
        check(pred, i, ids)
    assert sorted(session.calls, key=str) == sorted([(3, None), (3, 1), (2, 2)], key=str)


def test_failed_batch_fails_only_its_requests(caplog: pytest.LogCaptureFixture) -> None:
    """The client gets a 500 that names no runtime internals; the exception goes to the server log."""

    async def main():
        batcher = await started([FakeSession()], max_batch=2)
        results = await asyncio.gather(*(batcher.submit(image(v)) for v in (0, -1, 2, 3)), return_exceptions=True)
        after = await batcher.submit(image(5))
        await batcher.stop()
        return results, after

    results, after = run(main())
    for bad in results[:2]:
        assert isinstance(bad, ApiError) and bad.status == 500 and bad.code == "inference_failed"
        assert "negative image" not in bad.message and "ValueError" not in bad.message
    assert "negative image" in caplog.text
    check(results[2], 2)
    check(results[3], 3)
    check(after, 5)


def test_workers_run_in_parallel_threads() -> None:
    sessions = [FakeSession(delay=0.4), FakeSession(delay=0.4)]

    async def main():
        batcher = await started(sessions, max_batch=1)
        start = time.perf_counter()
        await asyncio.gather(batcher.submit(image(1)), batcher.submit(image(2)))
        elapsed = time.perf_counter() - start
        await batcher.stop()
        return elapsed

    assert run(main()) < 0.75
    assert all(len(s.calls) == 1 for s in sessions)
    assert len(sessions[0].threads | sessions[1].threads) == 2


def test_full_batch_is_queued_on_a_busy_worker_partial_waits() -> None:
    gate = threading.Event()
    session = FakeSession(gate=gate)

    async def main():
        batcher = await started([session], max_batch=2, max_wait_ms=0)
        running = [asyncio.ensure_future(batcher.submit(image(v))) for v in (0, 1)]
        await asyncio.sleep(0.05)  # the only worker now runs [0, 1] and blocks on the gate
        queued = [asyncio.ensure_future(batcher.submit(image(v))) for v in (2, 3, 4)]
        await asyncio.sleep(0.05)
        depth = batcher.queue_depth  # [2, 3] went to the busy worker's queue; [4] is partial and waits
        gate.set()
        time.sleep(0.3)  # block the event loop: the queued batch must start without it
        unblocked = time.perf_counter()
        preds = await asyncio.gather(*running, *queued)
        await batcher.stop()
        return depth, unblocked, preds

    depth, unblocked, preds = run(main())
    for v, pred in enumerate(preds):
        check(pred, v)
    assert depth == 1
    assert session.calls == [(2, None), (2, None), (1, None)]
    assert session.starts[1] < unblocked < session.starts[2]


def test_stop_finishes_pending_then_refuses() -> None:
    session = FakeSession(delay=0.05)

    async def main():
        batcher = await started([session], max_batch=3)
        pending = [asyncio.ensure_future(batcher.submit(image(v))) for v in range(7)]
        await asyncio.sleep(0)  # let them enqueue
        await batcher.stop()
        assert all(p.done() for p in pending)
        with pytest.raises(ApiError) as info:
            await batcher.submit(image(0))
        assert info.value.status == 503
        return [p.result() for p in pending]

    for v, pred in enumerate(run(main())):
        check(pred, v)


def test_queue_limit_gives_503() -> None:
    gate = threading.Event()

    async def main():
        batcher = await started([FakeSession(gate=gate)], max_batch=1, max_queue=2)
        first = asyncio.ensure_future(batcher.submit(image(0)))
        await asyncio.sleep(0.05)  # the worker now holds image 0 and blocks on the gate
        queued = [asyncio.ensure_future(batcher.submit(image(v))) for v in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(ApiError) as info:
            await batcher.submit(image(3))
        gate.set()
        preds = await asyncio.gather(first, *queued)
        await batcher.stop()
        return info.value, preds

    err, preds = run(main())
    assert err.status == 503 and err.code == "queue_full"
    for v, pred in enumerate(preds):
        check(pred, v)


def test_enqueue_is_all_or_nothing() -> None:
    gate = threading.Event()
    session = FakeSession(gate=gate)

    async def main():
        batcher = await started([session], max_batch=1, max_queue=3)
        first = batcher.enqueue([image(0)])
        await asyncio.sleep(0.05)  # the worker holds image 0, blocked on the gate
        second = batcher.enqueue([image(1), image(2), image(3)])  # 1 is queued on the worker; 2, 3 wait
        await asyncio.sleep(0.05)
        depth = batcher.queue_depth
        with pytest.raises(ApiError) as info:
            batcher.enqueue([image(4), image(5)])  # 2 waiting + 2 > 3: nothing is queued
        refused_depth = batcher.queue_depth
        gate.set()
        preds = await asyncio.gather(*first, *second)
        await batcher.stop()
        return depth, info.value, refused_depth, preds

    depth, err, refused_depth, preds = run(main())
    assert err.status == 503 and err.code == "queue_full" and "adds 2" in err.message
    assert depth == refused_depth == 2
    for v, pred in enumerate(preds):
        check(pred, v)
    assert sum(n for n, _ in session.calls) == 4


@pytest.mark.parametrize("kw", [dict(max_batch=0), dict(max_queue=0), dict(max_wait_ms=-1)])
def test_bad_limits(kw) -> None:
    with pytest.raises(ValueError, match="limits"):
        DynamicBatcher([FakeSession()], **(dict(max_batch=1, max_wait_ms=0, max_queue=1) | kw))
    with pytest.raises(ValueError, match="at least one session"):
        DynamicBatcher([], 1, 0, 1)


def test_cancelled_images_are_dropped_and_counted() -> None:
    """Images whose request was cancelled (its client left) never reach the model."""
    gate = threading.Event()
    session = FakeSession(gate=gate)
    metrics = Metrics(max_batch=1)

    async def main():
        batcher = await started([session], max_batch=1, metrics=metrics)
        first = batcher.enqueue([image(0)])  # occupies the only worker until the gate opens
        await asyncio.sleep(0.1)
        waiting = batcher.enqueue([image(v) for v in (1, 2, 3)])
        waiting[0].cancel()
        waiting[2].cancel()
        gate.set()
        results = await asyncio.gather(*first, waiting[1])
        await batcher.stop()
        return results

    first, kept = run(main())
    check(first, 0)
    check(kept, 2)
    assert sorted(n for n, _ in session.calls) == [1, 1]
    assert "gainx_abandoned_images_total 2.0" in metrics.render()
