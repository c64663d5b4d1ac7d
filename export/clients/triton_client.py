"""Run images through a gainx attention model on NVIDIA Triton Inference Server (KServe v2 HTTP protocol).

Usage::

    python export/clients/triton_client.py cat.jpg dog.png --url 127.0.0.1:8000 --model gainx_attention \\
        [--labels triton_models/gainx_attention/labels.txt] [--image-size H W] [--topk K] [--overlay DIR] [--json]

The model's configuration (``GET /v2/models/<model>/config``) gives the input's
name, data type and dims and the largest batch. Images are prepared as the
graph contract asks (docs/export.md): decoded as gainx training reads images
(as stored: an EXIF orientation tag is not applied; 16-bit grayscale rescaled
to 8 bits), RGB, resized (bilinear) to the model's size, float32 in ``[0, 1]``,
``(N, 3, H, W)``; the mean/std normalization is inside the graph. The size is
``--image-size`` (the export's ``gainx.image_size``) or, for a model exported
with a fixed size, the config's dims. The images are sent in batches of at most ``max_batch_size`` with the
binary tensor extension, and the outputs ``scores`` (logits), ``classes`` (the
top-k class ids) and ``attention`` (their Grad-CAM maps in ``[0, 1]``) come
back as binary tensors. Class names come from ``--labels``, the
``labels.txt`` that ``gainx export --triton-repo`` writes beside the model.
``--overlay DIR`` saves each map over its image with ``gainx.viz.overlay``
as ``DIR/<image stem>_<rank>_<class>.png``, named apart as ``gainx attention``
names its overlays (needs gainx installed). Needs ``tritonclient[http]``, numpy and Pillow.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.http as httpclient
from PIL import Image
from tritonclient.utils import triton_to_np_dtype

OUTPUTS = ("scores", "classes", "attention")


def image_size(config: dict[str, Any], given: list[int] | None) -> tuple[int, int]:
    """``(H, W)``: the given size, else the model's fixed one from its config (dims without the batch)."""
    if given:
        return given[0], given[1]
    dims = [int(d) for d in config["input"][0]["dims"]][-2:]
    if min(dims) < 1:
        raise SystemExit("triton_client: the model takes any image size; give --image-size H W (its gainx.image_size)")
    return dims[0], dims[1]


def load_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """``(3, H, W)`` float32 RGB in [0, 1] at ``size``, as ``gainx.runtime.AttentionSession.preprocess`` makes it:
    decoded as training reads images (as stored, 16-bit grayscale rescaled) and resized as training does."""
    image = Image.open(path)
    if image.mode == "F" or image.mode.startswith("I"):  # gainx.data.decode.to_rgb's rule, without needing gainx
        wide = np.asarray(image)
        if image.mode == "F" or wide.min(initial=0) < 0 or wide.max(initial=0) > 65535:
            raise ValueError(f"{path}: mode {image.mode!r} pixels have no 8-bit rule (16-bit grayscale has)")
        image = Image.fromarray(((wide.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8), "L")
    image = image.convert("RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BILINEAR)
    return np.divide(np.asarray(image).transpose(2, 0, 1), np.float32(255.0), dtype=np.float32)


def infer(
    client: httpclient.InferenceServerClient, model: str, config: dict[str, Any], images: np.ndarray
) -> dict[str, np.ndarray]:
    """``scores``, ``classes`` and ``attention`` for ``(N, 3, H, W)`` images, in batches the model accepts."""
    spec = config["input"][0]
    datatype = spec["data_type"].removeprefix("TYPE_")
    step = int(config.get("max_batch_size", 0)) or len(images)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in OUTPUTS}
    for start in range(0, len(images), step):
        batch = images[start : start + step].astype(triton_to_np_dtype(datatype))
        tensor = httpclient.InferInput(spec["name"], list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch, binary_data=True)
        wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name in OUTPUTS]
        result = client.infer(model, [tensor], outputs=wanted)
        for name in OUTPUTS:
            parts[name].append(result.as_numpy(name))
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def save_overlays(folder: Path, paths: list[str], images: np.ndarray, maps: np.ndarray, names: list[list[str]]) -> None:
    """``folder/<image stem>_<rank>_<class>.png``: each map blended over the image the model saw.

    Stems and class names are those of ``gainx attention`` (``gainx.explain.overlay_stems`` and ``safe_name``):
    images of one name in several folders get their folders in the stem (``a/x.jpg``, ``b/x.jpg`` -> ``a_x``,
    ``b_x``) and a class name's spaces and slashes become ``_``. Raises ``ValueError`` before writing anything
    when an image is given twice or two overlays would still share a file name.
    """
    from gainx.explain import check_distinct_names, overlay_stems, safe_name
    from gainx.viz import overlay, save_png

    targets = [
        [folder / f"{stem}_{rank}_{safe_name(name)}.png" for rank, name in enumerate(image_names, 1)]
        for stem, image_names in zip(overlay_stems(paths), names)
    ]
    check_distinct_names(chain.from_iterable(targets))
    folder.mkdir(parents=True, exist_ok=True)
    for image, image_maps, image_targets in zip(images, maps, targets):
        rgb = np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)
        for attention, target in zip(image_maps, image_targets):
            save_png(overlay(rgb, attention), target)


def main(argv: list[str] | None = None) -> int:
    """Run the client; print one block (or, with ``--json``, one JSON list) of top-k classes per image."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    parser.add_argument(
        "--url", default="127.0.0.1:8000", help="Triton's HTTP endpoint, host:port (default %(default)s)"
    )
    parser.add_argument("--model", default="gainx_attention", help="model name in the repository (default %(default)s)")
    parser.add_argument("--labels", default=None, help="class names, one a line (the repository's labels.txt)")
    parser.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"), help="model input size")
    parser.add_argument("--topk", type=int, default=None, help="classes to print (default: all the model returns)")
    parser.add_argument("--overlay", default=None, metavar="DIR", help="save the attention overlays in this folder")
    parser.add_argument("--json", action="store_true", help="print a JSON list, one entry per image")
    args = parser.parse_args(argv)

    client = httpclient.InferenceServerClient(url=args.url)
    if not client.is_server_ready():
        raise SystemExit(f"triton_client: the server at {args.url} is not ready")
    config = client.get_model_config(args.model)
    labels = Path(args.labels).read_text(encoding="utf-8").splitlines() if args.labels else None
    size = image_size(config, args.image_size)
    images = np.stack([load_image(path, size) for path in args.images])
    out = infer(client, args.model, config, images)

    k = args.topk or out["classes"].shape[1]
    report, names = [], []
    for path, scores, classes, maps in zip(args.images, out["scores"], out["classes"][:, :k], out["attention"]):
        names.append([labels[c] if labels else str(c) for c in classes.tolist()])
        predictions = [
            {"class_id": c, "name": name, "score": float(scores[c])} for c, name in zip(classes.tolist(), names[-1])
        ]
        report.append({"image": path, "predictions": predictions, "attention_shape": list(maps[:k].shape)})
    if args.json:
        print(json.dumps(report))
    else:
        for entry in report:
            print(f"{entry['image']}: attention {entry['attention_shape']}")
            for rank, p in enumerate(entry["predictions"], 1):
                print(f"  {rank}. {p['name']:<20} score {p['score']:.4f}")
    if args.overlay:
        save_overlays(Path(args.overlay), args.images, images, out["attention"][:, :k], names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
