"""Built-in verification of an exported attention model against PyTorch.

The reference is :func:`gainx.attention_maps` (autograd Grad-CAM on the
original, unsplit model, paper eq. 1-2) on the normalized images. Checked:
``onnx.checker``; ONNX Runtime (CPU) on random images with the default top-k,
on given ``class_ids``, on a second image size when H, W are dynamic, and on
the user's own images when given (:func:`load_verify_images`).

Tolerances (``atol`` is 1e-4 for fp32 graphs and 5e-2 for fp16 ones):

* scores within ``atol * max(1, max |s|)``, ``s`` the PyTorch scores of that
  batch (relative to the largest score, so logits in the hundreds are held to
  the same number of significant digits as logits near 1). Top-k classes may
  differ from PyTorch's only between scores tied within the score tolerance.
* maps (values in [0, 1]) within ``atol`` of PyTorch's, or, map by map, within
  ``atol + 2 e32`` of the maps computed in float64 (the model in double
  precision), ``e32`` being the distance of PyTorch's own float32 maps to
  those. A map ``A = ReLU(sum_k w_k F_k)`` (eq. 2) whose channel terms cancel
  (their magnitudes ``sum_k |w_k F_k|`` many times the map's range) turns the
  float32 rounding of F into map errors larger than ``atol`` in *any* float32
  implementation, PyTorch's included, and two implementations summing in
  different orders land on different sides of the exact map; the float64
  reference tells that rounding from a wrong graph. ``e32`` measures the
  rounding of that map; ONNX Runtime's may be up to ``ROUNDING_MARGIN = 2``
  times as large (a margin for two samples of the same rounding noise). A map
  within ``atol`` of PyTorch always passes (``|onnx - f64| <= |onnx - f32| +
  e32``); the second test only admits maps on which float32 PyTorch is itself
  more than ``atol`` from exact, and a wrong graph on a well-conditioned map
  (small ``e32``) is refused as before.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from gainx._extras import require

FP32_ATOL = 1e-4
FP16_ATOL = 5e-2  # fp16 graphs: half-precision activations
ROUNDING_MARGIN = 2.0  # ONNX map rounding allowed, in units of PyTorch float32's own (module docstring)
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


def _map_errors(got: Tensor, ref: Tensor) -> Tensor:
    """Largest absolute difference per map of two ``(N, K, H, W)`` batches, in float64 (NaN stays NaN)."""
    diff = (got.double() - ref.double()).abs().flatten(2)
    return torch.where(diff.isnan().any(2), float("nan"), diff.amax(2)) if diff.numel() else diff.sum(2)


class _Float64Reference:
    """PyTorch's maps computed in double precision (a float64 copy of the model, made once when first needed)."""

    def __init__(self, model: nn.Module, target_layer: str, reshape_transform: Callable[[Tensor], Tensor] | None):
        self.model, self.target_layer, self.transform = model, target_layer, reshape_transform
        self.double: nn.Module | None = None

    def maps(self, images: Tensor, classes: Tensor) -> Tensor:
        from gainx.attention import attention_maps

        if self.double is None:
            self.double = copy.deepcopy(self.model).double().eval()
        return attention_maps(
            self.double, images.double(), self.target_layer, classes=classes, reshape_transform=self.transform
        )[1]


def check_maps(name: str, got: np.ndarray, ref: Tensor, exact: Callable[[], Tensor], atol: float) -> dict[str, float]:
    """Raise :class:`ExportVerificationError` unless every map of ``got`` passes (module docstring, maps).

    ``ref``: PyTorch's float32 maps; ``exact()``: the float64 maps, computed
    only when a map is farther than ``atol`` from ``ref``. Returns the largest
    errors: ``attention`` (to PyTorch), and when float64 maps were needed
    ``attention_fp64`` (ONNX to float64) and ``pytorch_fp64`` (PyTorch float32 to float64).
    """
    onnx_maps = torch.from_numpy(got)
    err = _map_errors(onnx_maps, ref)
    worst = {"attention": float(err.max()) if err.numel() else 0.0}
    if not bool((err > atol).any() or err.isnan().any()):
        return worst
    try:
        f64 = exact()
    except Exception as exc:  # noqa: BLE001 - a model that does not run in float64: judged on float32 alone
        raise ExportVerificationError(
            f"{name}: ONNX attention differ from PyTorch by {worst['attention']:.3g} (tolerance {atol:.3g}; "
            f"the model cannot run in float64 to tell rounding from a wrong graph: {exc})"
        ) from exc
    onnx_err, own_err = _map_errors(onnx_maps, f64), _map_errors(ref, f64)
    worst.update(attention_fp64=float(onnx_err.max()), pytorch_fp64=float(own_err.max()))
    bad = ~(onnx_err <= atol + ROUNDING_MARGIN * own_err)  # also catches NaN
    if bool(bad.any()):
        i = tuple(int(v) for v in bad.nonzero()[0])
        raise ExportVerificationError(
            f"{name}: ONNX attention differ from PyTorch by {worst['attention']:.3g} (tolerance {atol:.3g}); "
            f"map {i} is {float(onnx_err[i]):.3g} from the float64 map, PyTorch's float32 map "
            f"{float(own_err[i]):.3g} (allowed: {atol:.3g} + {ROUNDING_MARGIN:g} x PyTorch's)"
        )
    return worst


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

    Returns the largest errors seen (for logs and tests): ``scores``,
    ``attention`` and, when float64 maps were needed, ``attention_fp64`` and
    ``pytorch_fp64`` (:func:`check_maps`).
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
    worst: dict[str, float] = {"scores": 0.0, "attention": 0.0}
    model = model.eval()
    float64 = _Float64Reference(model, target_layer, reshape_transform)
    for case in cases:
        feeds = {"images": case.images.numpy()}
        if case.class_ids is not None:
            feeds["class_ids"] = case.class_ids.numpy()
        try:
            scores, classes, attention = session.run(["scores", "classes", "attention"], feeds)
        except Exception as exc:
            raise ExportVerificationError(f"ONNX Runtime failed on {case.name}: {exc}") from exc
        ids = torch.from_numpy(classes)
        images = (case.images - m) / s
        ref_scores, ref_maps = attention_maps(
            model, images, target_layer, classes=ids, reshape_transform=reshape_transform
        )
        tol = atol * max(float(ref_scores.abs().max()), 1.0)
        if case.class_ids is None:
            k = ids.shape[1]
            chosen = ref_scores.gather(1, ids)
            best = ref_scores.topk(k, dim=1).values
            if ids.shape != best.shape or float((chosen - best).abs().max()) > tol:
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
        err = _max_err(scores, ref_scores)
        if not err <= tol:  # also catches NaN
            raise ExportVerificationError(
                f"{case.name}: ONNX scores differ from PyTorch by {err:.3g} (tolerance {tol:.3g})"
            )
        exact = functools.partial(float64.maps, images, ids)
        found = {"scores": err, **check_maps(case.name, attention, ref_maps, exact, atol)}
        for key, value in found.items():
            worst[key] = max(worst.get(key, 0.0), value)
    return worst
