"""`gainx serve` throughput and latency against a bare batched ONNX Runtime loop (issue 6).

resnet18 (random weights, 1000 classes, top-1 attention map) exported at
224x224. The baseline runs ``AttentionSession.run`` on preprocessed batches of
``MAX_BATCH`` images in a loop; the server (``python -m gainx.serve``, one
worker, ``--max-batch MAX_BATCH``) gets the same number of images as JPEG
request bodies from 1, 8 and 32 concurrent loopback clients and answers with
the top-1 class and its PNG heatmap. Every round sends ``REQUESTS`` images, so
time / baseline is the inverse of relative throughput. Target: at 32 clients
the server reaches >= 0.8x the bare loop's throughput (time ratio <= 1.25).

Extra info: ``images_per_s``, ``p50_ms`` / ``p99_ms`` (per request for the
server, per batch for the baseline), ``mean_batch`` (images per model call in
the server, from its /metrics), ``throughput_vs_bare``.
``GAINX_BENCH_QUICK=1`` shrinks to 64x64 and 32 requests a round; or set
``GAINX_BENCH_SERVE="size,requests"``, e.g.::

    GAINX_BENCH_SERVE=64,32 python -m pytest bench/bench_serve.py --benchmark-only -q
"""
from __future__ import annotations

import asyncio
import io
import os
import re
import time

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from bench.conftest import QUICK
from gainx.export import export_onnx
from gainx.models import build_model, default_target_layer
from gainx.runtime import AttentionSession
from gainx.serve.process import ServerProcess

SIZE, REQUESTS = (int(v) for v in os.environ.get("GAINX_BENCH_SERVE", "64,32" if QUICK else "224,96").split(","))
MAX_BATCH, ROUNDS, ARCH = 8, 3, "resnet18"
TARGET = "server throughput at 32 clients >= 0.8x the bare batched ONNX Runtime loop"
_BARE: dict[str, float] = {}  # images/s of the baseline, for the server members' ratio


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bench_serve") / f"{ARCH}.onnx"
    return export_onnx(build_model(ARCH, 1000), out, target_layer=default_target_layer(ARCH), topk=1,
                       image_size=(SIZE, SIZE), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], verify=False)


@pytest.fixture(scope="module")
def jpegs() -> list[bytes]:
    """Eight smooth random images (JPEG-friendly), SIZE x SIZE."""
    out = []
    for seed in range(8):
        low = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(low).resize((SIZE, SIZE), Image.BICUBIC).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    srv = ServerProcess(model, tmp_path_factory.mktemp("bench_serve_log") / "server.log",
                        "--workers", "1", "--max-batch", str(MAX_BATCH), "--max-wait-ms", "5")
    yield srv
    srv.stop()


def _percentiles(samples: list[list[float]]) -> dict[str, float]:
    flat = np.concatenate([np.asarray(s) for s in samples[1:] or samples]) * 1e3  # drop the warm-up round
    return {"p50_ms": float(np.percentile(flat, 50)), "p99_ms": float(np.percentile(flat, 99))}


@pytest.mark.benchmark(group="serve_resnet18")
def test_bare_batched_ort_loop(benchmark, model, jpegs):
    session = AttentionSession(model)
    images = np.stack([session.preprocess(Image.open(io.BytesIO(jpegs[i % len(jpegs)]))) for i in range(REQUESTS)])
    rounds: list[list[float]] = []

    def loop() -> None:
        times = []
        for start in range(0, REQUESTS, MAX_BATCH):
            t0 = time.perf_counter()
            session.run(images[start : start + MAX_BATCH])
            times.append(time.perf_counter() - t0)
        rounds.append(times)

    benchmark.pedantic(loop, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    _BARE["images_per_s"] = REQUESTS / benchmark.stats.stats.mean
    benchmark.extra_info.update(baseline=True, arch=ARCH, image_size=SIZE, requests=REQUESTS, batch=MAX_BATCH,
                                images_per_s=_BARE["images_per_s"], **_percentiles(rounds), target=TARGET)


def _batch_totals(url: str) -> tuple[float, float]:
    text = httpx.get(f"{url}/metrics").text
    return tuple(float(re.search(rf"gainx_batch_size_{k} (\S+)", text)[1]) for k in ("sum", "count"))


async def _send_all(url: str, jpegs: list[bytes], clients: int) -> list[float]:
    todo, latencies = list(range(REQUESTS)), []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker() -> None:
            while todo:
                i = todo.pop()
                t0 = time.perf_counter()
                r = await client.post("/v1/predict", content=jpegs[i % len(jpegs)], headers={"content-type": "image/jpeg"})
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"server answered {r.status_code}: {r.text[:300]}")

        await asyncio.gather(*(worker() for _ in range(clients)))
    return latencies


@pytest.mark.benchmark(group="serve_resnet18")
@pytest.mark.parametrize("clients", [1, 8, 32])
def test_server_concurrent_clients(benchmark, server, jpegs, clients):
    rounds: list[list[float]] = []
    before = _batch_totals(server.url)
    benchmark.pedantic(lambda: rounds.append(asyncio.run(_send_all(server.url, jpegs, clients))),
                       rounds=ROUNDS, iterations=1, warmup_rounds=1)
    after = _batch_totals(server.url)
    images_per_s = REQUESTS / benchmark.stats.stats.mean
    benchmark.extra_info.update(
        arch=ARCH, image_size=SIZE, requests=REQUESTS, clients=clients, max_batch=MAX_BATCH, images_per_s=images_per_s,
        mean_batch=(after[0] - before[0]) / max(after[1] - before[1], 1), **_percentiles(rounds),
        throughput_vs_bare=images_per_s / _BARE["images_per_s"] if _BARE else float("nan"), target=TARGET,
    )
