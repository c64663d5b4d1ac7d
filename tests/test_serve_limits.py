"""The server's deadlines and budgets against clients that never read, memory-hungry request mixes and
ambiguous requests: `python -m gainx.serve` in a subprocess, plain sockets on 127.0.0.1.

A client that never reads is a socket with a 4 KB receive buffer that sends a request whose answer
(raw maps, about 3.5 MB of JSON) is larger than what the kernel buffers on loopback (about 2.8 MB),
so the rest waits in the server's write buffer. Connection counts stay small (at most 40) and every wait
is bounded by a few seconds.
"""

from __future__ import annotations

import concurrent.futures
import functools
import re
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from image_helpers import encode, image_bytes, noise  # tests/ on sys.path
from PIL import Image
from serve_helpers import export_small_model, non_reader, read_answer, request, wait_closed, wait_readable

from gainx.serve.testing import ServerProcess

# answers of about 3.5 MB: three 288x288 raw maps
BIG = request("POST", "/v1/predict?raw=288,288&topk=3&heatmap=false", image_bytes(1))
HEALTHZ = request("GET", "/healthz")
CAP = 4


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small_model(tmp_path_factory.mktemp("serve_model") / "small.onnx")


def start(model_path: Path, folder: Path, *flags: str, env: dict[str, str] | None = None) -> ServerProcess:
    """A server on a free port whose log is ``folder/server.log`` (``env``: more environment variables)."""
    folder.mkdir(parents=True, exist_ok=True)
    return ServerProcess(model_path, folder / "server.log", *flags, env=env)


