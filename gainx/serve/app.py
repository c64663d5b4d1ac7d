"""The Starlette application: routes, error rendering, lifespan of the batcher.

Endpoints (all answers JSON except ``/metrics``):

* ``POST /v1/predict`` — one image, as a multipart upload in field ``file`` or
  as a raw ``image/jpeg`` / ``image/png`` body; query parameters in
  :mod:`gainx.serve.options`. Answer: the image's size, the model input size
  and ``predictions``: per class ``class_id``, ``name``, ``score`` (logit),
  ``heatmap_png`` (base64), and on request ``overlay_png`` and ``attention``
  (the raw float map, rows of columns).
* ``POST /v1/predict/batch`` — several multipart files (field ``file`` or
  ``files``, repeated); answer ``{"results": [...]}`` in upload order.
* ``GET /healthz``, ``GET /v1/model`` (graph contract, classes, metadata,
  limits), ``GET /metrics`` (Prometheus text).

Every failure is ``{"error": {"status", "code", "message"}}`` with a 4xx for
anything the client got wrong. Decoding, preprocessing and rendering run on a
thread pool with one thread per core (``ServeConfig.image_threads``), not on
the event loop and not on anyio's 40-thread default pool: on a small machine
more threads only fight over the GIL and over the cores the model needs.
Model calls go through :class:`DynamicBatcher`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gainx.serve.batcher import DynamicBatcher, Prediction
from gainx.serve.body import read_body, read_files
from gainx.serve.config import ServeConfig
from gainx.serve.contract import graph_contract
from gainx.serve.errors import ApiError
from gainx.serve.images import SUPPORTED_CONTENT_TYPES, decode_image
from gainx.serve.metrics import CONTENT_TYPE, Metrics
from gainx.serve.options import ModelLimits, PredictOptions, parse_options
from gainx.serve.render import heatmap_png, overlay_png, resize_maps

log = logging.getLogger("gainx.serve")
ENDPOINTS = ("/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/predict/batch")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # others are labelled "other"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload, separators=(",", ":")), status, media_type="application/json")


class _MetricsMiddleware:
    """Counts every HTTP request by endpoint/method/status and times it."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics, self.inflight = app, metrics, 0
        metrics.add_gauge("gainx_inflight_requests", "HTTP requests being handled.", lambda: self.inflight)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.inflight += 1
        try:
            await self.app(scope, receive, record_status)
        finally:
            self.inflight -= 1
            endpoint = scope["path"] if scope["path"] in ENDPOINTS else "other"
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.observe_request(endpoint, method, status, time.perf_counter() - start)


