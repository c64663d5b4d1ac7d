"""``gainx serve MODEL.onnx``: the command line of the HTTP inference server."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import socket
import sys

from gainx._extras import require
from gainx.serve.config import ServeConfig

SERVE_MODULES = ("starlette", "uvicorn", "multipart", "onnx", "onnxruntime")

_DEFAULTS = ServeConfig()
FILES_RESERVED = 32  # open files kept for the model, logs, libraries and the listening socket
ACCEPT_BACKLOG = 64  # kernel accept queue; also the most connections accepted in one go before the cap is applied


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``serve`` flags (shared by ``gainx serve`` and ``python -m gainx.serve``)."""
    parser.add_argument("model", help="ONNX attention model written by `gainx export`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    parser.add_argument("--port", type=_port, default=8000, help="TCP port; 0 picks a free one (printed at start-up)")
    parser.add_argument("--workers", type=int, default=1, help="inference workers, one ONNX Runtime session each")
    parser.add_argument("--max-batch", type=int, default=_DEFAULTS.max_batch, help="images per model call")
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=_DEFAULTS.max_wait_ms,
        help="how long a free worker waits for a batch to fill while requests are arriving",
    )
    parser.add_argument("--max-body-bytes", type=int, default=_DEFAULTS.max_body_bytes, help="request body limit")
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        default=_DEFAULTS.max_image_pixels,
        help="largest declared width*height accepted (checked before decoding)",
    )
    parser.add_argument("--max-queue", type=int, default=_DEFAULTS.max_queue, help="waiting images before 503")
    parser.add_argument("--topk", type=int, default=None, help="classes per answer by default (<= the model's topk)")
    parser.add_argument(
        "--image-threads",
        type=int,
        default=None,
        help="threads decoding uploads and rendering heatmaps (default: one per CPU core)",
    )
    parser.add_argument(
        "--max-request-pixels",
        type=int,
        default=_DEFAULTS.max_request_pixels,
        help="largest declared width*height summed over the images of one request",
    )
    parser.add_argument(
        "--max-raw-values",
        type=int,
        default=_DEFAULTS.max_raw_values,
        help="raw attention values one answer may hold (images x classes x H x W)",
    )
    parser.add_argument(
        "--body-timeout",
        type=float,
        default=_DEFAULTS.body_timeout_s,
        help="seconds a client may stall while sending a body (then 408)",
    )
    parser.add_argument(
        "--body-deadline",
        type=float,
        default=_DEFAULTS.body_deadline_s,
        help="seconds a whole request body may take (then 408)",
    )
    parser.add_argument(
        "--header-timeout",
        type=float,
        default=_DEFAULTS.header_timeout_s,
        help="seconds a connection may take to send a complete request head (then it is closed)",
    )
    parser.add_argument(
        "--send-timeout",
        type=float,
        default=_DEFAULTS.send_timeout_s,
        help="seconds an answer's unsent bytes may wait for the client to read any of them (then it is aborted)",
    )
    parser.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=_DEFAULTS.keep_alive_s,
        help="seconds an idle kept-alive connection stays open",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=_DEFAULTS.max_connections,
        help="open connections; past it the longest-idle one is closed, else the writer waiting longest on its "
        "client (must fit the open-file limit)",
    )
    parser.add_argument(
        "--max-buffered-bytes",
        type=int,
        default=_DEFAULTS.max_buffered_bytes,
        help="unsent answer bytes of all connections; past it the writers waiting longest on their clients are aborted",
    )
    parser.add_argument(
        "--max-body-bytes-in-flight",
        type=int,
        default=_DEFAULTS.max_body_bytes_in_flight,
        help="request body bytes held by all requests at once (503 with Retry-After past it)",
    )
    parser.add_argument(
        "--max-pixels-in-flight",
        type=int,
        default=_DEFAULTS.max_pixels_in_flight,
        help="decoded pixels of all requests at once; images past it wait until decoded ones are freed",
    )
    parser.add_argument(
        "--graceful-timeout", type=float, default=30.0, help="seconds to finish in-flight requests after SIGTERM/SIGINT"
    )
    parser.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--access-log", action="store_true", help="log every request (uvicorn access log)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the ``gainx`` command line."""
    parser = subparsers.add_parser("serve", help="HTTP inference server for an exported ONNX model")
    add_arguments(parser)
    parser.set_defaults(func=run)


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (0: a free port).

    Created with ``proto=IPPROTO_TCP`` so that asyncio sets TCP_NODELAY on the
    accepted connections (it only does for sockets whose proto says TCP;
    without it Nagle + delayed ACK add ~40 ms to every small response).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(ACCEPT_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def event_loop() -> str:
    """uvicorn's event loop: uvloop where installed (the ``serve`` extra has it, except on Windows), else asyncio.

    uvloop's C loop spends less of the GIL and of the cores on each request than asyncio's, leaving
    them to decoding and the model. The connection limits (:mod:`gainx.serve.connections`) and
    ``tests/test_serve_http.py`` hold on both loops.
    """
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def check_file_limit(max_connections: int) -> None:
    """Refuse a connection cap the process's open-file limit cannot hold (each connection is a file)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + ACCEPT_BACKLOG + FILES_RESERVED
    if soft != resource.RLIM_INFINITY and needed > soft:
        raise ValueError(
            f"--max-connections {max_connections} does not fit the open-file limit of {soft} (another "
            f"{ACCEPT_BACKLOG + FILES_RESERVED} are kept for connections being accepted and for the "
            f"server itself): lower it or raise `ulimit -n`"
        )


