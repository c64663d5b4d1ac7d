"""End to end: `python -m gainx.serve` in a subprocess on a loopback port, spoken to over HTTP.

The model is a SmallCNN exported with gainx.export (random weights, 32x32);
answers are compared with gainx.runtime.AttentionSession on the same image.
Hostile clients (idle and half-sent connections, dripped bodies, huge answers,
long queries, clients that leave) are plain sockets on 127.0.0.1, in bounded
numbers (at most 200 connections) and for a few seconds each.
"""

from __future__ import annotations

import asyncio
import functools
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from image_helpers import encode, image_bytes, noise, png_pixels, png_with_header  # tests/ on sys.path
from PIL import Image
from serve_helpers import CLASSES, export_small_model

from gainx.data.decode import read_image
from gainx.runtime import AttentionSession
from gainx.serve.testing import REPO
from gainx.serve.testing import ServerProcess as Server
from gainx.viz import heatmap

BODY_LIMIT = 300_000
FILE_LIMIT, MAX_CONNECTIONS = 144, 48  # 200 hostile sockets exceed the server's open-file limit
# uvicorn re-raises the SIGTERM it handled once the graceful shutdown is done
GRACEFUL_EXIT = (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_small_model(tmp_path_factory.mktemp("serve_model") / "small.onnx")


@pytest.fixture(scope="module")
def session(model_path: Path) -> AttentionSession:
    return AttentionSession(model_path)


@pytest.fixture(scope="module")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    srv = Server(
        model_path,
        tmp_path_factory.mktemp("serve_log") / "server.log",
        "--workers",
        "2",
        "--max-batch",
        "8",
        "--max-body-bytes",
        str(BODY_LIMIT),
        "--max-image-pixels",
        "1000000",
        "--body-timeout",
        "3",
        "--topk",
        "2",
        "--image-threads",
        "3",
        "--body-deadline",
        "5",
        "--header-timeout",
        "1",
        "--max-connections",
        str(MAX_CONNECTIONS),
        "--max-request-pixels",
        "2000000",
        file_limit=FILE_LIMIT,
    )
    yield srv
    assert srv.stop() in GRACEFUL_EXIT, srv.output()
    assert "Traceback" not in srv.output(), srv.output()


@pytest.fixture
def client(server: Server):
    with httpx.Client(base_url=server.url, timeout=30) as c:
        yield c


def reference(session: AttentionSession, data: bytes, class_ids=None):
    x = session.preprocess(Image.open(io.BytesIO(data)))[None]
    return session.run(x, None if class_ids is None else np.array([class_ids], np.int64))


def assert_matches(result: dict, ref, k: int, session: AttentionSession) -> None:
    """``result`` (one image's JSON) equals the session's output ``ref`` for its first k classes."""
    preds = result["predictions"]
    assert [p["class_id"] for p in preds] == ref.classes[0, :k].tolist()
    assert [p["name"] for p in preds] == [session.classes[c] for c in ref.classes[0, :k]]
    logits = ref.scores[0].astype(np.float64)
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()  # softmax: not a multi-label model
    np.testing.assert_allclose([p["logit"] for p in preds], logits[ref.classes[0, :k]], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([p["probability"] for p in preds], probs[ref.classes[0, :k]], rtol=1e-5, atol=1e-6)
    for j, p in enumerate(preds):
        raw = np.asarray(p["attention"], np.float32)
        np.testing.assert_allclose(raw, ref.attention[0, j], rtol=0, atol=1e-5)
        np.testing.assert_array_equal(png_pixels(p["heatmap_png"]), heatmap(raw))


# ---------------------------------------------------------------- valid requests
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_raw_body_matches_session(client, session, fmt: str) -> None:
    data = image_bytes(1, fmt=fmt)
    r = client.post("/v1/predict?raw=true", content=data, headers={"content-type": f"image/{fmt.lower()}"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"], body["input_size"], body["attention_size"]) == (40, 28, [32, 32], [32, 32])
    assert len(body["predictions"]) == 2  # the server's --topk
    assert_matches(body, reference(session, data), 2, session)


def test_exif_rotated_jpeg_is_read_as_stored(client, session, tmp_path: Path) -> None:
    """A JPEG whose EXIF tag rotates it gets the answer of ``gainx attention``'s decode: the stored pixels."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    path.write_bytes(encode(noise((40, 28)), "JPEG", exif=exif.tobytes()))
    r = client.post("/v1/predict?raw=true", content=path.read_bytes(), headers={"content-type": "image/jpeg"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (40, 28)
    assert_matches(body, session.run(session.preprocess(read_image(path, "test"))[None]), 2, session)


def test_multipart_topk_overlay_and_raw_size(client, session) -> None:
    data = image_bytes(2, size=(64, 64))
    r = client.post("/v1/predict?topk=3&overlay=true&raw=9,13", files={"file": ("a.png", data, "image/png")})
    assert r.status_code == 200, r.text
    body, ref = r.json(), reference(session, data)
    assert body["source"] == "file 'a.png'" and body["attention_size"] == [9, 13]
    assert [p["class_id"] for p in body["predictions"]] == ref.classes[0].tolist()
    for j, p in enumerate(body["predictions"]):
        want = torch.nn.functional.interpolate(
            torch.from_numpy(ref.attention[:, j : j + 1]), size=(9, 13), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        np.testing.assert_allclose(np.asarray(p["attention"], np.float32), want, atol=1e-5)
        assert png_pixels(p["overlay_png"]).shape == (32, 32, 3)


def test_explicit_classes(client, session) -> None:
    data = image_bytes(3)
    r = client.post("/v1/predict?classes=fish,cat,fish&raw=1", content=data, headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    assert_matches(r.json(), reference(session, data, [3, 0, 3]), 3, session)


def test_heatmap_can_be_left_out(client) -> None:
    r = client.post("/v1/predict?heatmap=false", content=image_bytes(4), headers={"content-type": "image/png"})
    assert r.status_code == 200
    assert all(set(p) == {"class_id", "name", "probability", "logit"} for p in r.json()["predictions"])


def test_batch_endpoint_keeps_order(client, session) -> None:
    datas = [image_bytes(10 + i, size=(20 + 7 * i, 30), fmt="PNG" if i % 2 else "JPEG") for i in range(5)]
    files = [("file" if i % 2 else "files", (f"im{i}", d)) for i, d in enumerate(datas)]
    r = client.post("/v1/predict/batch?raw=true", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["source"] for res in results] == [f"file #{i} 'im{i}'" for i in range(5)]
    for res, data in zip(results, datas):
        assert_matches(res, reference(session, data), 2, session)


def test_model_health_and_metrics(client, session, model_path) -> None:
    assert client.get("/healthz").json()["status"] == "ok"
    info = client.get("/v1/model").json()
    assert info["classes"] == CLASSES and info["image_size"] == [32, 32] and info["topk"] == 3
    graph = info["graph"]
    inputs = {i["name"]: (i["dtype"], i["optional"]) for i in graph["inputs"]}
    assert inputs == {"images": ("float32", False), "class_ids": ("int64", True)}
    assert [o["name"] for o in graph["outputs"]] == ["scores", "classes", "attention"]
    assert graph["metadata"]["gainx.classes"] and info["server"]["workers"] == 2
    assert info["file"] == "small.onnx" and str(model_path.parent) not in json.dumps(info)  # no server paths
    assert info["server"]["image_threads"] == 3
    client.post("/v1/predict", content=b"junk", headers={"content-type": "image/png"})
    client.post("/v1/predict", content=image_bytes(5), headers={"content-type": "image/png"})
    text = client.get("/metrics").text
    assert re.search(r'gainx_requests_total\{endpoint="/v1/predict",method="POST",status="400"\} [1-9]', text)
    assert re.search(r'gainx_requests_total\{endpoint="/v1/predict",method="POST",status="200"\} [1-9]', text)
    assert re.search(r'gainx_request_duration_seconds_count\{endpoint="/v1/predict"\} [1-9]', text)
    assert re.search(r"gainx_batch_size_count [1-9]", text)
    client.request("PROPFIND", "/no/such/path")  # unbounded label values are folded into "other"
    assert 'gainx_requests_total{endpoint="other",method="other",status="404"} 1' in client.get("/metrics").text


# ---------------------------------------------------------------- bad input
def truncated() -> bytes:
    data = image_bytes(6, size=(64, 64), fmt="JPEG")
    return data[: len(data) // 2]


def gif() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="GIF")
    return buf.getvalue()


BAD = [
    # (name, path, kwargs for httpx, status, code)
    (
        "non-image",
        "/v1/predict",
        dict(content=b"not an image at all", headers={"content-type": "image/jpeg"}),
        400,
        "not_an_image",
    ),
    (
        "truncated",
        "/v1/predict",
        dict(content=truncated(), headers={"content-type": "image/jpeg"}),
        400,
        "image_truncated",
    ),
    (
        "zero width",
        "/v1/predict",
        dict(content=png_with_header(0, 30), headers={"content-type": "image/png"}),
        400,
        "corrupt_image",
    ),
    (
        "bomb",
        "/v1/predict",
        dict(content=png_with_header(50_000, 50_000), headers={"content-type": "image/png"}),
        422,
        "image_too_large",
    ),
    ("gif", "/v1/predict", dict(content=gif(), headers={"content-type": "image/png"}), 415, "unsupported_image_format"),
    ("empty body", "/v1/predict", dict(content=b"", headers={"content-type": "image/png"}), 400, "empty_image"),
    (
        "text/plain",
        "/v1/predict",
        dict(content=image_bytes(7), headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    ),
    ("no content type", "/v1/predict", dict(content=image_bytes(7)), 415, "unsupported_media_type"),
    ("json", "/v1/predict", dict(json={"file": "x"}), 415, "unsupported_media_type"),
    ("wrong field", "/v1/predict", dict(files={"image": ("a.png", image_bytes(8))}), 400, "unexpected_field"),
    ("text field", "/v1/predict", dict(files={"file": (None, "hello")}), 400, "unexpected_field"),
    (
        "two files",
        "/v1/predict",
        dict(files=[("file", ("a", image_bytes(8))), ("file", ("b", image_bytes(9)))]),
        400,
        "too_many_files",
    ),
    (
        "no boundary",
        "/v1/predict",
        dict(content=b"--x\r\n", headers={"content-type": "multipart/form-data"}),
        400,
        "bad_multipart",
    ),
    (
        "unterminated multipart",
        "/v1/predict",
        dict(
            content=b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n' + image_bytes(7),
            headers={"content-type": "multipart/form-data; boundary=xx"},
        ),
        400,
        "bad_multipart",
    ),
    (
        "empty boundary",
        "/v1/predict",
        dict(
            content=b'--\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\nx\r\n----\r\n',
            headers={"content-type": "multipart/form-data; boundary="},
        ),
        400,
        "bad_multipart",
    ),
    (
        "no file",
        "/v1/predict/batch",
        dict(content=b"--xx--\r\n", headers={"content-type": "multipart/form-data; boundary=xx"}),
        400,
        "missing_file",
    ),
    (
        "bad file in batch",
        "/v1/predict/batch",
        dict(files=[("file", ("ok", image_bytes(8))), ("file", ("bad", b"junk"))]),
        400,
        "not_an_image",
    ),
    (
        "unknown param",
        "/v1/predict?top_k=2",
        dict(content=image_bytes(7), headers={"content-type": "image/png"}),
        400,
        "bad_parameter",
    ),
    (
        "topk too big",
        "/v1/predict?topk=4",
        dict(content=image_bytes(7), headers={"content-type": "image/png"}),
        400,
        "bad_parameter",
    ),
    (
        "superscript topk",
        "/v1/predict?topk=%C2%B2",
        dict(content=image_bytes(7), headers={"content-type": "image/png"}),
        400,
        "bad_parameter",
    ),
    (
        "more classes than the model",
        "/v1/predict?classes=0,1,2,3,0",
        dict(content=image_bytes(7), headers={"content-type": "image/png"}),
        400,
        "bad_parameter",
    ),
    (
        "raw maps over the request budget",
        "/v1/predict/batch?raw=1024,1024&topk=3",
        dict(files=[("file", ("a", image_bytes(8))), ("file", ("b", image_bytes(9)))]),
        400,
        "raw_too_large",
    ),
    (
        "pixels over the request budget",
        "/v1/predict/batch",
        dict(files=[("file", (str(i), png_with_header(1000, 1000))) for i in range(3)]),
        422,
        "request_too_large",
    ),
    (
        "long query",
        "/v1/predict?" + "&".join(f"p{i}=1" for i in range(1500)),
        dict(content=image_bytes(7), headers={"content-type": "image/png"}),
        414,
        "query_too_long",
    ),
    (
        "many parameters",
        "/v1/predict?" + "&".join(f"p{i}" for i in range(100)),
        dict(content=image_bytes(7), headers={"content-type": "image/png"}),
        400,
        "too_many_parameters",
    ),
    (
        "unknown class",
        "/v1/predict?classes=horse",
        dict(content=image_bytes(7), headers={"content-type": "image/png"}),
        400,
        "bad_parameter",
    ),
    (
        "over the limit",
        "/v1/predict",
        dict(content=b"\xff\xd8\xff" + bytes(BODY_LIMIT), headers={"content-type": "image/jpeg"}),
        413,
        "body_too_large",
    ),
    ("GET predict", "/v1/predict", dict(method="GET"), 405, "method_not_allowed"),
    ("unknown path", "/v2/predict", dict(content=b""), 404, "not_found"),
]


@pytest.mark.parametrize("name,path,kwargs,status,code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gives_clear_4xx(client, name, path, kwargs, status, code) -> None:
    kwargs = dict(kwargs)
    r = client.request(kwargs.pop("method", "POST"), path, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["status"] == status and error["code"] == code and len(error["message"]) > 10
    assert client.get("/healthz").status_code == 200


def raw_exchange(port: int, head: bytes, chunks=(), read_timeout: float = 10) -> tuple[int, bytes, float]:
    """Send ``head`` then ``chunks`` on a plain socket; return (status, response, seconds to the answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        start = time.perf_counter()
        sock.sendall(head)
        for chunk in chunks:
            sock.sendall(chunk)
        response = b""
        while b"\r\n\r\n" not in response or not response.rstrip().endswith(b"}"):
            part = sock.recv(65536)
            if not part:
                break
            response += part
        return int(response.split(b" ", 2)[1]), response, time.perf_counter() - start


def test_declared_oversized_body_refused_before_reading(server) -> None:
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000000000\r\n\r\n"
    status, response, seconds = raw_exchange(server.port, head, [b"\xff\xd8\xff" + bytes(1000)])
    assert status == 413 and b"body_too_large" in response and seconds < 5


def test_streamed_oversized_body_refused_midway(server) -> None:
    """Chunked upload with no Content-Length: refused once the limit is crossed, the rest never sent."""
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nTransfer-Encoding: chunked\r\n\r\n"
    piece = 100_000
    chunks = [b"%x\r\n" % piece + bytes(piece) + b"\r\n" for _ in range(4)]  # 400 kB > limit, no final 0-chunk
    status, response, _ = raw_exchange(server.port, head, chunks)
    assert status == 413 and b"body_too_large" in response


def test_stalled_body_times_out(server) -> None:
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n"
    status, response, seconds = raw_exchange(server.port, head, [b"\x89PNG\r\n\x1a\n"])
    assert status == 408 and b"body_timeout" in response and 1.0 < seconds < 10


def test_no_internals_in_errors(client) -> None:
    """A 4xx message names the problem in the client's terms: no exception class, node or path of the server."""
    for query in ("topk=%C2%B2", "classes=0,1,2,3,0"):
        r = client.post(f"/v1/predict?{query}", content=image_bytes(7), headers={"content-type": "image/png"})
        assert r.status_code == 400
        assert not re.search(r"Traceback|onnxruntime|Node|ValueError|/", r.json()["error"]["message"]), r.text


def test_large_answer_is_encoded_off_the_event_loop(server) -> None:
    """2M raw values (~40 MB of JSON, seconds to encode): /healthz, polled from another thread, keeps answering.

    Encoded on the event loop, one /healthz would wait about as long as the
    whole big request; the bound is relative so that a loaded machine, which
    slows both, does not fail it.
    """
    waits: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            while not done.is_set():
                start = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                waits.append(time.perf_counter() - start)
                time.sleep(0.05)

    poller = threading.Thread(target=poll)
    poller.start()
    try:
        start = time.perf_counter()
        big = httpx.post(
            f"{server.url}/v1/predict?raw=1024,1024&heatmap=false",
            content=image_bytes(40),
            headers={"content-type": "image/png"},
            timeout=120,
        )
        seconds = time.perf_counter() - start
    finally:
        done.set()
        poller.join()
    assert big.status_code == 200, big.text[:300]
    maps = [np.asarray(p["attention"], np.float32) for p in big.json()["predictions"]]
    assert [m.shape for m in maps] == [(1024, 1024)] * 2
    assert len(waits) >= 5 and max(waits) < seconds / 4, (
        f"/healthz waited {max(waits):.2f} s during a {seconds:.2f} s request"
    )


def _closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` s (EOF or reset), without sending an answer."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_idle_and_half_sent_connections_are_cut_and_healthz_answers(server) -> None:
    """200 sockets (more than the server's open-file limit) that send nothing or half a request head.

    The connection cap closes the longest-idle ones so /healthz gets in; the
    header deadline (1 s) closes the rest.
    """
    hostile = []
    for i in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        if i % 2:
            sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: im")
        hostile.append(sock)
    try:
        r = httpx.get(f"{server.url}/healthz", timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "ok"
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as kept:  # a kept-alive connection
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while not answer.endswith(b"}"):
                answer += kept.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200")
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHos")  # the next head stalls
            assert _closed_by_server(kept, 5)
        assert all(_closed_by_server(sock, 5) for sock in hostile)
    finally:
        for sock in hostile:
            sock.close()
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200


def test_dripped_body_is_cut_by_the_total_deadline(server) -> None:
    """One byte every 0.5 s never trips the 3 s gap timeout, but the whole body may take only 5 s."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        start = time.perf_counter()
        sock.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n")
        sock.settimeout(0.5)
        response = b""
        while time.perf_counter() - start < 15 and not response:
            try:
                sock.sendall(b"\x89")
                response = sock.recv(65536)
            except TimeoutError:
                continue
        seconds = time.perf_counter() - start
        sock.settimeout(5)
        while response and b"\r\n\r\n{" not in response:  # the JSON body can arrive after the headers
            more = sock.recv(65536)
            if not more:
                break
            response += more
    assert response.startswith(b"HTTP/1.1 408") and b"body_deadline" in response, response
    assert seconds < 10


@pytest.fixture(scope="module")
def one_thread_server(model_path: Path, tmp_path_factory: pytest.TempPathFactory):
    """One decoding thread and one model worker, large images allowed: decoding is the bottleneck."""
    with Server(
        model_path,
        tmp_path_factory.mktemp("serve_log") / "server.log",
        "--image-threads",
        "1",
        "--workers",
        "1",
        "--max-image-pixels",
        "4000000",
        "--max-body-bytes",
        "50000000",
    ) as srv:
        yield srv


@functools.cache
def large_png() -> bytes:
    """A 2000x2000 PNG that compresses well (tens of KB) but takes tens of ms to decode."""
    ramp = np.add.outer(np.arange(2000) % 7, np.arange(2000) % 251).astype(np.uint8)
    return encode(Image.fromarray(np.stack([ramp] * 3, -1)), "PNG", compress_level=1)


def test_small_request_is_not_stuck_behind_a_large_one(one_thread_server) -> None:
    """8 large images then, 0.1 s later, 1 small one: the small answer comes first (decoding is shared fairly)."""
    big = [("file", (f"big{i}.png", large_png())) for i in range(8)]
    finished: list[str] = []

    async def main() -> None:
        async with httpx.AsyncClient(base_url=one_thread_server.url, timeout=60) as client:

            async def post(name: str, delay: float, **kwargs) -> None:
                await asyncio.sleep(delay)
                r = await client.post("/v1/predict/batch", **kwargs)
                assert r.status_code == 200, r.text
                finished.append(name)

            await asyncio.gather(post("large", 0, files=big), post("small", 0.1, files={"file": ("s", image_bytes(1))}))

    asyncio.run(main())
    assert finished == ["small", "large"]


def _metric(url: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", httpx.get(f"{url}/metrics").text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def test_work_of_clients_that_left_is_dropped(one_thread_server) -> None:
    """60 clients send a large image each and hang up after 0.3 s: most images never reach the model."""
    url = one_thread_server.url
    before = _metric(url, "gainx_images_total"), _metric(url, "gainx_abandoned_images_total")
    body = large_png()
    head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: %d\r\n\r\n" % len(body)
    sockets = [socket.create_connection(("127.0.0.1", one_thread_server.port), timeout=10) for _ in range(60)]
    for sock in sockets:
        sock.sendall(head + body)
    time.sleep(0.3)
    for sock in sockets:
        sock.close()
    deadline = time.monotonic() + 30
    while True:  # every image is either run or dropped, once the queue has drained
        ran, dropped = (
            _metric(url, "gainx_images_total") - before[0],
            _metric(url, "gainx_abandoned_images_total") - before[1],
        )
        if ran + dropped >= 60 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ran + dropped == 60 and ran < 30 <= dropped, (ran, dropped)
    assert httpx.get(f"{url}/healthz").status_code == 200


# ---------------------------------------------------------------- load and shutdown
def test_1000_mixed_requests_from_32_clients(server, session) -> None:
    good = image_bytes(20, size=(50, 50))
    good_jpeg = image_bytes(21, fmt="JPEG")
    kinds = [
        (lambda: dict(content=good, headers={"content-type": "image/png"}), "/v1/predict", 200),
        (lambda: dict(files={"file": ("j.jpg", good_jpeg)}), "/v1/predict?overlay=1", 200),
        (lambda: dict(files=[("file", ("a", good)), ("file", ("b", good_jpeg))]), "/v1/predict/batch", 200),
        (lambda: dict(content=b"garbage" * 10, headers={"content-type": "image/png"}), "/v1/predict", 400),
        (lambda: dict(content=truncated(), headers={"content-type": "image/jpeg"}), "/v1/predict", 400),
        (lambda: dict(content=good, headers={"content-type": "text/plain"}), "/v1/predict", 415),
        (lambda: dict(content=good, headers={"content-type": "image/png"}), "/v1/predict?topk=99", 400),
        (lambda: dict(content=png_with_header(0, 1), headers={"content-type": "image/png"}), "/v1/predict", 400),
    ]
    plan = [kinds[i % len(kinds)] for i in np.random.default_rng(0).permutation(1000)]
    top = reference(session, good).classes[0, :2].tolist()

    async def main() -> list[tuple[int, int, dict]]:
        results: list[tuple[int, int, dict]] = []
        queue = list(enumerate(plan))
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as client:

            async def worker() -> None:
                while queue:
                    i, (make, path, _) = queue.pop()
                    r = await client.post(path, **make())
                    results.append((i, r.status_code, r.json()))

            await asyncio.gather(*(worker() for _ in range(32)))
        return results

    results = asyncio.run(main())
    assert sorted(i for i, _, _ in results) == list(range(1000)), "lost responses"
    assert not [s for _, s, _ in results if s >= 500]
    for i, status, body in results:
        assert status == plan[i][2], (plan[i][1], status, body)
        if plan[i][1] == "/v1/predict" and status == 200:
            assert [p["class_id"] for p in body["predictions"]] == top
    metrics = httpx.get(f"{server.url}/metrics").text
    batches = float(re.search(r"gainx_batch_size_count (\d+)", metrics)[1])
    single = float(re.search(r'gainx_batch_size_bucket\{le="1.0"\} (\d+)', metrics)[1])
    assert single < batches, "concurrent requests were never batched"


def test_sigterm_finishes_in_flight_requests(model_path, session, tmp_path) -> None:
    srv = Server(model_path, tmp_path / "server.log", "--max-wait-ms", "1")
    data = image_bytes(30, size=(48, 48))

    async def main():
        gate = asyncio.Event()

        async def slow_body():
            yield data[:100]
            await gate.wait()
            yield data[100:]

        async with httpx.AsyncClient(base_url=srv.url, timeout=30) as client:
            slow = asyncio.create_task(
                client.post(
                    "/v1/predict",
                    content=slow_body(),
                    headers={"content-type": "image/png", "content-length": str(len(data))},
                )
            )
            quick = [
                asyncio.create_task(client.post("/v1/predict", content=data, headers={"content-type": "image/png"}))
                for _ in range(6)
            ]
            await asyncio.sleep(0.5)  # all requests are in flight; the slow one is mid-body
            srv.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            assert srv.proc.poll() is None, "the server quit with a request in flight"
            gate.set()
            return await slow, await asyncio.gather(*quick)

    slow, quick = asyncio.run(main())
    for r in (slow, *quick):
        assert r.status_code == 200, r.text
        assert [p["class_id"] for p in r.json()["predictions"]] == reference(session, data).classes[0].tolist()
    assert srv.proc.wait(30) in GRACEFUL_EXIT, srv.output()
    assert "Traceback" not in srv.output(), srv.output()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{srv.url}/healthz")


# ---------------------------------------------------------------- start-up failures
def garbage_file(tmp: Path) -> Path:
    (tmp / "garbage.onnx").write_bytes(b"this is not a protobuf")
    return tmp / "garbage.onnx"


def plain_onnx(tmp: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]))
    onnx.save(model, tmp / "plain.onnx")
    return tmp / "plain.onnx"


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda tmp: tmp / "missing.onnx", "not found"),
        (garbage_file, "cannot load"),
        (plain_onnx, "not a gainx attention model"),
    ],
)
def test_model_that_fails_to_load_stops_startup(tmp_path, make, needle) -> None:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, "-m", "gainx.serve", str(make(tmp_path)), "--port", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "gainx serve: error: cannot load model" in proc.stderr and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# a serving process that answers real requests, then reports whether torch was ever imported
_SERVE_WITHOUT_TORCH = """
import io, sys
from PIL import Image
from starlette.testclient import TestClient
from gainx.runtime import AttentionSession
from gainx.serve.app import create_app

model = sys.argv[1]
app = create_app([AttentionSession(model)], model_path=model)
with TestClient(app) as client:
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.new("RGB", (40, 28), (200, 30, 90)).save(buf, format=fmt)
        r = client.post("/v1/predict?overlay=true&raw=9,13", content=buf.getvalue(),
                        headers={"content-type": "image/" + fmt.lower()})
        assert r.status_code == 200, r.text
        assert {"heatmap_png", "overlay_png", "attention"} <= set(r.json()["predictions"][0]), r.text
print("torch" in sys.modules)
"""


def test_serving_requests_never_imports_torch(model_path) -> None:
    """Decoding, preprocessing, the model call and rendering (heatmap, overlay, raw maps) run without torch."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", _SERVE_WITHOUT_TORCH, str(model_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stdout + out.stderr