class _Service:
    """The request handlers, sharing the sessions, batcher and limits."""

    def __init__(self, sessions: Sequence[Any], config: ServeConfig, model_path: str | Path | None) -> None:
        first = sessions[0]
        if config.topk is not None and config.topk > first.topk:
            raise ValueError(f"--topk {config.topk} is more than the model ranks ({first.topk})")
        self.sessions, self.config, self.first = sessions, config, first
        self.image_pool: ThreadPoolExecutor | None = None  # started with the app (lifespan)
        self.metrics = Metrics(config.max_batch)
        self.batcher = DynamicBatcher(sessions, config.max_batch, config.max_wait_ms, config.max_queue, self.metrics)
        self.metrics.add_gauge("gainx_queue_depth", "Images waiting for a worker.", lambda: self.batcher.queue_depth)
        self.limits = ModelLimits(
            classes=first.classes,
            topk=first.topk,
            default_topk=config.topk or first.topk,
            image_size=tuple(first.image_size),
            max_raw_pixels=config.max_raw_pixels,
            max_classes=config.max_classes,
        )
        self.model_info = {
            "path": None if model_path is None else str(model_path),
            "classes": list(first.classes),
            "num_classes": len(first.classes),
            "image_size": list(first.image_size),
            "topk": first.topk,
            "mean": list(first.mean),
            "std": list(first.std),
            "metadata": dict(getattr(first, "metadata", {})),
            "providers": list(getattr(first, "providers", [])),
            "graph": None if model_path is None else graph_contract(model_path),
            "server": {
                "workers": len(sessions),
                "max_batch": config.max_batch,
                "max_wait_ms": config.max_wait_ms,
                "max_body_bytes": config.max_body_bytes,
                "max_image_pixels": config.max_image_pixels,
                "max_image_side": config.max_image_side,
                "max_files": config.max_files,
                "image_threads": self.image_threads,
                "default_topk": self.limits.default_topk,
                "content_types": ["multipart/form-data", *SUPPORTED_CONTENT_TYPES],
            },
        }

    @property
    def image_threads(self) -> int:
        return self.config.image_threads or os.cpu_count() or 1

    async def start(self) -> None:
        self.image_pool = ThreadPoolExecutor(self.image_threads, thread_name_prefix="gainx-image")
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.image_pool.shutdown(wait=True)

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the image thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.image_pool, fn, *args)

    # -- simple endpoints ------------------------------------------------------
    async def healthz(self, request: Request) -> Response:
        return _json({"status": "ok", "workers": len(self.sessions), "queue_depth": self.batcher.queue_depth})

    async def model(self, request: Request) -> Response:
        return _json(self.model_info)

    async def metrics_text(self, request: Request) -> Response:
        return PlainTextResponse(self.metrics.render(), media_type=CONTENT_TYPE)

    # -- prediction --------------------------------------------------------------
    async def predict(self, request: Request) -> Response:
        return await self._predict(request, batch=False)

    async def predict_batch(self, request: Request) -> Response:
        return await self._predict(request, batch=True)

    async def _predict(self, request: Request, batch: bool) -> Response:
        query = {key: request.query_params.getlist(key) for key in request.query_params.keys()}
        opts = parse_options(query, self.limits)
        with self.batcher.arriving():  # queue the images before leaving: the collector may be waiting for them
            uploads = await self._uploads(request, batch)
            prepared = await asyncio.gather(*(self._in_pool(self._prepare, *upload) for upload in uploads))
            queued = self.batcher.enqueue([image for image, _ in prepared], opts.class_ids)
        preds = await asyncio.gather(*queued)
        results = await asyncio.gather(
            *(
                self._in_pool(self._result, pred, image, size, name, opts)
                for pred, (image, size), (name, _) in zip(preds, prepared, uploads)
            )
        )
        return _json({"results": list(results)} if batch else results[0])

    async def _uploads(self, request: Request, batch: bool) -> list[tuple[str, bytes]]:
        """The uploaded images as ``(label, bytes)``, from a multipart or a raw image body."""
        cfg = self.config
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type in SUPPORTED_CONTENT_TYPES:
            return [("request body", await read_body(request, cfg.max_body_bytes, cfg.body_timeout_s))]
        if media_type != "multipart/form-data":
            given = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
            raise ApiError(
                415,
                "unsupported_media_type",
                f"{given}: send multipart/form-data with the image in field 'file', or an image/jpeg or image/png body",
            )
        files = await read_files(request, cfg.max_body_bytes, cfg.body_timeout_s, cfg.max_files)
        fields = ("file", "files") if batch else ("file",)
        wrong = sorted({name for name, _, _ in files if name not in fields})
        if wrong:
            raise ApiError(
                400, "unexpected_field", f"unexpected multipart field(s) {wrong}; send images in {list(fields)}"
            )
        if not files:
            raise ApiError(400, "missing_file", f"the multipart body has no file in field {fields[0]!r}")
        if not batch and len(files) > 1:
            raise ApiError(400, "too_many_files", f"{len(files)} files sent to /v1/predict; use /v1/predict/batch")
        return [
            (f"file #{i} {filename!r}" if batch else f"file {filename!r}", data)
            for i, (_, filename, data) in enumerate(files)
        ]

    def _prepare(self, label: str, data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode and validate, then the session's own preprocessing; returns (image, (width, height))."""
        cfg = self.config
        image = decode_image(data, cfg.max_image_pixels, cfg.max_image_side, label)
        return self.first.preprocess(image), image.size

    def _result(
        self, pred: Prediction, image: np.ndarray, size: tuple[int, int], label: str, opts: PredictOptions
    ) -> dict[str, Any]:
        """The JSON answer for one image."""
        count = len(opts.class_ids) if opts.class_ids is not None else opts.topk
        ids, maps = pred.classes[:count], pred.attention[:count]
        raw = None if opts.raw_size is None else resize_maps(maps, opts.raw_size)
        predictions = []
        for j, class_id in enumerate(int(c) for c in ids):
            entry: dict[str, Any] = {
                "class_id": class_id,
                "name": self.first.classes[class_id],
                "score": float(pred.scores[class_id]),
            }
            if opts.heatmap:
                entry["heatmap_png"] = heatmap_png(maps[j])
            if opts.overlay:
                entry["overlay_png"] = overlay_png(image, maps[j])
            if raw is not None:
                entry["attention"] = raw[j].tolist()
            predictions.append(entry)
        return {
            "source": label,
            "width": size[0],
            "height": size[1],
            "input_size": list(image.shape[1:]),
            "attention_size": None if raw is None else list(opts.raw_size),
            "predictions": predictions,
        }


async def _api_error(request: Request, exc: ApiError) -> Response:
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return _json(exc.payload(), exc.status)


async def _http_error(request: Request, exc: HTTPException) -> Response:
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    return _json(
        ApiError(exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}").payload(), exc.status_code
    )


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _json(ApiError(500, "internal_error", f"internal error: {type(exc).__name__}").payload(), 500)


def create_app(
    sessions: Sequence[Any],
    config: ServeConfig | None = None,
    model_path: str | Path | None = None,
    on_ready: Callable[[], None] | None = None,
) -> Starlette:
    """The ASGI app serving ``sessions`` (one inference worker each, all the same model).

    ``sessions`` follow :class:`gainx.runtime.AttentionSession`'s interface;
    ``model_path`` (the ONNX file) feeds ``/v1/model``'s graph contract;
    ``on_ready`` is called once the batcher runs.
    """
    if not sessions:
        raise ValueError("create_app needs at least one session")
    service = _Service(sessions, config or ServeConfig(), model_path)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(
        routes=[
            Route("/healthz", service.healthz, methods=["GET"]),
            Route("/metrics", service.metrics_text, methods=["GET"]),
            Route("/v1/model", service.model, methods=["GET"]),
            Route("/v1/predict", service.predict, methods=["POST"]),
            Route("/v1/predict/batch", service.predict_batch, methods=["POST"]),
        ],
        middleware=[Middleware(_MetricsMiddleware, metrics=service.metrics)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.state.service = service
    return app
