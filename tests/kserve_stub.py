"""A stand-in for NVIDIA Triton Inference Server: the KServe v2 HTTP endpoints a client of one model calls.

``KServeStub(repo, "gainx_attention")`` serves ``repo/<model>/1/model.onnx``
(a repository written by ``gainx export --triton-repo``) on a free loopback
port, in a thread:

* ``GET /v2/health/ready``: 200.
* ``GET /v2/models/<model>/config``: the repository's ``config.pbtxt`` as JSON
  (protobuf's JSON mapping: 64-bit dims come as strings, which Triton prints as numbers).
* ``POST /v2/models/<model>/infer``: a JSON request, or one followed by binary
  tensors (``Inference-Header-Content-Length`` gives the JSON's length; each
  input's ``binary_data_size`` its bytes). Inputs are checked against the config
  (names, datatypes, dims without the batch, batch size up to
  ``max_batch_size``, byte counts); a mismatch is a 400 ``{"error": ...}``.
  The model runs in ONNX Runtime; outputs asked with ``binary_data`` (or, where
  an output does not say, all of them when the request's parameters set
  ``binary_data_output``, as ``tritonclient`` does when it names no outputs)
  come back as binary tensors after the JSON, the others as JSON ``data``; the
  answer has ``Inference-Header-Content-Length`` only when it carries binary tensors.

Anything else is a 404. ``batches`` records the shape of each input accepted.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import np_to_triton_dtype, triton_to_np_dtype

from gainx.runtime import session_options


class RequestError(ValueError):
    """A request the server refuses (400)."""


class KServeStub:
    """The endpoints above for one model of a Triton repository; a context manager that starts and stops them.

    Attributes: ``url`` (``127.0.0.1:PORT``, as ``tritonclient`` takes it), ``config`` (the parsed
    ``ModelConfig``), ``batches`` (input shapes accepted, in order).
    """

    def __init__(self, repo: str | Path, model: str) -> None:
        folder = Path(repo) / model
        self.model = model
        self.config = text_format.Parse((folder / "config.pbtxt").read_text(), mc.ModelConfig())
        self.session = ort.InferenceSession(
            str(folder / "1" / "model.onnx"), session_options(), providers=["CPUExecutionProvider"]
        )
        self.batches: list[tuple[int, ...]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.stub = self  # type: ignore[attr-defined]
        self.url = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> KServeStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def config_json(self) -> dict[str, Any]:
        return json_format.MessageToDict(self.config, preserving_proto_field_name=True)

    def _input(self, spec: dict[str, Any], data: bytes) -> np.ndarray:
        """One request input as an array, checked against the config's declaration."""
        declared = {t.name: t for t in self.config.input}
        name, shape, datatype = spec["name"], list(spec["shape"]), spec["datatype"]
        if name not in declared:
            raise RequestError(f"unexpected inference input '{name}' for model '{self.model}'")
        want = declared[name]
        want_type = mc.DataType.Name(want.data_type).removeprefix("TYPE_")
        if datatype != want_type:
            raise RequestError(f"input '{name}': datatype {datatype}, the model takes {want_type}")
        batched = self.config.max_batch_size > 0
        dims = shape[1:] if batched else shape
        fits = len(dims) == len(want.dims) and all(d == w or w == -1 for d, w in zip(dims, want.dims))
        if not fits or (batched and not 1 <= shape[0] <= self.config.max_batch_size):
            raise RequestError(
                f"input '{name}': shape {shape}, the model takes [-1, *{list(want.dims)}] "
                f"with batches up to {self.config.max_batch_size}"
            )
        dtype = np.dtype(triton_to_np_dtype(datatype))
        if len(data) != int(np.prod(shape)) * dtype.itemsize:
            raise RequestError(f"input '{name}': {len(data)} bytes for shape {shape} of {datatype}")
        return np.frombuffer(data, dtype).reshape(shape)

    def infer(self, body: bytes, header_length: int | None) -> tuple[bytes, int | None]:
        """The answer body to an inference request and the length of its JSON part (None: no binary part)."""
        request = json.loads(body[:header_length] if header_length is not None else body)
        binary = body[header_length:] if header_length is not None else b""
        feeds, offset = {}, 0
        for spec in request["inputs"]:
            size = spec.get("parameters", {}).get("binary_data_size")
            if size is None:
                raise RequestError(f"input '{spec['name']}': only binary tensor data is supported here")
            feeds[spec["name"]] = self._input(spec, binary[offset : offset + size])
            offset += size
        missing = {t.name for t in self.config.input} - feeds.keys()
        if missing or offset != len(binary):
            raise RequestError(f"inputs missing {sorted(missing)} or {len(binary) - offset} stray bytes")
        asked = request.get("outputs") or [{"name": t.name} for t in self.config.output]
        all_binary = bool(request.get("parameters", {}).get("binary_data_output", False))
        names = [o["name"] for o in asked]
        unknown = set(names) - {t.name for t in self.config.output}
        if unknown:
            raise RequestError(f"unexpected inference output {sorted(unknown)}")
        self.batches.extend(tuple(x.shape) for x in feeds.values())
        arrays = self.session.run(names, feeds)
        outputs, tail = [], b""
        for spec, array in zip(asked, arrays):
            entry = {"name": spec["name"], "datatype": np_to_triton_dtype(array.dtype), "shape": list(array.shape)}
            if spec.get("parameters", {}).get("binary_data", all_binary):
                raw = np.ascontiguousarray(array).tobytes()
                entry["parameters"] = {"binary_data_size": len(raw)}
                tail += raw
            else:
                entry["data"] = array.ravel().tolist()
            outputs.append(entry)
        head = json.dumps({"model_name": self.model, "model_version": "1", "outputs": outputs}).encode()
        return head + tail, len(head) if tail else None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient's connection pool expects

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, header_length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if header_length is None else "application/octet-stream")
        if header_length is not None:
            self.send_header("Inference-Header-Content-Length", str(header_length))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, json.dumps({"error": message}).encode())

    def do_GET(self) -> None:
        stub: KServeStub = self.server.stub  # type: ignore[attr-defined]
        if self.path == "/v2/health/ready":
            self._send(200, b"")
        elif self.path == f"/v2/models/{stub.model}/config":
            self._send(200, json.dumps(stub.config_json()).encode())
        else:
            self._error(404, f"not found: {self.path}")

    def do_POST(self) -> None:
        stub: KServeStub = self.server.stub  # type: ignore[attr-defined]
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != f"/v2/models/{stub.model}/infer":
            self._error(404, f"not found: {self.path}")
            return
        length = self.headers.get("Inference-Header-Content-Length")
        try:
            answer, head = stub.infer(body, int(length) if length is not None else None)
        except RequestError as exc:
            self._error(400, str(exc))
            return
        self._send(200, answer, head)