@pytest.fixture(scope="module")
def capped(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """A server with a cap of 4 connections and otherwise default limits (a 30 s send deadline)."""
    with start(model_path, tmp_path_factory.mktemp("capped"), "--max-connections", str(CAP)) as srv:
        yield srv
    assert "Traceback" not in srv.output(), srv.output()


def healthz(server: ServerProcess) -> int:
    return httpx.get(f"{server.url}/healthz", timeout=5).status_code


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        sock.close()


# ---------------------------------------------------------------- clients that never read
def test_pipelining_non_readers_cannot_lock_out_healthz(capped) -> None:
    """40 clients pipeline a large answer and a /healthz and never read: every slot under the cap of 4
    holds a connection whose second answer waits on its client. A new /healthz is still answered (the
    writer waiting longest on its client is aborted for it), long before the 30 s send deadline."""
    hostile = [non_reader(capped.port, BIG + HEALTHZ) for _ in range(40)]
    try:
        assert wait_readable(hostile, 30), "the large answers were not sent"
        assert healthz(capped) == 200
    finally:
        close_all(hostile)


def probe_healthz(port: int) -> bytes:
    """The server's whole answer to one ``GET /healthz`` on a new connection it closes (b"" when refused)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return read_answer(sock)
        except ConnectionError:  # reset by the server's connection cap
            return b""


def test_clients_dripping_request_bodies_cannot_lock_out_healthz(capped) -> None:
    """As many clients as the cap of 4 each send a request head declaring a 100 kB body, then 4 bytes of it,
    and wait: none of their connections is idle, none waits on its client to read. Three /healthz in a row
    are still answered, long before the 30 s body timeout: for the first, the connection whose body has
    waited longest for a byte (the oldest) is closed; the next two fit under the cap.

    Each client asks for ``100-continue`` only to learn that the server has read its head and waits for
    its body (the server's ``100 Continue``) before the next client comes."""
    head = request("POST", "/v1/predict", bytes(100_000))[:-100_000]
    head = head.replace(b"\r\n\r\n", b"\r\nExpect: 100-continue\r\n\r\n")
    drippers: list[socket.socket] = []
    try:
        for _ in range(CAP):
            sock = socket.create_connection(("127.0.0.1", capped.port), timeout=10)
            drippers.append(sock)
            sock.sendall(head)
            assert sock.recv(65536).startswith(b"HTTP/1.1 100"), "the server did not start reading the body"
            sock.sendall(b"\x89PNG")
        answers = [probe_healthz(capped.port) for _ in range(3)]
        assert all(a.startswith(b"HTTP/1.1 200") for a in answers), answers
        assert wait_closed(drippers[:1], 3) == [True], "the oldest reader was not closed"
        assert not any(wait_closed(drippers[1:], 0)), "more readers than needed were closed"
    finally:
        close_all(drippers)


def test_idle_connection_with_unsent_answer_is_aborted_and_leaves_the_idle_list(capped) -> None:
    """A client that reads none of a finished large answer holds an idle connection with unsent bytes.

    Evicted by the cap it is aborted (a polite close would wait forever for the flush), and the next
    eviction closes the next connection idle the longest instead of picking the stuck one again.
    """
    stuck = non_reader(capped.port, BIG)
    kept: list[socket.socket] = []
    try:
        assert wait_readable([stuck], 30), "the large answer was not sent"
        for _ in range(CAP):  # the last one makes CAP + 1 connections: the stuck one, idle longest, goes
            sock = socket.create_connection(("127.0.0.1", capped.port), timeout=5)
            sock.sendall(HEALTHZ)
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            kept.append(sock)
        assert wait_closed([stuck], 3) == [True], "the stuck connection was not aborted"
        newest = socket.create_connection(("127.0.0.1", capped.port), timeout=5)  # CAP + 1 again
        kept.append(newest)
        assert wait_closed([kept[0]], 3) == [True], "the oldest idle connection was not closed"
        assert not any(wait_closed(kept[1:], 0))
    finally:
        close_all([stuck, *kept])


@pytest.fixture(scope="module")
def impatient(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """Tight limits: a 1 s send deadline, 4 Mpx decoded at a time, 600 kB of request bodies in flight."""
    flags = ["--send-timeout", "1", "--max-image-pixels", "4000000", "--max-pixels-in-flight", "4000000"]
    flags += ["--max-body-bytes", "300000", "--max-body-bytes-in-flight", "600000", "--image-threads", "4"]
    with start(model_path, tmp_path_factory.mktemp("impatient"), *flags) as srv:
        yield srv
    assert "Traceback" not in srv.output(), srv.output()


def test_send_deadline_aborts_writers_whose_clients_never_read(impatient) -> None:
    """Connections whose answers make no progress for the 1 s send deadline are aborted (within 1.25 s)."""
    hostile = [non_reader(impatient.port, BIG + HEALTHZ) for _ in range(3)]
    try:
        assert wait_readable(hostile, 30), "the large answers were not sent"
        assert all(wait_closed(hostile, 4)), "a connection whose client never reads was kept"
        assert healthz(impatient) == 200
    finally:
        close_all(hostile)


def test_unsent_answer_bytes_are_bounded_across_connections(model_path: Path, tmp_path: Path) -> None:
    """4 clients leave about 0.7 MB each of their answers unsent (a 30 s send deadline, so it does not act):
    past the 1.5 MB budget the writers waiting longest are aborted, so at most two answers stay buffered."""
    with start(model_path, tmp_path, "--max-buffered-bytes", "1500000") as srv:
        hostile = [non_reader(srv.port, BIG) for _ in range(4)]
        try:
            assert wait_readable(hostile, 30), "the large answers were not sent"
            aborted = wait_closed(hostile, 3)
            assert sum(aborted) >= 2, aborted
            assert healthz(srv) == 200
        finally:
            close_all(hostile)
    assert "Traceback" not in srv.output(), srv.output()


# ---------------------------------------------------------------- memory per request
@functools.cache
def large_png() -> bytes:
    """A 2000x2000 PNG (4 Mpx, 12 MB decoded) of a few tens of KB."""
    ramp = np.add.outer(np.arange(2000) % 7, np.arange(2000) % 251).astype(np.uint8)
    return encode(Image.fromarray(np.stack([ramp] * 3, -1)), "PNG", compress_level=1)


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of process ``pid`` so far (Linux ``VmHWM``), in MB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)[1]) / 1024


def test_decoded_pixels_in_flight_are_bounded(model_path: Path, tmp_path: Path) -> None:
    """8 concurrent requests, each an image of 4 Mpx (12 MB decoded), with 4 decoding threads and a
    budget of 4 Mpx in flight: images are decoded one at a time and freed once preprocessed, so the
    server's peak memory grows by about one decoded image, not eight.

    The server is its own (no earlier request raised its peak) and runs with one malloc arena
    (``MALLOC_ARENA_MAX=1``): by default glibc gives each decoding thread an arena of its own, and the
    pages of an image freed in one are not reused by the next thread, which would add up to a decoded
    image per thread to the peak whatever the budget."""
    flags = ["--max-image-pixels", "4000000", "--max-pixels-in-flight", "4000000", "--image-threads", "4"]
    with start(model_path, tmp_path, *flags, env={"MALLOC_ARENA_MAX": "1"}) as srv:

        def post(_: int) -> int:
            return httpx.post(
                f"{srv.url}/v1/predict", content=large_png(), headers={"content-type": "image/png"}, timeout=60
            ).status_code

        assert post(0) == 200  # warm-up: one decoded image is part of the baseline
        before = peak_rss_mb(srv.proc.pid)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert list(pool.map(post, range(8))) == [200] * 8
        grown = peak_rss_mb(srv.proc.pid) - before
    assert "Traceback" not in srv.output(), srv.output()
    assert grown < 30, f"peak memory grew by {grown:.0f} MB for 8 concurrent 12 MB images"


def wait_for_body_bytes(server: ServerProcess, at_least: int, timeout: float = 10) -> None:
    """Wait until the server holds ``at_least`` request body bytes (its ``gainx_body_bytes_in_flight``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        if float(re.search(r"^gainx_body_bytes_in_flight (\S+)$", text, re.MULTILINE)[1]) >= at_least:
            return
        time.sleep(0.05)
    raise AssertionError(f"the server did not read {at_least} body bytes within {timeout} s")


def test_request_bodies_in_flight_are_bounded(impatient) -> None:
    """Two clients stall after 250 kB of their bodies; a third crossing the 600 kB budget gets a 503 with
    Retry-After; once the two have gone, their bytes are given back and a whole body of over 250 kB is served."""
    body = encode(noise((300, 280), seed=3), "PNG")
    assert 250_000 < len(body) < 300_000
    head = request("POST", "/v1/predict", body)[: -len(body)]
    stalled = []
    try:
        for _ in range(2):
            sock = socket.create_connection(("127.0.0.1", impatient.port), timeout=10)
            sock.sendall(head + body[:250_000])
            stalled.append(sock)
        wait_for_body_bytes(impatient, 500_000)  # both bodies read up to where they stall
        with socket.create_connection(("127.0.0.1", impatient.port), timeout=10) as third:
            third.sendall(head + body[:250_000])
            answer = b""
            while b"}}" not in answer and (part := third.recv(65536)):
                answer += part
        assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
        assert b"server_busy" in answer and re.search(rb"(?i)\r\nretry-after: 1\r\n", answer), answer
    finally:
        close_all(stalled)
    r = httpx.post(f"{impatient.url}/v1/predict", content=body, headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 200, r.text


# ---------------------------------------------------------------- ambiguous requests
def test_slash_path_is_not_redirected_with_the_clients_host(capped) -> None:
    """``/healthz/`` is a 404: no redirect whose Location would echo the client's Host header."""
    with socket.create_connection(("127.0.0.1", capped.port), timeout=5) as sock:
        sock.sendall(b"GET /healthz/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 404"), answer
    assert b"evil.example" not in answer and b"location" not in answer.lower()


def test_content_length_with_transfer_encoding_is_refused_and_closed(capped) -> None:
    """Both framing headers: 400 ``ambiguous_length``, and the connection is closed (a request smuggled
    after it is never answered)."""
    smuggled = request("GET", "/v1/model")
    body = b"0\r\n\r\n" + smuggled
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body)
    )
    with socket.create_connection(("127.0.0.1", capped.port), timeout=5) as sock:
        sock.sendall(head + body)
        answer = read_answer(sock)
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"ambiguous_length" in answer and answer.count(b"HTTP/1.1") == 1, answer


