"""Fused Triton kernels for the attention-mining step (paper eq. 1-4), forward and backward.

Same semantics as :func:`gainx.ops.attention_erase.attention_erase_eager` (the
reference): for P (image, class) pairs with target-layer features ``F`` and
gradients ``G`` (``(P, C, h, w)``) and images ``I`` (``(B, K, H, W)``, K = 3),

* ``w_c = (1 / hw) sum_s G_cs``                                     (eq. 1)
* ``A = ReLU(sum_c w_c F_c)``                                       (eq. 2)
* ``lo, hi = min, max of up(A)`` (bilinear, align_corners=False, to H x W)
* ``cam = (A - lo) / (hi - lo + eps |hi|)``, or 0 for a flat map
  (``hi - lo <= FLAT |hi|``, the reference's rule); ``N = up(cam)``
* ``T = sigmoid(omega (N - sigma))``                                (eq. 4)
* ``I* = I[index] - T * I[index]``, computed as ``I[index] (1 - T)``  (eq. 3)

Bilinear upsampling of an ``h x w`` map to a tile of output rows ``Y`` and
columns ``X`` is ``R_h[Y] @ A @ R_w[X]^T`` with 2-tap interpolation matrices
(:func:`_interp_weights`); its adjoint ``R_h[Y]^T @ g @ R_w[X]`` sends a
full-resolution gradient back to ``h x w``. Both are small ``tl.dot`` calls in
fp32 (fp64 for fp64 inputs) with ``input_precision="ieee"``.

Kernels (all accumulate in fp32, or fp64 for fp64 inputs):

forward  1. ``_gradcam_partial_kernel``  grid (P, C blocks): ``w`` and per-block
            partial sums of ``sum_c w_c F_c``.
         2. ``_map_stats_kernel``        grid (P,): the pre-ReLU map ``S``,
            ``lo``/``hi`` of the upsampled map, ``cam``.
         3. ``_erase_kernel``            grid (P, H tiles, W tiles): ``I*``; the
            image is read through ``index`` (never copied per class).
backward 4. ``_erase_backward_kernel``   grid (B, H tiles, W tiles): ``dI`` (each
            image tile read once, summed over the image's pairs) and, per
            (pair, tile), the adjoint-upsampled ``dL/dN`` partials.
         5. ``_map_backward_kernel``     grid (P,): ``dL/dS`` through the min-max
            normalization (min/max gradients split evenly between tied pixels,
            as ``amin``/``amax`` do) and the ReLU.
         6. ``_gradcam_backward_kernel`` grid (P, C blocks): ``dF = w dS``,
            ``dG = (1 / hw) sum_s dS_s F_cs``.

Saved for backward: ``w`` (P, C), ``S`` (P, h*w), ``lo``/``hi`` (P, 2) plus the
inputs; every full-resolution quantity is recomputed.

Public entry point: :func:`attention_erase_triton`; the op is
``torch.ops.gainx.attention_erase`` (a ``torch.library.triton_op``, so
``torch.compile`` sees the kernels) with a registered fake and autograd formula.
Kernels run on CUDA tensors, or on CPU tensors under ``TRITON_INTERPRET=1``
(which Triton reads when this module is imported, at ``@triton.jit`` time).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton
from triton.runtime.interpreter import InterpretedFunction

from gainx.ops.attention_erase import ErasedPairs
from gainx.ops.cam import EPS, FLAT

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_MAX_MAP_SIDE = 64  # larger h, w: (HP, WP) tiles spill and exceed shared memory (ptxas, sm_90)
# Tile sizes picked from ptxas resource usage for sm_90 at h, w <= 16 (no spills,
# <= 162 registers per thread).
_BLOCK_H = 16  # output rows per tile (>= 16: tl.dot operand size)
_MAX_BLOCK_W = 32
_MAX_BLOCK_ELEMS = 4096  # BLOCK_C * BLOCK_S in the channel kernels
_CHANNEL_WARPS = 8  # num_warps of the channel kernels
_FLAT = tl.constexpr(FLAT)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _taps(dst, n_in, n_out, dtype: tl.constexpr):
    """Lower tap, upper tap and weight of output positions ``dst`` (align_corners=False) in ``dtype``.

    ``src = max((dst + 0.5) * n_in / n_out - 0.5, 0)``, taps ``i0 = floor(src)``
    and ``i1 = min(i0 + 1, n_in - 1)``, weight ``l = src - i0`` (of ``i1``; ``1 - l`` of ``i0``).
    """
    scale = tl.cast(n_in, dtype) / tl.cast(n_out, dtype)
    src = tl.maximum((dst.to(dtype) + 0.5) * scale - 0.5, 0.0)
    i0 = src.to(tl.int32)  # src >= 0: truncation is floor
    i1 = tl.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, src - i0.to(dtype)


@triton.jit
def _interp_weights(dst, n_in, n_out, N_PAD: tl.constexpr, like):
    """``(len(dst), N_PAD)`` bilinear weights (align_corners=False, :func:`_taps`) in ``like``'s dtype:
    ``1 - l`` at column ``i0``, ``l`` at column ``i1``."""
    i0, i1, lam = _taps(dst, n_in, n_out, like.dtype)
    cols = tl.arange(0, N_PAD)[None, :]
    zero = tl.zeros_like(lam)[:, None]
    return tl.where(cols == i0[:, None], (1.0 - lam)[:, None], zero) + tl.where(cols == i1[:, None], lam[:, None], zero)


@triton.jit
def _upsample_tile(
    low, y0, x0, h, w, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, HP: tl.constexpr, WP: tl.constexpr
):
    """Rows ``y0..y0+BLOCK_H`` x cols ``x0..x0+BLOCK_W`` of ``up(low)``; also the
    interpolation matrices and the in-image mask of the tile."""
    ys = y0 + tl.arange(0, BLOCK_H)
    xs = x0 + tl.arange(0, BLOCK_W)
    rh = _interp_weights(ys, h, H, HP, low)  # (BLOCK_H, HP)
    rw = _interp_weights(xs, w, W, WP, low)  # (BLOCK_W, WP)
    rows = tl.dot(rh, low, input_precision="ieee", out_dtype=low.dtype)  # (BLOCK_H, WP)
    up = tl.dot(rows, tl.trans(rw), input_precision="ieee", out_dtype=low.dtype)
    inside = (ys < H)[:, None] & (xs < W)[None, :]
    return up, rh, rw, inside


@triton.jit
def _upsample_adjoint(g, rh, rw):
    """``R_h^T g R_w``: the gradient of a tile of ``up(low)`` w.r.t. ``low``, ``(HP, WP)``."""
    cols = tl.dot(tl.trans(rh), g, input_precision="ieee", out_dtype=g.dtype)  # (HP, BLOCK_W)
    return tl.dot(cols, rw, input_precision="ieee", out_dtype=g.dtype)


@triton.jit
def _scalar(x, dtype: tl.constexpr):
    """A host float in the kernel's accumulation dtype.

    The scalar arguments are declared ``tl.float64``: a plain Python float
    reaches a compiled kernel as fp32, and ``1 + eps`` or a ``sigma`` such as
    0.55 would then carry fp32 rounding into fp64 results.
    """
    return tl.full((), x, dtype)


@triton.jit
def _soft_mask(n, sigma, omega):
    """``T = sigmoid(omega (n - sigma))`` (eq. 4)."""
    return 1.0 / (1.0 + tl.exp(-omega * (n - sigma)))


@triton.jit
def _low_res_offsets(h, w, HP: tl.constexpr, WP: tl.constexpr):
    """Row-major offsets ``i * w + j`` of an ``(HP, WP)`` tile of an ``h x w`` map and its mask."""
    i = tl.arange(0, HP)[:, None]
    j = tl.arange(0, WP)[None, :]
    return i * w + j, (i < h) & (j < w)


@triton.jit
def _is_flat(lo, hi):
    """A map whose upsampled range is at most FLAT of its maximum (rounding noise) normalizes to zeros."""
    return hi - lo <= tl.abs(hi) * _FLAT


@triton.jit
def _denominator(lo, hi, eps):
    """``hi - lo + eps |hi|``: ``eps`` is relative to the peak (scale-invariant maps)."""
    return hi - lo + eps * tl.abs(hi)


@triton.jit
def _normalize(raw, lo, hi, eps):
    """``(raw - lo) / (hi - lo + eps |hi|)``, or zeros for a flat map."""
    return tl.where(_is_flat(lo, hi), 0.0, (raw - lo) / _denominator(lo, hi, eps))


@triton.jit
def _load_cam(s_ptr, stats_ptr, p, h, w, eps, HP: tl.constexpr, WP: tl.constexpr):
    """``cam`` (:func:`_normalize` of ``ReLU(S)``) of pair ``p`` as a zero-padded ``(HP, WP)`` tile."""
    off, inside = _low_res_offsets(h, w, HP, WP)
    raw = tl.maximum(tl.load(s_ptr + p * h * w + off, mask=inside, other=0.0), 0.0)
    lo = tl.load(stats_ptr + 2 * p)
    hi = tl.load(stats_ptr + 2 * p + 1)
    return tl.where(inside, _normalize(raw, lo, hi, eps), 0.0)


@triton.jit
def _gradcam_partial_kernel(
    f_ptr,
    g_ptr,
    w_ptr,
    part_ptr,
    C,
    h,
    w,
    sf_p,
    sf_c,
    sf_h,
    sf_w,
    sg_p,
    sg_c,
    sg_h,
    sg_w,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """``w[p, c] = mean_s G[p, c, s]``; ``part[p, cb, s] = sum_{c in block cb} w[p, c] F[p, c, s]``."""
    p = tl.program_id(0).to(tl.int64)
    cb = tl.program_id(1)
    acc_ty = w_ptr.dtype.element_ty
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.arange(0, BLOCK_S)
    hw = h * w
    si = (s // w)[None, :]
    sj = (s % w)[None, :]
    inside = (c < C)[:, None] & (s < hw)[None, :]
    g = tl.load(g_ptr + p * sg_p + c[:, None] * sg_c + si * sg_h + sj * sg_w, mask=inside, other=0.0)
    wc = tl.sum(g.to(acc_ty), axis=1) / hw
    tl.store(w_ptr + p * C + c, wc, mask=c < C)
    f = tl.load(f_ptr + p * sf_p + c[:, None] * sf_c + si * sf_h + sj * sf_w, mask=inside, other=0.0)
    part = tl.sum(wc[:, None] * f.to(acc_ty), axis=0)
    tl.store(part_ptr + (p * tl.num_programs(1) + cb) * hw + s, part, mask=s < hw)


@triton.jit
def _map_stats_kernel(
    part_ptr,
    s_ptr,
    stats_ptr,
    cam_ptr,
    n_blocks,
    h,
    w,
    H,
    W,
    eps: tl.float64,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HP: tl.constexpr,
    WP: tl.constexpr,
):
    """``S = sum of partials``; ``lo, hi`` = min, max of ``up(ReLU(S))``; ``cam``."""
    p = tl.program_id(0).to(tl.int64)
    eps = _scalar(eps, s_ptr.dtype.element_ty)
    off, inside = _low_res_offsets(h, w, HP, WP)
    hw = h * w
    s = tl.zeros((HP, WP), dtype=s_ptr.dtype.element_ty)
    for cb in range(n_blocks):
        s += tl.load(part_ptr + (p * n_blocks + cb) * hw + off, mask=inside, other=0.0)
    tl.store(s_ptr + p * hw + off, s, mask=inside)
    raw = tl.maximum(s, 0.0)
    lo_t = tl.full((BLOCK_H, BLOCK_W), float("inf"), s.dtype)
    hi_t = tl.full((BLOCK_H, BLOCK_W), float("-inf"), s.dtype)
    for y0 in range(0, H, BLOCK_H):
        for x0 in range(0, W, BLOCK_W):
            up, rh, rw, tile = _upsample_tile(raw, y0, x0, h, w, H, W, BLOCK_H, BLOCK_W, HP, WP)
            lo_t = tl.minimum(lo_t, tl.where(tile, up, float("inf")))
            hi_t = tl.maximum(hi_t, tl.where(tile, up, float("-inf")))
    lo = tl.min(tl.min(lo_t, axis=1), axis=0)
    hi = tl.max(tl.max(hi_t, axis=1), axis=0)
    tl.store(stats_ptr + 2 * p, lo)
    tl.store(stats_ptr + 2 * p + 1, hi)
    cam = _normalize(raw, lo, hi, eps)
    tl.store(cam_ptr + p * hw + off, cam.to(cam_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _erase_kernel(
    s_ptr,
    stats_ptr,
    img_ptr,
    index_ptr,
    out_ptr,
    K,
    h,
    w,
    H,
    W,
    eps: tl.float64,
    sigma: tl.float64,
    omega: tl.float64,
    si_b,
    si_k,
    si_h,
    si_w,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HP: tl.constexpr,
    WP: tl.constexpr,
    KP: tl.constexpr,
):
    """``I*[p] = I[index[p]] (1 - T)`` on one (BLOCK_H, BLOCK_W) tile of pair ``p``."""
    p = tl.program_id(0).to(tl.int64)
    acc_ty = s_ptr.dtype.element_ty
    eps, sigma, omega = _scalar(eps, acc_ty), _scalar(sigma, acc_ty), _scalar(omega, acc_ty)
    y0 = tl.program_id(1) * BLOCK_H
    x0 = tl.program_id(2) * BLOCK_W
    cam = _load_cam(s_ptr, stats_ptr, p, h, w, eps, HP, WP)
    up, rh, rw, tile = _upsample_tile(cam, y0, x0, h, w, H, W, BLOCK_H, BLOCK_W, HP, WP)
    keep = 1.0 - _soft_mask(up, sigma, omega)
    b = tl.load(index_ptr + p)
    k = tl.arange(0, KP)[:, None, None]
    ys = (y0 + tl.arange(0, BLOCK_H))[None, :, None]
    xs = (x0 + tl.arange(0, BLOCK_W))[None, None, :]
    inside = (k < K) & tile[None, :, :]
    x = tl.load(img_ptr + b * si_b + k * si_k + ys * si_h + xs * si_w, mask=inside, other=0.0).to(cam.dtype)
    out = x * keep[None, :, :]
    tl.store(out_ptr + ((p * K + k) * H + ys) * W + xs, out.to(out_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _erase_backward_kernel(
    s_ptr,
    stats_ptr,
    img_ptr,
    order_ptr,
    offsets_ptr,
    ge_ptr,
    di_ptr,
    part_ptr,
    K,
    h,
    w,
    H,
    W,
    eps: tl.float64,
    sigma: tl.float64,
    omega: tl.float64,
    si_b,
    si_k,
    si_h,
    si_w,
    sg_p,
    sg_k,
    sg_h,
    sg_w,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HP: tl.constexpr,
    WP: tl.constexpr,
    KP: tl.constexpr,
    NEED_IMAGES: tl.constexpr,
):
    """For image ``b`` and one tile: ``dI = sum_{p of b} dI*_p (1 - T_p)`` and, per pair,
    ``part[p, tile] = R_h^T (dL/dN) R_w`` with ``dL/dN = -omega T (1 - T) sum_k dI*_pk I_k``."""
    b = tl.program_id(0).to(tl.int64)
    ty = tl.program_id(1)
    tx = tl.program_id(2)
    n_tiles = tl.num_programs(1) * tl.num_programs(2)
    y0 = ty * BLOCK_H
    x0 = tx * BLOCK_W
    k = tl.arange(0, KP)[:, None, None]
    ys = (y0 + tl.arange(0, BLOCK_H))[None, :, None]
    xs = (x0 + tl.arange(0, BLOCK_W))[None, None, :]
    inside = (k < K) & (ys < H) & (xs < W)
    acc_ty = s_ptr.dtype.element_ty
    eps, sigma, omega = _scalar(eps, acc_ty), _scalar(sigma, acc_ty), _scalar(omega, acc_ty)
    x = tl.load(img_ptr + b * si_b + k * si_k + ys * si_h + xs * si_w, mask=inside, other=0.0).to(acc_ty)
    dx = tl.zeros((KP, BLOCK_H, BLOCK_W), dtype=acc_ty)
    off, low_inside = _low_res_offsets(h, w, HP, WP)
    for q in range(tl.load(offsets_ptr + b), tl.load(offsets_ptr + b + 1)):
        p = tl.load(order_ptr + q)
        cam = _load_cam(s_ptr, stats_ptr, p, h, w, eps, HP, WP)
        up, rh, rw, tile = _upsample_tile(cam, y0, x0, h, w, H, W, BLOCK_H, BLOCK_W, HP, WP)
        t = _soft_mask(up, sigma, omega)
        ge = tl.load(ge_ptr + p * sg_p + k * sg_k + ys * sg_h + xs * sg_w, mask=inside, other=0.0).to(acc_ty)
        if NEED_IMAGES:
            dx += ge * (1.0 - t)[None, :, :]
        dt = -tl.sum(ge * x, axis=0)
        dn = tl.where(tile, dt * omega * t * (1.0 - t), 0.0)
        low = _upsample_adjoint(dn, rh, rw)
        tl.store(part_ptr + (p * n_tiles + ty * tl.num_programs(2) + tx) * h * w + off, low, mask=low_inside)
    if NEED_IMAGES:
        tl.store(di_ptr + ((b * K + k) * H + ys) * W + xs, dx.to(di_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _map_backward_kernel(
    s_ptr,
    stats_ptr,
    gcam_ptr,
    part_ptr,
    ds_ptr,
    n_tiles,
    h,
    w,
    H,
    W,
    eps: tl.float64,
    sc_p,
    sc_h,
    sc_w,
    BLOCK_H: tl.constexpr,
    BLOCK_W: tl.constexpr,
    HP: tl.constexpr,
    WP: tl.constexpr,
):
    """``dL/dS`` of pair ``p`` from ``dL/dcam`` (output gradient + upsampled partials).

    With ``d = hi - lo + eps |hi|`` (``hi >= 0`` after the ReLU): ``dcam/dA = 1/d``,
    ``dcam/dlo = (cam - 1)/d``, ``dcam/dhi = -(1 + eps) cam/d``; ``dlo/dA = R^T 1[up(A) = lo] / #ties`` (same for hi);
    ``dA/dS = 1[S > 0]``. A flat map's ``cam`` is constant zero: ``dL/dS = 0``.
    """
    p = tl.program_id(0).to(tl.int64)
    eps = _scalar(eps, s_ptr.dtype.element_ty)
    off, inside = _low_res_offsets(h, w, HP, WP)
    i = tl.arange(0, HP)[:, None]
    j = tl.arange(0, WP)[None, :]
    s = tl.load(s_ptr + p * h * w + off, mask=inside, other=0.0)
    raw = tl.maximum(s, 0.0)
    lo = tl.load(stats_ptr + 2 * p)
    hi = tl.load(stats_ptr + 2 * p + 1)
    d = _denominator(lo, hi, eps)
    cam = tl.where(inside, (raw - lo) / d, 0.0)
    gc = tl.load(gcam_ptr + p * sc_p + i * sc_h + j * sc_w, mask=inside, other=0.0).to(s.dtype)
    for t in range(n_tiles):
        gc += tl.load(part_ptr + (p * n_tiles + t) * h * w + off, mask=inside, other=0.0)
    gc = tl.where(inside, gc, 0.0)
    tie_lo = tl.zeros((HP, WP), dtype=s.dtype)
    tie_hi = tl.zeros((HP, WP), dtype=s.dtype)
    n_lo = tl.zeros((BLOCK_H, BLOCK_W), dtype=s.dtype)
    n_hi = tl.zeros((BLOCK_H, BLOCK_W), dtype=s.dtype)
    for y0 in range(0, H, BLOCK_H):
        for x0 in range(0, W, BLOCK_W):
            up, rh, rw, tile = _upsample_tile(raw, y0, x0, h, w, H, W, BLOCK_H, BLOCK_W, HP, WP)
            at_lo = tl.where(tile & (up == lo), 1.0, 0.0).to(s.dtype)
            at_hi = tl.where(tile & (up == hi), 1.0, 0.0).to(s.dtype)
            n_lo += at_lo
            n_hi += at_hi
            if tl.max(tl.max(at_lo, axis=1), axis=0) > 0:  # most tiles hold no extremum
                tie_lo += _upsample_adjoint(at_lo, rh, rw)
            if tl.max(tl.max(at_hi, axis=1), axis=0) > 0:
                tie_hi += _upsample_adjoint(at_hi, rh, rw)
    d_lo = tl.sum(tl.sum(gc * (cam - 1.0), axis=1), axis=0) / d
    d_hi = -(1.0 + eps) * tl.sum(tl.sum(gc * cam, axis=1), axis=0) / d
    d_lo = d_lo / tl.sum(tl.sum(n_lo, axis=1), axis=0)
    d_hi = d_hi / tl.sum(tl.sum(n_hi, axis=1), axis=0)
    draw = gc / d + d_lo * tie_lo + d_hi * tie_hi
    draw = tl.where(_is_flat(lo, hi), 0.0, draw)
    tl.store(ds_ptr + p * h * w + off, tl.where(s > 0.0, draw, 0.0), mask=inside)


@triton.jit
def _gradcam_backward_kernel(
    f_ptr,
    w_ptr,
    ds_ptr,
    df_ptr,
    dg_ptr,
    C,
    h,
    w,
    sf_p,
    sf_c,
    sf_h,
    sf_w,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
    NEED_FEATURES: tl.constexpr,
    NEED_GRADS: tl.constexpr,
):
    """``dF[p, c, s] = w[p, c] dS[p, s]``; ``dG[p, c, s] = (1 / hw) sum_s' dS[p, s'] F[p, c, s']``."""
    p = tl.program_id(0).to(tl.int64)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = tl.arange(0, BLOCK_S)
    hw = h * w
    inside = (c < C)[:, None] & (s < hw)[None, :]
    ds = tl.load(ds_ptr + p * hw + s, mask=s < hw, other=0.0)
    out = (p * C + c[:, None]) * hw + s[None, :]
    if NEED_FEATURES:
        wc = tl.load(w_ptr + p * C + c, mask=c < C, other=0.0)
        tl.store(df_ptr + out, (wc[:, None] * ds[None, :]).to(df_ptr.dtype.element_ty), mask=inside)
    if NEED_GRADS:
        f = tl.load(
            f_ptr + p * sf_p + c[:, None] * sf_c + (s // w)[None, :] * sf_h + (s % w)[None, :] * sf_w,
            mask=inside,
            other=0.0,
        )
        dw = tl.sum(f.to(ds.dtype) * ds[None, :], axis=1) / hw
        dg = tl.zeros((BLOCK_C, BLOCK_S), dtype=ds.dtype) + dw[:, None]
        tl.store(dg_ptr + out, dg.to(dg_ptr.dtype.element_ty), mask=inside)


# --------------------------------------------------------------------------- host side

_INTERPRETED = isinstance(_erase_kernel, InterpretedFunction)  # TRITON_INTERPRET=1 at import


def _pow2_at_least(n: int, floor: int) -> int:
    return max(floor, triton.next_power_of_2(n))


def _map_tiles(h: int, w: int, H: int, W: int) -> tuple[dict[str, int], int, int]:
    """Tile sizes for the map kernels and the number of (row, col) output tiles."""
    cfg = {
        "BLOCK_H": _BLOCK_H,
        "BLOCK_W": min(_MAX_BLOCK_W, _pow2_at_least(W, 16)),
        "HP": _pow2_at_least(h, 16),
        "WP": _pow2_at_least(w, 16),
    }
    return cfg, triton.cdiv(H, cfg["BLOCK_H"]), triton.cdiv(W, cfg["BLOCK_W"])


def _channel_tiles(C: int, hw: int) -> tuple[int, int]:
    block_s = triton.next_power_of_2(hw)
    return max(1, min(triton.next_power_of_2(C), _MAX_BLOCK_ELEMS // block_s)), block_s


def _acc_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _forward_outputs(features: Tensor, images: Tensor) -> tuple[Tensor, ...]:
    """Empty ``cam, erased, w, S, stats`` (shared by the op and its fake)."""
    P, C, h, w = features.shape
    acc = _acc_dtype(features, images)
    dev = features.device
    return (
        features.new_empty((P, h, w)),
        images.new_empty((P, images.shape[1], images.shape[2], images.shape[3])),
        torch.empty((P, C), dtype=acc, device=dev),
        torch.empty((P, h * w), dtype=acc, device=dev),
        torch.empty((P, 2), dtype=acc, device=dev),
    )


@triton_op("gainx::attention_erase", mutates_args=())
def _attention_erase_op(
    features: Tensor, grads: Tensor, images: Tensor, index: Tensor, sigma: float, omega: float, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Returns ``cam, erased`` and, for backward, ``w`` (P, C), ``S`` (P, h*w), ``[lo, hi]`` (P, 2)."""
    cam, erased, wts, s, stats = _forward_outputs(features, images)
    P, C, h, w = features.shape
    K, H, W = images.shape[1:]
    if P == 0:
        return cam, erased, wts, s, stats
    block_c, block_s = _channel_tiles(C, h * w)
    n_blocks = triton.cdiv(C, block_c)
    part = torch.empty((P, n_blocks, h * w), dtype=s.dtype, device=s.device)
    wrap_triton(_gradcam_partial_kernel)[(P, n_blocks)](
        features,
        grads,
        wts,
        part,
        C,
        h,
        w,
        *features.stride(),
        *grads.stride(),
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        num_warps=_CHANNEL_WARPS,
    )
    cfg, n_ty, n_tx = _map_tiles(h, w, H, W)
    wrap_triton(_map_stats_kernel)[(P,)](part, s, stats, cam, n_blocks, h, w, H, W, eps, **cfg)
    wrap_triton(_erase_kernel)[(P, n_ty, n_tx)](
        s,
        stats,
        images,
        index,
        erased,
        K,
        h,
        w,
        H,
        W,
        eps,
        sigma,
        omega,
        *images.stride(),
        KP=triton.next_power_of_2(K),
        **cfg,
    )
    return cam, erased, wts, s, stats


@_attention_erase_op.register_fake
def _attention_erase_fake(
    features: Tensor, grads: Tensor, images: Tensor, index: Tensor, sigma: float, omega: float, eps: float
) -> tuple[Tensor, ...]:
    return _forward_outputs(features, images)


def _pairs_by_image(index: Tensor, n_images: int) -> tuple[Tensor, Tensor]:
    """CSR view of ``index``: pairs sorted by image and per-image offsets ``(B + 1,)``."""
    order = torch.argsort(index, stable=True)
    counts = torch.zeros(n_images, dtype=torch.int64, device=index.device)
    counts.scatter_add_(0, index, torch.ones_like(index))
    return order, torch.cat([counts.new_zeros(1), counts.cumsum(0)])


def _backward_outputs(
    features: Tensor, images: Tensor, need_features: bool, need_grads: bool, need_images: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Empty ``dF, dG, dI`` (0-element where not needed; shared by the op and its fake)."""
    return (
        features.new_empty(features.shape if need_features else (0,)),
        features.new_empty(features.shape if need_grads else (0,)),
        images.new_empty(images.shape if need_images else (0,)),
    )


@triton_op("gainx::attention_erase_backward", mutates_args=())
def _attention_erase_backward_op(
    grad_cam: Tensor,
    grad_erased: Tensor,
    features: Tensor,
    images: Tensor,
    index: Tensor,
    wts: Tensor,
    s: Tensor,
    stats: Tensor,
    sigma: float,
    omega: float,
    eps: float,
    need_features: bool,
    need_grads: bool,
    need_images: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """``dF, dG, dI`` of the attention-mining step (0-element tensors where not needed)."""
    df, dg, di = _backward_outputs(features, images, need_features, need_grads, need_images)
    P, C, h, w = features.shape
    B, K, H, W = images.shape
    if P == 0:
        return df.zero_(), dg.zero_(), di.zero_()
    cfg, n_ty, n_tx = _map_tiles(h, w, H, W)
    part = torch.empty((P, n_ty * n_tx, h * w), dtype=s.dtype, device=s.device)
    order, offsets = _pairs_by_image(index, B)
    wrap_triton(_erase_backward_kernel)[(B, n_ty, n_tx)](
        s,
        stats,
        images,
        order,
        offsets,
        grad_erased,
        di,
        part,
        K,
        h,
        w,
        H,
        W,
        eps,
        sigma,
        omega,
        *images.stride(),
        *grad_erased.stride(),
        KP=triton.next_power_of_2(K),
        NEED_IMAGES=need_images,
        **cfg,
    )
    ds = torch.empty_like(s)
    wrap_triton(_map_backward_kernel)[(P,)](
        s, stats, grad_cam, part, ds, n_ty * n_tx, h, w, H, W, eps, *grad_cam.stride(), **cfg
    )
    block_c, block_s = _channel_tiles(C, h * w)
    wrap_triton(_gradcam_backward_kernel)[(P, triton.cdiv(C, block_c))](
        features,
        wts,
        ds,
        df,
        dg,
        C,
        h,
        w,
        *features.stride(),
        BLOCK_C=block_c,
        BLOCK_S=block_s,
        NEED_FEATURES=need_features,
        NEED_GRADS=need_grads,
        num_warps=_CHANNEL_WARPS,
    )
    return df, dg, di


@_attention_erase_backward_op.register_fake
def _attention_erase_backward_fake(
    grad_cam: Tensor,
    grad_erased: Tensor,
    features: Tensor,
    images: Tensor,
    index: Tensor,
    wts: Tensor,
    s: Tensor,
    stats: Tensor,
    sigma: float,
    omega: float,
    eps: float,
    need_features: bool,
    need_grads: bool,
    need_images: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    return _backward_outputs(features, images, need_features, need_grads, need_images)


def _setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
    features, _grads, images, index, sigma, omega, eps = inputs
    _cam, _erased, wts, s, stats = output
    ctx.save_for_backward(features, images, index, wts, s, stats)
    ctx.mark_non_differentiable(wts, s, stats)
    ctx.hyper = (sigma, omega, eps)


def _backward(
    ctx: Any, grad_cam: Tensor | None, grad_erased: Tensor | None, *_internal: Tensor | None
) -> tuple[Tensor | None, ...]:
    features, images, index, wts, s, stats = ctx.saved_tensors
    need_f, need_g, need_i = ctx.needs_input_grad[:3]
    P, _, h, w = features.shape
    if grad_cam is None:
        grad_cam = features.new_zeros(()).expand(P, h, w)
    if grad_erased is None:
        grad_erased = images.new_zeros(()).expand(P, *images.shape[1:])
    df, dg, di = torch.ops.gainx.attention_erase_backward(
        grad_cam,
        grad_erased,
        features,
        images,
        index,
        wts,
        s,
        stats,
        *ctx.hyper,
        bool(need_f),
        bool(need_g),
        bool(need_i),
    )
    return (df if need_f else None, dg if need_g else None, di if need_i else None, None, None, None, None)


_attention_erase_op.register_autograd(_backward, setup_context=_setup_context)


def _check_inputs(features: Tensor, grads: Tensor, images: Tensor, index: Tensor, index_range: bool = True) -> None:
    """Clear errors for inputs the kernels cannot take (shape, dtype, device and, with ``index_range``, index range)."""
    if features.dim() != 4 or grads.shape != features.shape:
        raise ValueError(
            f"features and grads must both be (P, C, h, w); got features {tuple(features.shape)}, "
            f"grads {tuple(grads.shape)}"
        )
    if images.dim() != 4:
        raise ValueError(f"images must be (B, 3, H, W); got {tuple(images.shape)}")
    if index.dim() != 1 or index.shape[0] != features.shape[0]:
        raise ValueError(
            f"index must be (P,) with P = features.shape[0] = {features.shape[0]}; got {tuple(index.shape)}"
        )
    for name, t in (("features", features), ("grads", grads), ("images", images)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64; got {t.dtype}")
    if grads.dtype != features.dtype:
        raise TypeError(f"grads dtype {grads.dtype} differs from features dtype {features.dtype}")
    if index.dtype != torch.int64:
        raise TypeError(f"index must be int64; got {index.dtype}")
    devices = {t.device for t in (features, grads, images, index)}
    if len(devices) != 1:
        raise ValueError(f"features, grads, images and index must be on one device; got {sorted(map(str, devices))}")
    if features.device.type != "cuda" and not _INTERPRETED:
        raise RuntimeError(
            f"the triton and fused backends need CUDA tensors (got {features.device}) or TRITON_INTERPRET=1 "
            "set before gainx.ops.attention_erase_triton is imported; use backend='eager' on CPU"
        )
    P, C, h, w = features.shape
    if C == 0 or h == 0 or w == 0 or images.shape[0] == 0 or images.shape[2] == 0 or images.shape[3] == 0:
        raise ValueError(f"empty dimension: features {tuple(features.shape)}, images {tuple(images.shape)}")
    if h > _MAX_MAP_SIDE or w > _MAX_MAP_SIDE:
        raise ValueError(
            f"feature maps up to {_MAX_MAP_SIDE}x{_MAX_MAP_SIDE} are supported by the triton backend; "
            f"got {h}x{w} (use backend='eager')"
        )
    if index_range and P and not torch.compiler.is_compiling():
        _check_index_range(index, images.shape[0])


def _check_index_range(index: Tensor, n_images: int) -> None:
    """IndexError for pairs pointing outside the batch; on CUDA an asynchronous
    device-side assert (no host sync), as ``index_select`` in the reference."""
    message = f"index values must lie in [0, {n_images}) (images.shape[0])"
    inside = (index >= 0) & (index < n_images)
    if index.device.type == "cuda":
        torch._assert_async(inside.all(), message)
    elif not bool(inside.all()):
        raise IndexError(f"{message}; got {index[~inside][:5].tolist()}")


def attention_erase_triton(
    features: Tensor,
    grads: Tensor,
    images: Tensor,
    index: Tensor,
    sigma: float = 0.5,
    omega: float = 10.0,
    eps: float = EPS,
) -> ErasedPairs:
    """Fused Triton version of :func:`gainx.ops.attention_erase.attention_erase_eager` (eq. 1-4).

    Same arguments and results; differentiable w.r.t. ``features``, ``grads``
    (second-order GAIN) and ``images``. ``cam`` has the dtype of ``features``,
    ``erased`` that of ``images``; all arithmetic is fp32 (fp64 for fp64 inputs).
    """
    _check_inputs(features, grads, images, index)
    cam, erased, *_ = torch.ops.gainx.attention_erase(
        features, grads, images, index, float(sigma), float(omega), float(eps)
    )
    return ErasedPairs(cam=cam, erased=erased)
