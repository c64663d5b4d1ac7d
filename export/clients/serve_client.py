"""Send an image to ``gainx serve``, print its top-k classes and save the top class's heatmap over the image.

Usage::

    python export/clients/serve_client.py cat.jpg [--url http://127.0.0.1:8000] [--topk K] [--overlay out.png] [--json]

The image is posted as a raw body to ``POST /v1/predict?topk=K`` (JPEG or PNG,
by its file name). The server answers with each class's name, probability and
logit, and the class's Grad-CAM heatmap as a base64 PNG in jet colours at the
model's input size (docs/serve.md). ``--overlay`` resizes the first heatmap to
the image's size and blends it half and half over the image (as
``gainx.viz.overlay`` blends at the input size). ``--json`` prints the
server's answer as it came. Needs only the standard library and Pillow.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import mimetypes
import sys
import urllib.error
import urllib.request
from typing import Any

from PIL import Image


def predict(url: str, image_path: str, topk: int, timeout: float = 60.0) -> dict[str, Any]:
    """The server's JSON answer for one image file (raises ``urllib.error.HTTPError`` on an error status)."""
    content_type = mimetypes.guess_type(image_path)[0] or "application/octet-stream"
    with open(image_path, "rb") as fh:
        body = fh.read()
    request = urllib.request.Request(
        f"{url.rstrip('/')}/v1/predict?topk={topk}", data=body, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


def save_overlay(image_path: str, heatmap_png: str, out: str) -> tuple[int, int]:
    """Blend the base64 heatmap PNG (resized to the image) over the image; save it as PNG; return its size."""
    image = Image.open(image_path).convert("RGB")  # as stored, as the server reads it (no EXIF rotation)
    heat = Image.open(io.BytesIO(base64.b64decode(heatmap_png))).convert("RGB").resize(image.size, Image.BILINEAR)
    Image.blend(image, heat, 0.5).save(out, format="PNG")
    return image.size


def main(argv: list[str] | None = None) -> int:
    """Run the client; 0 on success, 1 when the server answers with an error."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image", help="a JPEG or PNG file")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default %(default)s)")
    parser.add_argument("--topk", type=int, default=1, help="classes to return (at most the model's top-k)")
    parser.add_argument("--overlay", default=None, metavar="PNG", help="save the top class's heatmap over the image")
    parser.add_argument("--json", action="store_true", help="print the server's JSON answer instead of a table")
    args = parser.parse_args(argv)
    try:
        answer = predict(args.url, args.image, args.topk)
    except urllib.error.HTTPError as exc:
        print(f"serve_client: {exc.code}: {exc.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(answer))
    else:
        print(f"{answer['source']}: {answer['width']}x{answer['height']}, model input {answer['input_size']}")
        for rank, p in enumerate(answer["predictions"], 1):
            print(f"{rank}. {p['name']:<20} probability {p['probability']:.4f}  logit {p['logit']:.4f}")
    if args.overlay:
        width, height = save_overlay(args.image, answer["predictions"][0]["heatmap_png"], args.overlay)
        print(f"overlay: {args.overlay} ({width}x{height})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