def head_of(size: int, close: bool = True) -> bytes:
    """A ``GET /healthz`` request head of ``size`` bytes (padded with one header field)."""
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + (b"Connection: close\r\n" if close else b"") + b"X-Pad: "
    return head + b"a" * (size - len(head) - 4) + b"\r\n\r\n"


@pytest.mark.parametrize("split", ["whole", "in pieces", "pipelined"])
def test_request_head_over_16_kib_is_refused_with_431(capped, split: str) -> None:
    """A head of 16 KiB + 1 byte gets 431 ``head_too_large`` and the connection is closed, whether it arrives
    in one read, in pieces, or pipelined behind a request that is answered first; one of 16 KiB is served."""
    limit = 16 * 1024
    with socket.create_connection(("127.0.0.1", capped.port), timeout=5) as sock:
        sock.sendall(head_of(limit))
        assert read_answer(sock).startswith(b"HTTP/1.1 200")
    with socket.create_connection(("127.0.0.1", capped.port), timeout=5) as sock:
        big = head_of(limit + 1)
        if split == "whole":
            sock.sendall(big)
        elif split == "in pieces":
            for start in range(0, len(big), 4096):
                sock.sendall(big[start : start + 4096])
                time.sleep(0.02)
        else:
            sock.sendall(head_of(100, close=False) + big)
        answer = read_answer(sock)
    if split == "pipelined":
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        answer = answer[answer.index(b"HTTP/1.1", 1) :]
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b"head_too_large" in answer and answer.count(b"HTTP/1.1") == 1, answer[:300]
