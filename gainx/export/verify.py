"""Built-in verification of an exported attention model against PyTorch.

The reference is :func:`gainx.attention_maps` (autograd Grad-CAM on the
original, unsplit model, paper eq. 1-2) on the normalized images. Checked:
``onnx.checker``; ONNX Runtime (CPU) on random images with the default top-k,
on given ``class_ids``, on a second image size when H, W are dynamic, and on
the user's own images when given (:func:`load_verify_images`).

Tolerances: maps (values in [0, 1]) within ``atol`` absolutely; scores within
``atol * max(1, max |s|)``, ``s`` the PyTorch scores of that batch (relative
to the largest score, so logits in the hundreds are held to the same number of
significant digits as logits near 1). ``atol`` is 1e-4 for fp32 graphs and
5e-2 for fp16 ones. Top-k classes may differ from PyTorch's only between
scores tied within the score tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gainx._extras import require

FP32_ATOL = 1e-4
FP16_ATOL = 5e-2  # fp16 graphs: half-precision activations
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


class ExportVerificationError(RuntimeError):
    """The exported ONNX model does not reproduce PyTorch; nothing was written."""


@dataclass(frozen=True)
class VerifyCase:
    name: str
    images: Tensor  # (N, 3, H, W) in [0, 1]
    class_ids: Tensor | None  # (N, K) or None for the default top-k


def other_size(image_size: Sequence[int]) -> tuple[int, int]:
    """``(H + 16, W + 8)``: where dynamic H, W are probed (export) and verified."""
    return image_size[0] + 16, image_size[1] + 8


def default_cases(
    image_size: Sequence[int], num_classes: int, topk: int, dynamic_hw: bool, seed: int = 0
) -> list[VerifyCase]:
    """Random images (top-k), given class ids, and another image size when allowed."""
    gen = torch.Generator().manual_seed(seed)
    h, w = image_size
    k = min(num_classes, topk + 1)
    cases = [
        VerifyCase("random images, top-k", torch.rand(2, 3, h, w, generator=gen), None),
        VerifyCase(
            "given class_ids",
            torch.rand(3, 3, h, w, generator=gen),
            torch.randint(0, num_classes, (3, k), generator=gen),
        ),
    ]
    if dynamic_hw:
        cases.append(
            VerifyCase(
                "another image size",
                torch.rand(1, 3, *other_size(image_size), generator=gen),
                torch.randint(0, num_classes, (1, k), generator=gen),
            )
        )
    return cases


def load_verify_images(folder: str | Path, image_size: Sequence[int], limit: int = 8) -> Tensor:
    """The first ``limit`` images of ``folder`` (by name), resized to ``image_size``, as ``(N, 3, H, W)`` in [0, 1]."""
    from gainx.data.decode import read_image
    from gainx.data.transforms import resize_rgb

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"verification image folder not found: {folder}")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not paths:
        raise ValueError(f"{folder} holds no image ({', '.join(IMAGE_SUFFIXES)}) to verify the export on")
    size = (int(image_size[0]), int(image_size[1]))
    pixels = np.stack([resize_rgb(read_image(p, "verification images"), size) for p in paths])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255


def _max_err(a: np.ndarray, b: Tensor) -> float:
    return float(np.abs(a.astype(np.float64) - b.double().numpy()).max()) if a.size else 0.0


def verify_onnx(
    model_bytes: bytes,
    model: nn.Module,
    target_layer: str,
    mean: Sequence[float],
    std: Sequence[float],
    cases: Sequence[VerifyCase],
    atol: float = FP32_ATOL,
    reshape_transform: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Raise :class:`ExportVerificationError` unless ``model_bytes`` matches ``model``.

    Returns the largest score and map errors seen (for logs and tests).
    """
    onnx = require("onnx", extra="export", feature="ONNX export")
    ort = require("onnxruntime", extra="export", feature="ONNX export")

    from gainx.attention import attention_maps
    from gainx.runtime import session_options

    try:
        onnx.checker.check_model(onnx.load_from_string(model_bytes))
        session = ort.InferenceSession(model_bytes, session_options(), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ExportVerificationError(f"the exported graph is not valid ONNX: {exc}") from exc
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    worst = {"scores": 0.0, "attention": 0.0}
    model = model.eval()
    for case in cases:
        feeds = {"images": case.images.numpy()}
        if case.class_ids is not None:
            feeds["class_ids"] = case.class_ids.numpy()
        try:
            scores, classes, attention = session.run(["scores", "classes", "attention"], feeds)
        except Exception as exc:
            raise ExportVerificationError(f"ONNX Runtime failed on {case.name}: {exc}") from exc
        ids = torch.from_numpy(classes)
        ref_scores, ref_maps = attention_maps(
            model, (case.images - m) / s, target_layer, classes=ids, reshape_transform=reshape_transform
        )
        tol = {"scores": atol * max(float(ref_scores.abs().max()), 1.0), "attention": atol}
        if case.class_ids is None:
            k = ids.shape[1]
            chosen = ref_scores.gather(1, ids)
            best = ref_scores.topk(k, dim=1).values
            if ids.shape != best.shape or float((chosen - best).abs().max()) > tol["scores"]:
                raise ExportVerificationError(
                    f"{case.name}: ONNX classes {classes.tolist()} are not the top-{k} of the PyTorch scores"
                )
        elif not torch.equal(ids, case.class_ids):
            raise ExportVerificationError(
                f"{case.name}: ONNX returned classes {classes.tolist()}, asked for {case.class_ids.tolist()}"
            )
        for name, got, ref in (("scores", scores, ref_scores), ("attention", attention, ref_maps)):
            if got.shape != tuple(ref.shape):
                raise ExportVerificationError(
                    f"{case.name}: ONNX {name} has shape {got.shape}, PyTorch {tuple(ref.shape)}"
                )
            err = _max_err(got, ref)
            worst[name] = max(worst[name], err)
            if not err <= tol[name]:  # also catches NaN
                raise ExportVerificationError(
                    f"{case.name}: ONNX {name} differ from PyTorch by {err:.3g} (tolerance {tol[name]:.3g})"
                )
    return worst
