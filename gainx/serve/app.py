"""The Starlette application: routes, error rendering, lifespan of the batcher.

Endpoints (all answers JSON except ``/metrics``):

* ``POST /v1/predict`` — one image, as a multipart upload in field ``file`` or
  as a raw ``image/jpeg`` / ``image/png`` body; query parameters in
  :mod:`gainx.serve.options`. Answer: the image's size, the model input size
  and ``predictions``: per class ``class_id``, ``name``, ``probability``
  (softmax over the classes, or the class's sigmoid for a multi-label model:
  what ``gainx attention`` prints), ``logit``, ``heatmap_png`` (base64), and on
  request ``overlay_png`` and ``attention`` (the raw float map, rows of columns).
* ``POST /v1/predict/batch`` — several multipart files (field ``file`` or
  ``files``, repeated); answer ``{"results": [...]}`` in upload order.
* ``GET /healthz``, ``GET /v1/model`` (graph contract, classes, metadata,
  limits), ``GET /metrics`` (Prometheus text).

Every failure is ``{"error": {"status", "code", "message"}}`` with a 4xx for
anything the client got wrong; a 5xx never carries the text of an internal
exception (it is logged instead). Header reading, decoding, preprocessing,
rendering and JSON encoding run on a thread pool with one thread per core
(``ServeConfig.image_threads``), never on the event loop (which must keep
answering ``/healthz``) and not on anyio's 40-thread default pool: on a small
machine more threads only fight over the GIL and over the cores the model
needs. One request decodes at most half of those threads' worth of images at
a time, so a request with many large images cannot hold every thread while a
small request waits behind it; the declared pixels of all images of one
request are bounded (``max_request_pixels``), and so are the raw-map values of
one answer (``max_raw_values``). Across all requests, the body bytes held
(``max_body_bytes_in_flight``: 503 with ``Retry-After`` past it) and the
pixels being decoded (``max_pixels_in_flight``: images wait their turn) are
bounded too; a decoded image is freed once the model's input is made from it,
and a request's uploaded bytes once all its images are. Model calls go through
:class:`DynamicBatcher`; when a client disconnects before its answer is ready,
its images still waiting there are dropped.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
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
from gainx.serve.budget import Budget, Hold
from gainx.serve.config import ServeConfig
from gainx.serve.contract import graph_contract
from gainx.serve.errors import ApiError
from gainx.serve.framing import RefuseAmbiguousLength
from gainx.serve.images import SUPPORTED_CONTENT_TYPES, load_rgb, open_image
from gainx.serve.metrics import CONTENT_TYPE, Metrics
from gainx.serve.options import ModelLimits, PredictOptions, check_raw_budget, parse_options, parse_query
from gainx.serve.render import heatmap_png, overlay_png, probabilities, resize_maps

log = logging.getLogger("gainx.serve")
ENDPOINTS = ("/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/predict/batch")
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")  # others are labelled "other"
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def _dumps(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


def _json(payload: Any, status: int = 200) -> Response:
    return Response(_dumps(payload), status, media_type="application/json")


async def _until_disconnect(request: Request) -> None:
    """Return when the client has gone (call once the body is read: then only a disconnect can arrive)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


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
        self.multilabel = bool(getattr(first, "multilabel", False))
        self.image_pool: ThreadPoolExecutor | None = None  # started with the app (lifespan)
        self.metrics = Metrics(config.max_batch)
        self.batcher = DynamicBatcher(sessions, config.max_batch, config.max_wait_ms, config.max_queue, self.metrics)
        self.metrics.add_gauge("gainx_queue_depth", "Images waiting for a worker.", lambda: self.batcher.queue_depth)
        self.body_bytes = Budget(config.max_body_bytes_in_flight)
        self.decoded_pixels = Budget(config.max_pixels_in_flight)
        self.metrics.add_gauge(
            "gainx_body_bytes_in_flight", "Request body bytes held by requests.", lambda: self.body_bytes.held
        )
        self.metrics.add_gauge(
            "gainx_decoded_pixels_in_flight", "Pixels of images being decoded.", lambda: self.decoded_pixels.held
        )
        self.limits = ModelLimits(
            classes=first.classes,
            topk=first.topk,
            default_topk=config.topk or first.topk,
            image_size=tuple(first.image_size),
            max_raw_pixels=config.max_raw_pixels,
            max_raw_values=config.max_raw_values,
            max_classes=config.max_classes,
        )
        self.model_info = {
            "file": None if model_path is None else Path(model_path).name,  # not the server's directory layout
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
                "max_request_pixels": config.max_request_pixels,
                "max_raw_values": config.max_raw_values,
                "max_files": config.max_files,
                "max_body_bytes_in_flight": config.max_body_bytes_in_flight,
                "max_pixels_in_flight": config.max_pixels_in_flight,
                "image_threads": self.image_threads,
                "default_topk": self.limits.default_topk,
                "content_types": ["multipart/form-data", *SUPPORTED_CONTENT_TYPES],
            },
        }

    @property
    def image_threads(self) -> int:
        return self.config.image_threads or os.cpu_count() or 1

    @property
    def request_threads(self) -> int:
        """Images of one request decoded at the same time."""
        return max(1, self.image_threads // 2)

    async def start(self) -> None:
        asyncio.get_running_loop().set_exception_handler(_quiet_out_of_files)
        self.image_pool = ThreadPoolExecutor(self.image_threads, thread_name_prefix="gainx-image")
        await self.batcher.start()

    async def stop(self) -> None:
        await self.batcher.stop()
        self.image_pool.shutdown(wait=True)

    async def _in_pool(self, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` on the image thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self.image_pool, fn, *args)

    async def _in_pool_fairly(self, job: Callable[..., Awaitable[Any]], calls: Sequence[tuple[Any, ...]]) -> list[Any]:
        """``[await job(*args) for args in calls]``, at most :attr:`request_threads` jobs at a time.

        The pool serves its queue in order, so a request that queued all its
        images at once would make every later request wait for all of them.
        On the first failure the calls not yet started are cancelled.
        """
        gate = asyncio.Semaphore(self.request_threads)

        async def one(args: tuple[Any, ...]) -> Any:
            async with gate:
                return await job(*args)

        tasks = [asyncio.ensure_future(one(args)) for args in calls]
        try:
            return await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()

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
        opts = parse_options(parse_query(request.scope["query_string"]), self.limits)  # before reading the body
        with self.body_bytes.hold() as body:  # given back once the images are decoded, or on any way out
            with self.batcher.arriving():  # the collector may wait for these images (see DynamicBatcher)
                uploads = await self._uploads(request, batch, body)
                check_raw_budget(opts, len(uploads), self.limits)
                # its first step (entering arriving()) runs before the collector wakes up on leaving this block
                work = asyncio.ensure_future(self._answer(uploads, opts, batch, body))
            gone = asyncio.ensure_future(_until_disconnect(request))
            try:
                await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
            finally:
                gone.cancel()
            if not work.done():  # the client left: cancelling drops its images not yet run by the model
                work.cancel()
                raise ApiError(499, "client_closed_request", "the client closed the connection before the answer")
        return Response(work.result(), media_type="application/json")

    async def _answer(self, uploads: list[tuple[str, bytes]], opts: PredictOptions, batch: bool, body: Hold) -> bytes:
        """The JSON answer: headers checked, images decoded, run through the model, rendered.

        Once every image is decoded and preprocessed, the uploaded bytes are dropped (``uploads`` is
        emptied) and given back to the body budget (``body``).
        """
        labels = [label for label, _ in uploads]
        try:
            with self.batcher.arriving():
                sizes = await self._in_pool(self._check_sizes, uploads)
                calls = [(data, label, width * height) for (label, data), (width, height) in zip(uploads, sizes)]
                prepared = await self._in_pool_fairly(self._decode, calls)
                del calls
                uploads.clear()
                body.release()
                queued = self.batcher.enqueue([image for image, _ in prepared], opts.class_ids)
        except asyncio.CancelledError:
            self.metrics.observe_abandoned(len(labels))
            raise
        preds = await asyncio.gather(*queued)  # on cancel the batcher drops the images it has not run (and counts them)
        results = await asyncio.gather(
            *(
                self._in_pool(self._result, pred, image, size, label, opts)
                for pred, (image, size), label in zip(preds, prepared, labels)
            )
        )
        return b'{"results":[' + b",".join(results) + b"]}" if batch else results[0]

    def _check_sizes(self, uploads: list[tuple[str, bytes]]) -> list[tuple[int, int]]:
        """Every upload's (width, height) from its header (nothing decoded), checked one by one then together."""
        cfg = self.config
        sizes = [open_image(data, cfg.max_image_pixels, cfg.max_image_side, label).size for label, data in uploads]
        pixels = sum(width * height for width, height in sizes)
        if pixels > cfg.max_request_pixels:
            raise ApiError(
                422,
                "request_too_large",
                f"the {len(sizes)} images of this request hold {pixels} pixels "
                f"in all; the limit is {cfg.max_request_pixels} per request",
            )
        return sizes

    async def _uploads(self, request: Request, batch: bool, body: Hold) -> list[tuple[str, bytes]]:
        """The uploaded images as ``(label, bytes)``, from a multipart or a raw image body (counted in ``body``)."""
        cfg = self.config
        media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        limits = (cfg.max_body_bytes, cfg.body_timeout_s, cfg.body_deadline_s)
        if media_type in SUPPORTED_CONTENT_TYPES:
            return [("request body", await read_body(request, *limits, body))]
        if media_type != "multipart/form-data":
            given = f"Content-Type {media_type!r}" if media_type else "no Content-Type"
            raise ApiError(
                415,
                "unsupported_media_type",
                f"{given}: send multipart/form-data with the image in field 'file', or an image/jpeg or image/png body",
            )
        files = await read_files(request, *limits, cfg.max_files, body)
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

    async def _decode(self, data: bytes, label: str, pixels: int) -> tuple[np.ndarray, tuple[int, int]]:
        """:meth:`_prepare` on the pool, holding ``pixels`` of the decoded-pixel budget until it has finished.

        The budget is given back when the thread is done, not when this coroutine is cancelled (a client
        that leaves does not stop a decode already running).
        """
        await self.decoded_pixels.take(pixels)
        loop = asyncio.get_running_loop()
        try:
            done = self.image_pool.submit(self._prepare, data, label)
        except BaseException:
            self.decoded_pixels.give(pixels)
            raise
        done.add_done_callback(lambda _: loop.call_soon_threadsafe(self.decoded_pixels.give, pixels))
        return await asyncio.wrap_future(done)

    def _prepare(self, data: bytes, label: str) -> tuple[np.ndarray, tuple[int, int]]:
        """Decode an upload, then the session's own preprocessing; returns (image, (width, height)).

        The decoded image is closed (its pixels freed) as soon as the model's input is made from it.
        """
        cfg = self.config
        image = load_rgb(open_image(data, cfg.max_image_pixels, cfg.max_image_side, label), label)
        try:
            return self.first.preprocess(image), image.size
        finally:
            image.close()

    def _result(
        self, pred: Prediction, image: np.ndarray, size: tuple[int, int], label: str, opts: PredictOptions
    ) -> bytes:
        """The JSON answer for one image (raw maps encoded row by row: see :func:`_json_with`)."""
        count = len(opts.class_ids) if opts.class_ids is not None else opts.topk
        ids, maps = pred.classes[:count], pred.attention[:count]
        probs = probabilities(pred.scores, self.multilabel)
        raw = None if opts.raw_size is None else resize_maps(maps, opts.raw_size)
        predictions = []
        for j, class_id in enumerate(int(c) for c in ids):
            entry: dict[str, Any] = {
                "class_id": class_id,
                "name": self.first.classes[class_id],
                "probability": float(probs[class_id]),
                "logit": float(pred.scores[class_id]),
            }
            if opts.heatmap:
                entry["heatmap_png"] = heatmap_png(maps[j])
            if opts.overlay:
                entry["overlay_png"] = overlay_png(image, maps[j])
            predictions.append(entry if raw is None else _json_with(entry, "attention", _map_json(raw[j])))
        head = {
            "source": label,
            "width": size[0],
            "height": size[1],
            "input_size": list(image.shape[1:]),
            "attention_size": None if raw is None else list(opts.raw_size),
        }
        if raw is None:
            return _dumps({**head, "predictions": predictions})
        return _json_with(head, "predictions", b"[" + b",".join(predictions) + b"]")


def _map_json(values: np.ndarray) -> bytes:
    """A 2-D float map as JSON rows of columns, one ``json.dumps`` call per row.

    ``json.dumps`` holds the GIL for a whole call: one call over a map of
    millions of values would stall the event loop's thread for seconds even
    from a worker thread; row by row, the GIL changes hands between rows.
    """
    return b"[" + b",".join(_dumps(row.tolist()) for row in values) + b"]"


def _json_with(obj: dict[str, Any], key: str, value_json: bytes) -> bytes:
    """The JSON of the non-empty dict ``obj`` with ``key`` appended, whose value is already encoded."""
    return _dumps(obj)[:-1] + b"," + _dumps(key) + b":" + value_json + b"}"


def _quiet_out_of_files(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A warning without traceback when accepting fails for lack of file descriptors (asyncio retries in 1 s)."""
    exc = context.get("exception")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        log.warning("out of open files (%s): new connections wait; lower --max-connections or raise `ulimit -n`", exc)
    else:
        loop.default_exception_handler(context)


async def _api_error(request: Request, exc: ApiError) -> Response:
    if exc.status >= 500:
        log.error("%s %s: %s", request.method, request.url.path, exc.message)
    return Response(exc.body(), exc.status, headers=exc.headers, media_type="application/json")


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
        middleware=[Middleware(_MetricsMiddleware, metrics=service.metrics), Middleware(RefuseAmbiguousLength)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error},
        lifespan=lifespan,
    )
    app.router.redirect_slashes = False  # "/healthz/" is a 404, not a redirect built from the client's Host header
    app.state.service = service
    return app
