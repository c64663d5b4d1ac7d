"""Run an exported gainx attention model (see docs/export.md) with ONNX Runtime.

The graph takes ``images`` float32 ``(N, 3, H, W)`` RGB in ``[0, 1]`` (the
mean/std normalization is inside the graph) and optionally ``class_ids`` int64
``(N, K)``; it returns ``scores`` ``(N, C)`` (logits), ``classes`` int64
``(N, K)`` (the top-k classes, or the given ones) and ``attention`` float32
``(N, K, H, W)`` in ``[0, 1]``: the Grad-CAM map of each class,
``ReLU(sum_k GAP(d s_c / d F_k) F_k)`` (paper eq. 1-2), bilinearly upsampled to
the image and min-max normalized.

:class:`AttentionSession` validates inputs (rank, channel count, dtype, NaN,
size: at least ``MIN_IMAGE_SIDE`` on each side, class ids) before they reach
ONNX Runtime, so errors name the problem.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from gainx._extras import require

META_PREFIX = "gainx."
MIN_IMAGE_SIDE = 8  # the smallest H and W an exported graph takes: gainx export traces and accepts no smaller sizes


class AttentionResult(NamedTuple):
    """Outputs of one :meth:`AttentionSession.run` (numpy arrays or torch tensors)."""

    scores: Any  # (N, C) float32 logits
    classes: Any  # (N, K) int64
    attention: Any  # (N, K, H, W) float32 in [0, 1]


def default_providers() -> list[str]:
    """CUDA (when onnxruntime-gpu sees a GPU) then CPU."""
    ort = require("onnxruntime", extra="export", feature="ONNX Runtime inference")

    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def session_options(threads: int | None = None, spinning: bool = True):
    """ORT options: warnings off (``class_ids`` is an overridable initializer by design).

    ``threads`` caps the intra-op thread pool (several sessions in one process
    should split the cores); ``spinning=False`` stops idle threads from
    busy-waiting, which helps when sessions wait on a request queue.
    """
    ort = require("onnxruntime", extra="export", feature="ONNX Runtime inference")

    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def read_metadata(meta_map: dict[str, str], path: Path) -> dict[str, Any]:
    """Decode the ``gainx.*`` metadata_props (JSON values) of the model at ``path``."""
    out = {}
    for key, value in meta_map.items():
        if key.startswith(META_PREFIX):
            try:
                out[key[len(META_PREFIX) :]] = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: metadata {key!r} is not JSON: {value!r}") from exc
    missing = [k for k in ("classes", "image_size", "topk", "mean", "std") if k not in out]
    if missing:
        raise ValueError(f"{path} is not a gainx attention model: metadata lacks {[META_PREFIX + k for k in missing]}")
    return out


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        return x.detach().cpu().numpy()
    raise TypeError(f"{name} must be a numpy array or a torch tensor, got {type(x).__name__}")


class AttentionSession:
    """An ONNX Runtime session on a gainx attention model, with its metadata.

    Attributes: ``classes`` (names, index = class id), ``image_size`` ``(H, W)``
    the model was exported for (``preprocess`` resizes to it), ``topk``,
    ``mean``/``std`` (applied inside the graph; informational), ``arch``,
    ``target_layer``, ``multilabel``, ``metadata`` (all decoded ``gainx.*``
    props), ``dynamic_hw`` (whether other image sizes are accepted),
    ``providers`` (those in use).
    """

    def __init__(
        self,
        path: str | Path,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        ort = require("onnxruntime", extra="export", feature="ONNX Runtime inference")

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model not found: {self.path}")
        try:
            self._session = ort.InferenceSession(
                str(self.path), session_options(threads, spinning), providers=list(providers or default_providers())
            )
        except Exception as exc:
            raise ValueError(f"cannot load ONNX model {self.path}: {exc}") from exc
        self.metadata = read_metadata(self._session.get_modelmeta().custom_metadata_map, self.path)
        self.classes: list[str] = list(self.metadata["classes"])
        self.image_size: tuple[int, int] = tuple(self.metadata["image_size"])
        self.topk: int = int(self.metadata["topk"])
        self.mean: list[float] = list(self.metadata["mean"])
        self.std: list[float] = list(self.metadata["std"])
        self.arch: str | None = self.metadata.get("arch")
        self.target_layer: str | None = self.metadata.get("target_layer")
        self.multilabel: bool = bool(self.metadata.get("multilabel", False))
        self.providers: list[str] = self._session.get_providers()
        shape = self._session.get_inputs()[0].shape
        self._static_hw = tuple(d if isinstance(d, int) else None for d in shape[2:])
        self.dynamic_hw: bool = self._static_hw == (None, None)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _check_images(self, images: Any) -> np.ndarray:
        x = _to_numpy(images, "images")
        if x.ndim != 4:
            raise ValueError(f"images must have rank 4 (N, 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != 3:
            raise ValueError(f"images must have 3 (RGB) channels in dim 1, got shape {tuple(x.shape)}")
        if x.dtype != np.float32:
            raise TypeError(f"images must be float32 RGB in [0, 1], got dtype {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError("images is an empty batch (N = 0)")
        for got, want in zip(x.shape[2:], self._static_hw):
            if want is not None and got != want:
                raise ValueError(
                    f"this model was exported for {self._static_hw[0]}x{self._static_hw[1]} images, "
                    f"got shape {tuple(x.shape)}; use preprocess() to resize"
                )
        if min(x.shape[2:]) < MIN_IMAGE_SIDE:
            raise ValueError(
                f"images must be at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} (H, W), got shape {tuple(x.shape)}; "
                f"use preprocess() to resize to the model's {self.image_size[0]}x{self.image_size[1]}"
            )
        if not np.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        return np.ascontiguousarray(x)

    def _check_class_ids(self, class_ids: Any, n: int) -> np.ndarray:
        ids = _to_numpy(class_ids, "class_ids")
        if not np.issubdtype(ids.dtype, np.integer):
            raise TypeError(f"class_ids must be integers (int64), got dtype {ids.dtype}")
        if ids.ndim != 2 or ids.shape[0] != n or not 1 <= ids.shape[1] <= self.num_classes:
            raise ValueError(
                f"class_ids must have shape (N={n}, K) with K in [1, {self.num_classes}] (the model's classes), "
                f"got {tuple(ids.shape)}"
            )
        bad = ids[(ids < 0) | (ids >= self.num_classes)]
        if bad.size:
            raise ValueError(f"class_ids out of range [0, {self.num_classes}): {sorted(set(bad.tolist()))}")
        return np.ascontiguousarray(ids, dtype=np.int64)

    def run(self, images: Any, class_ids: Any = None, as_torch: bool = False) -> AttentionResult:
        """Scores, classes and attention maps for a batch.

        Args:
            images: ``(N, 3, H, W)`` float32 RGB in ``[0, 1]`` (numpy or torch).
            class_ids: optional ``(N, K)`` integer class ids, ``1 <= K <= C``; default: the
                model's top-``topk`` classes by score.
            as_torch: return torch tensors instead of numpy arrays.
        """
        feeds = {"images": self._check_images(images)}
        if class_ids is not None:
            feeds["class_ids"] = self._check_class_ids(class_ids, feeds["images"].shape[0])
        scores, classes, attention = self._session.run(["scores", "classes", "attention"], feeds)
        if as_torch:
            import torch

            return AttentionResult(torch.from_numpy(scores), torch.from_numpy(classes), torch.from_numpy(attention))
        return AttentionResult(scores, classes, attention)

    def preprocess(self, image: Any) -> np.ndarray:
        """A PIL image -> ``(3, H, W)`` float32 RGB in ``[0, 1]`` at ``image_size``, decoded and resized as the
        training data is (:func:`gainx.data.transforms.resize_rgb`): as stored, 16-bit grayscale rescaled to
        8 bits; a mode with no 8-bit rule (float ``F``) raises ``ValueError`` naming it."""
        from PIL import Image

        from gainx.data.transforms import resize_rgb

        if not isinstance(image, Image.Image):
            raise TypeError(f"preprocess expects a PIL image, got {type(image).__name__}")
        rgb = resize_rgb(image, self.image_size)
        out = np.empty((3, *rgb.shape[:2]), np.float32)
        return np.divide(
            rgb.transpose(2, 0, 1), np.float32(255.0), out=out, dtype=np.float32
        )  # one pass, no temporaries
