"""The peer of ``gainx serve`` in bench_serve: the same ONNX model and per-image work behind LitServe.

``python -m bench.peer_litserve MODEL.onnx PORT MAX_BATCH`` serves ``POST /predict`` with a JSON body
``{"image": "<base64 JPEG>"}`` (LitServe parses JSON or forms, not raw image bodies) and answers
``{"class_id", "name", "probability", "logit", "heatmap_png"}`` for the top-1 class: JPEG decoding and
``AttentionSession.preprocess``, one batched ``AttentionSession.run`` of up to MAX_BATCH images, and
the PNG heatmap of :func:`gainx.serve.render.heatmap_png`, as gainx serve does them. One inference
worker (LitServe's own process) with an ONNX Runtime session on every core, dynamic batching with a
5 ms window (gainx serve's ``--max-wait-ms 5``).
"""

from __future__ import annotations

import base64
import io
import os
import sys
from typing import Any

import litserve as ls
import numpy as np
from PIL import Image

from gainx.runtime import AttentionSession
from gainx.serve.render import heatmap_png, probabilities


class AttentionAPI(ls.LitAPI):
    def __init__(self, model: str, max_batch: int) -> None:
        super().__init__(max_batch_size=max_batch, batch_timeout=0.005)
        self.model = model

    def setup(self, device: str) -> None:
        self.session = AttentionSession(self.model, threads=os.cpu_count() or 1, spinning=False)

    def decode_request(self, request) -> np.ndarray:  # not annotated: LitServe then parses the JSON body
        return self.session.preprocess(Image.open(io.BytesIO(base64.b64decode(request["image"]))))

    def batch(self, inputs: list[np.ndarray]) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, images: np.ndarray) -> Any:
        return self.session.run(images)

    def unbatch(self, output: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return list(zip(output.scores, output.classes, output.attention))

    def encode_response(self, output: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
        scores, classes, attention = output
        top = int(classes[0])
        return {
            "class_id": top,
            "name": self.session.classes[top],
            "probability": float(probabilities(scores, self.session.multilabel)[top]),
            "logit": float(scores[top]),
            "heatmap_png": heatmap_png(attention[0]),
        }


def main(model: str, port: int, max_batch: int) -> None:
    server = ls.LitServer(AttentionAPI(model, max_batch), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