# ServeConfig field -> the argparse destination of its flag (``--max-batch`` for ``max_batch``)
CONFIG_FLAGS = {
    "max_batch": "max_batch",
    "max_wait_ms": "max_wait_ms",
    "max_queue": "max_queue",
    "max_body_bytes": "max_body_bytes",
    "body_timeout_s": "body_timeout",
    "body_deadline_s": "body_deadline",
    "header_timeout_s": "header_timeout",
    "send_timeout_s": "send_timeout",
    "keep_alive_s": "keep_alive_timeout",
    "max_connections": "max_connections",
    "max_buffered_bytes": "max_buffered_bytes",
    "max_body_bytes_in_flight": "max_body_bytes_in_flight",
    "max_pixels_in_flight": "max_pixels_in_flight",
    "max_image_pixels": "max_image_pixels",
    "max_request_pixels": "max_request_pixels",
    "max_raw_values": "max_raw_values",
    "topk": "topk",
    "image_threads": "image_threads",
}


def _with_flag_names(message: str) -> str:
    """``message`` (from :class:`ServeConfig`) with each field name it holds written as its command-line flag."""
    for field, dest in CONFIG_FLAGS.items():
        message = re.sub(rf"\b{field}\b", "--" + dest.replace("_", "-"), message)
    return message


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a TCP port is 0-65535, got {port}")
    return port


def _fail(message: str) -> int:
    print(f"gainx serve: error: {message}", file=sys.stderr, flush=True)
    return 2


def run(args: argparse.Namespace) -> int:
    """Load the model (once per worker), bind the socket, serve until SIGTERM/SIGINT."""
    for module in SERVE_MODULES:
        require(module, extra="serve", feature="gainx serve")
    import uvicorn

    from gainx.runtime import AttentionSession
    from gainx.serve.app import create_app
    from gainx.serve.connections import guarded_protocol

    try:
        if args.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {args.workers}")
        if not args.graceful_timeout >= 0:  # also refuses NaN
            raise ValueError(f"--graceful-timeout must be >= 0, got {args.graceful_timeout}")
        config = ServeConfig(**{field: getattr(args, dest) for field, dest in CONFIG_FLAGS.items()})
        check_file_limit(config.max_connections)
    except ValueError as exc:
        return _fail(_with_flag_names(str(exc)))
    try:
        threads = max(1, (os.cpu_count() or 1) // args.workers)
        sessions = [AttentionSession(args.model, threads=threads, spinning=False) for _ in range(args.workers)]
    except Exception as exc:  # missing file, not ONNX, not a gainx model, ORT refusing it: all fatal
        return _fail(f"cannot load model {args.model}: {exc}")
    try:
        sock = listen(args.host, args.port)
    except OSError as exc:
        return _fail(f"cannot listen on {args.host}:{args.port}: {exc}")
    host, port = sock.getsockname()[:2]

    def ready() -> None:
        print(
            f"gainx serve: ready on http://{host}:{port} (model {args.model}, {args.workers} worker(s), "
            f"max batch {args.max_batch})",
            flush=True,
        )

    try:
        app = create_app(sessions, config, args.model, on_ready=ready)
    except ValueError as exc:
        sock.close()
        return _fail(str(exc))
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=args.log_level,
            access_log=args.access_log,
            server_header=False,
            timeout_graceful_shutdown=args.graceful_timeout,
            backlog=ACCEPT_BACKLOG,
            timeout_keep_alive=config.keep_alive_s,  # type: ignore[arg-type]  # uvicorn takes seconds as a float too
            http=guarded_protocol(config),
            loop=event_loop(),
        )
    )
    server.run(sockets=[sock])
    return 0 if server.started else 1
