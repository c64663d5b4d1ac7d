"""The model and the plain-socket clients of the serve tests."""

from __future__ import annotations

import select
import socket
import struct
import time
from pathlib import Path

import torch

from gainx.export import export_onnx
from gainx.models import build_model

CLASSES = ["cat", "dog", "bird", "fish"]
TCP_ESTABLISHED = 1  # tcpi_state of Linux's struct tcp_info


def export_small_model(path: Path) -> Path:
    """A SmallCNN (random weights, seed 0) exported for 32x32 inputs, top-3, with :data:`CLASSES`.

    Not verified against torch here (the export tests do that): the serve tests compare the server's
    answers with :class:`gainx.runtime.AttentionSession` on the same file.
    """
    torch.manual_seed(0)
    return export_onnx(
        build_model("small_cnn", len(CLASSES)),
        path,
        target_layer="features",
        classes=CLASSES,
        topk=3,
        image_size=(32, 32),
        mean=[0.5, 0.5, 0.5],
        std=[0.25, 0.25, 0.25],
        verify=False,
    )


def request(method: str, path: str, body: bytes = b"", content_type: str = "image/png") -> bytes:
    """The bytes of one HTTP/1.1 request (with a body: ``Content-Length`` and ``content_type``)."""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
    if body:
        head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


def non_reader(port: int, data: bytes) -> socket.socket:
    """A client that sends ``data`` (requests, pipelined) with a small receive buffer and never reads.

    A connection the server has already refused is returned as it is (sending may fail on it).
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    try:
        sock.sendall(data)
    except OSError:  # reset by the server's connection cap
        pass
    return sock


def wait_readable(socks: list[socket.socket], timeout: float) -> bool:
    """Wait until every socket has an answer byte or the server's close to read; whether all did in time."""
    waiting, deadline = list(socks), time.monotonic() + timeout
    while waiting and (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(waiting, [], [], left)
        waiting = [s for s in waiting if s not in ready]
    return not waiting


def established(sock: socket.socket) -> bool:
    """Whether the connection is still open both ways (Linux ``TCP_INFO``; a server's reset or FIN ends it)."""
    return struct.unpack("B", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0] == TCP_ESTABLISHED


def wait_closed(socks: list[socket.socket], timeout: float) -> list[bool]:
    """For each socket, whether the server ended its connection within ``timeout`` s (nothing is read)."""
    deadline = time.monotonic() + timeout
    while any(established(s) for s in socks) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [not established(s) for s in socks]


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends on ``sock`` until it closes the connection."""
    answer = b""
    while part := sock.recv(65536):
        answer += part
    return answer
