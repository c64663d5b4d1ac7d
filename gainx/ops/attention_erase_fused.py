"""The ``"fused"`` backend: the attention-mining step (paper eq. 1-4) in 2 launches forward, 3 backward.

Same semantics as :func:`gainx.ops.attention_erase.attention_erase_eager` (see
:mod:`gainx.ops.attention_erase_triton` for the math). The op performs no ATen
operation other than allocating its buffers and never synchronizes with the
host: every reduction, index lookup and bounds check runs in a kernel.

Bilinear upsampling (align_corners=False, :func:`gainx.ops.cam.upsample`) is
evaluated as 4 gathers + 3 lerps per output pixel (:func:`_gather_up`), not as
padded matrix products. The min and max of ``up(A)`` over the ``H x W`` image
are found on a small candidate grid instead of the whole image: between two
run ends (the first and last output row, or column, that share the same lower
tap) the upsampled value is bilinear in the two interpolation weights, so its
extremes lie on run ends; :func:`_run_ends` lists, for every lower tap ``i``,
the rows around the first row whose tap reaches ``i`` (4 per tap, a superset
of the run ends, robust to rounding of the inverse map). At 7 -> 224 that is
32 x 32 gathers per program instead of 224 x 224.

Kernels (P pairs, C channels, ``h x w`` maps, ``B x K x H x W`` images; each
program of the tile kernels owns one ``BLOCK_H x BLOCK_W`` tile, ``T`` tiles
per image; bytes for fp32, ``c`` = C / BLOCK_C channel blocks):

forward  1. ``_gradcam_partial_kernel`` (reused from :mod:`gainx.ops.attention_erase_triton`),
            grid (P, c): ``w = GAP(G)`` and per-block partials of ``sum_c w_c F_c``.
            Reads F and G once (``8 P C h w``), writes ``4 P (C + c h w)``.
         2. ``_map_erase_kernel`` grid (P, T): issues the image tile load
            first, sums the partials into ``ReLU(S)`` (``4 c h w`` per program,
            L2-resident), gathers the candidate grid for ``lo``/``hi``, and
            writes ``I* = I[index] (1 - T(N))`` for its tile, with
            ``N = (up(ReLU S) - lo) / (hi - lo + eps |hi|)`` (0 for a flat map).
            HBM: reads ``I`` through ``index`` (``4 P K H W``), writes ``I*``
            (``4 P K H W``); the tile-0 program also writes ``cam``, ``ReLU S``
            and ``lo, hi``. Each program keeps a private copy of ``ReLU S``
            (``4 h w``) to gather from.
backward 3. ``_erase_backward_kernel`` grid (B, T): loads the image tile once,
            then for every pair of that image (a scan of ``index``: no sort)
            recomputes ``N`` on the tile (gathers from ``ReLU S``), reads
            ``dI*`` (``4 K`` per pixel and pair), accumulates
            ``dI = sum_p dI*_p (1 - T_p)`` in registers and writes it once
            (``4 B K H W``); per (pair, tile) it writes the adjoint upsample of
            ``dL/dN`` and of the tie indicators of ``lo``/``hi`` (``12 h w``)
            and the tie counts. The full-resolution map is computed once per
            pass (forward, backward), never stored.
         4. ``_map_backward_kernel`` grid (P,): sums those partials over the
            tiles (``12 T h w`` per pair) and applies the min-max normalization
            and ReLU backward: ``dL/dS`` (``4 h w``).
         5. ``_gradcam_backward_kernel`` (reused), grid (P, c): ``dF = w dS``,
            ``dG = mean(dS F)``. Reads F (``4 P C h w``), writes dF and dG.

The adjoint upsample (a reduction onto the ``h x w`` map) is two small
``tl.dot`` calls with the 2-tap interpolation matrices of the tile.

An ``index`` entry outside ``[0, B)`` is never read out of bounds: the kernels
clamp it, the pair's ``cam`` and ``erased`` (and its input gradients) are NaN.
:func:`attention_erase_fused` also raises ``IndexError`` for such an index on
CPU tensors; on CUDA it adds no host check (the NaN is the device-side flag).

The op is ``torch.ops.gainx.attention_erase_fused`` (a
``torch.library.triton_op`` with a fake and an autograd formula); kernels run
on CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor
from torch.library import triton_op, wrap_triton

from gainx.ops.attention_erase import ErasedPairs
from gainx.ops.attention_erase_triton import (
    _acc_dtype,
    _channel_tiles,
    _check_inputs,
    _denominator,
    _gradcam_backward_kernel,
    _gradcam_partial_kernel,
    _interp_weights,
    _is_flat,
    _low_res_offsets,
    _normalize,
    _pow2_at_least,
    _scalar,
    _soft_mask,
    _taps,
    _upsample_adjoint,
)
from gainx.ops.cam import EPS


class Tile(NamedTuple):
    """Tile of a tile kernel: ``block_h x block_w`` output pixels (at most: narrower images take the next power
    of two >= 16 of their width) on ``warps`` warps. ``block_h, block_w >= 16`` (the adjoint's ``tl.dot``)."""

    block_h: int
    block_w: int
    warps: int


# Defaults: no register spills when compiled for sm_90 (tests/test_triton_compile.py checks them; ptxas reports
# about 110 registers per thread for the forward tile, 190 for the backward one); TILE_CANDIDATES is the tuning
# sweep's space (bench/tune_attention_erase.py prunes the candidates that spill before timing the rest).
FORWARD_TILE = Tile(16, 64, 4)
BACKWARD_TILE = Tile(16, 64, 8)
TILE_CANDIDATES = (Tile(16, 32, 4), Tile(16, 64, 4), Tile(16, 64, 8), Tile(16, 128, 8), Tile(32, 64, 8))
CHANNEL_WARPS = 8  # num_warps of the (reused) channel kernels

# --------------------------------------------------------------------------- kernels


@triton.jit
def _gather_up(low_ptr, ys, xs, h, w, H, W, dtype: tl.constexpr):
    """``up(low)`` at rows ``ys`` ``(R, 1)`` x columns ``xs`` ``(1, S)`` (inside the image):
    4 gathers from the row-major ``h x w`` map at ``low_ptr``, a lerp along x then along y.

    Each lerp ``a + l (b - a)`` is an explicit fma: the compiler cannot contract it differently in
    different kernels, so the forward's ``lo``/``hi`` and the backward's tie test ``up == lo`` see
    bit-identical values for the same pixel."""
    r0, r1, ly = _taps(ys, h, H, dtype)
    c0, c1, lx = _taps(xs, w, W, dtype)
    a00 = tl.load(low_ptr + r0 * w + c0)
    a10 = tl.load(low_ptr + r1 * w + c0)
    top = tl.fma(lx, tl.load(low_ptr + r0 * w + c1) - a00, a00)
    bottom = tl.fma(lx, tl.load(low_ptr + r1 * w + c1) - a10, a10)
    return tl.fma(ly, bottom - top, top)


@triton.jit
def _run_ends(n_in, n_out, N_TAPS: tl.constexpr, dtype: tl.constexpr):
    """Output positions (clamped to ``[0, n_out)``) that include every run end of the lower tap.

    The first output whose lower tap reaches ``i`` is ``ceil((i + 0.5) n_out / n_in - 0.5)``
    (``i = 0..n_in``; ``i = n_in`` gives the last output); that position and the one before it
    are run ends. Positions ``floor(.) - 2 .. floor(.) + 1`` cover both, with one position of
    slack for rounding; extra positions are real pixels and cannot change the min or max.
    """
    c = tl.arange(0, N_TAPS * 4)
    i = c // 4
    e = (i.to(dtype) + 0.5) * (tl.cast(n_out, dtype) / tl.cast(n_in, dtype)) - 0.5
    pos = tl.maximum(e, 0.0).to(tl.int32) + (c % 4) - 2
    return tl.minimum(tl.maximum(pos, 0), n_out - 1)


@triton.jit
def _extremes(low_ptr, h, w, H, W, dtype: tl.constexpr, HC: tl.constexpr, WC: tl.constexpr):
    """``min, max`` of ``up(low)`` over the ``H x W`` image, from the run-end candidates."""
    ys = _run_ends(h, H, HC, dtype)[:, None]
    xs = _run_ends(w, W, WC, dtype)[None, :]
    up = _gather_up(low_ptr, ys, xs, h, w, H, W, dtype)
    return tl.min(tl.min(up, axis=1), axis=0), tl.max(tl.max(up, axis=1), axis=0)


@triton.jit
def _tile_coords(ty, tx, H, W, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Rows ``(BLOCK_H,)`` and columns ``(BLOCK_W,)`` of a tile, the same clamped into the image
    (gather coordinates), and the tile's in-image mask ``(BLOCK_H, BLOCK_W)``."""
    ys = ty * BLOCK_H + tl.arange(0, BLOCK_H)
    xs = tx * BLOCK_W + tl.arange(0, BLOCK_W)
    inside = (ys < H)[:, None] & (xs < W)[None, :]
    return ys, xs, tl.minimum(ys, H - 1)[:, None], tl.minimum(xs, W - 1)[None, :], inside


@triton.jit
def _image_tile(img_ptr, b, K, ys, xs, inside, si_b, si_k, si_h, si_w, KP: tl.constexpr, dtype: tl.constexpr):
    """``(KP, BLOCK_H, BLOCK_W)`` tile of image ``b`` (zero outside the image and beyond K channels)."""
    k = tl.arange(0, KP)[:, None, None]
    ptrs = img_ptr + b * si_b + k * si_k + ys[None, :, None] * si_h + xs[None, None, :] * si_w
    return tl.load(ptrs, mask=(k < K) & inside[None, :, :], other=0.0).to(dtype)


@triton.jit
def _map_erase_kernel(
    part_ptr,
    scratch_ptr,
    raw_ptr,
    stats_ptr,
    cam_ptr,
    img_ptr,
    index_ptr,
    out_ptr,
    n_blocks,
    B,
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
    HC: tl.constexpr,
    WC: tl.constexpr,
    KP: tl.constexpr,
):
    """``I*[p] = I[index[p]] (1 - T(N))`` on one tile; the tile-0 program also stores ``ReLU S``,
    ``lo, hi`` and ``cam``. NaN outputs for an ``index[p]`` outside ``[0, B)``."""
    p = tl.program_id(0).to(tl.int64)
    ty = tl.program_id(1)
    tx = tl.program_id(2)
    tile = ty * tl.num_programs(2) + tx
    acc = raw_ptr.dtype.element_ty
    eps, sigma, omega = _scalar(eps, acc), _scalar(sigma, acc), _scalar(omega, acc)
    b = tl.load(index_ptr + p)
    valid = (b >= 0) & (b < B)
    ys, xs, ys_in, xs_in, inside = _tile_coords(ty, tx, H, W, BLOCK_H, BLOCK_W)
    x = _image_tile(img_ptr, tl.where(valid, b, 0), K, ys, xs, inside, si_b, si_k, si_h, si_w, KP, acc)
    off, low_inside = _low_res_offsets(h, w, HP, WP)
    hw = h * w
    s = tl.zeros((HP, WP), dtype=acc)
    for cb in range(n_blocks):
        s += tl.load(part_ptr + (p * n_blocks + cb) * hw + off, mask=low_inside, other=0.0)
    raw = tl.maximum(s, 0.0)
    own = scratch_ptr + (p * tl.num_programs(1) * tl.num_programs(2) + tile) * hw
    tl.store(own + off, raw, mask=low_inside)
    tl.debug_barrier()  # the gathers below read what every thread of the program stored
    lo, hi = _extremes(own, h, w, H, W, acc, HC, WC)
    n = _normalize(_gather_up(own, ys_in, xs_in, h, w, H, W, acc), lo, hi, eps)
    out = tl.where(valid, x * (1.0 - _soft_mask(n, sigma, omega))[None, :, :], float("nan"))
    k = tl.arange(0, KP)[:, None, None]
    dst = out_ptr + ((p * K + k) * H + ys[None, :, None]) * W + xs[None, None, :]
    tl.store(dst, out.to(out_ptr.dtype.element_ty), mask=(k < K) & inside[None, :, :])
    if tile == 0:
        tl.store(raw_ptr + p * hw + off, raw, mask=low_inside)
        tl.store(stats_ptr + 2 * p, lo)
        tl.store(stats_ptr + 2 * p + 1, hi)
        cam = tl.where(valid, _normalize(raw, lo, hi, eps), float("nan"))
        tl.store(cam_ptr + p * hw + off, cam.to(cam_ptr.dtype.element_ty), mask=low_inside)


@triton.jit
def _erase_backward_kernel(
    raw_ptr,
    stats_ptr,
    img_ptr,
    index_ptr,
    ge_ptr,
    di_ptr,
    part_ptr,
    count_ptr,
    P,
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
    NEED_MAP: tl.constexpr,
    HAS_GE: tl.constexpr,
):
    """Image ``b``, one tile: ``dI = sum_{p: index[p] = b} dI*_p (1 - T_p)`` and, per such pair,
    ``part[p, tile] = (R^T dL/dN, R^T 1[up = lo], R^T 1[up = hi])`` with
    ``dL/dN = -omega T (1 - T) sum_k dI*_pk I_k``, and the tie counts ``count[p, tile]``."""
    b = tl.program_id(0)
    ty = tl.program_id(1)
    tx = tl.program_id(2)
    n_tiles = tl.num_programs(1) * tl.num_programs(2)
    tile = ty * tl.num_programs(2) + tx
    acc = raw_ptr.dtype.element_ty
    eps, sigma, omega = _scalar(eps, acc), _scalar(sigma, acc), _scalar(omega, acc)
    ys, xs, ys_in, xs_in, inside = _tile_coords(ty, tx, H, W, BLOCK_H, BLOCK_W)
    x = _image_tile(img_ptr, b.to(tl.int64), K, ys, xs, inside, si_b, si_k, si_h, si_w, KP, acc)
    k = tl.arange(0, KP)[:, None, None]
    pix = (k < K) & inside[None, :, :]
    dx = tl.zeros((KP, BLOCK_H, BLOCK_W), dtype=acc)
    rh = _interp_weights(ys, h, H, HP, x)
    rw = _interp_weights(xs, w, W, WP, x)
    off, low_inside = _low_res_offsets(h, w, HP, WP)
    hw = h * w
    for q in range(P):
        p = tl.cast(q, tl.int64)
        if tl.load(index_ptr + p) == b:
            lo = tl.load(stats_ptr + 2 * p)
            hi = tl.load(stats_ptr + 2 * p + 1)
            up = _gather_up(raw_ptr + p * hw, ys_in, xs_in, h, w, H, W, acc)
            t = _soft_mask(_normalize(up, lo, hi, eps), sigma, omega)
            ge = tl.zeros((KP, BLOCK_H, BLOCK_W), dtype=acc)
            if HAS_GE:  # else erased was not used: dL/dI* = 0
                ge_ptrs = ge_ptr + p * sg_p + k * sg_k + ys[None, :, None] * sg_h + xs[None, None, :] * sg_w
                ge = tl.load(ge_ptrs, mask=pix, other=0.0).to(acc)
            if NEED_IMAGES:
                dx += ge * (1.0 - t)[None, :, :]
            if NEED_MAP:
                dn = tl.where(inside, -tl.sum(ge * x, axis=0) * omega * t * (1.0 - t), 0.0)
                at_lo = tl.where(inside & (up == lo), 1.0, 0.0).to(acc)
                at_hi = tl.where(inside & (up == hi), 1.0, 0.0).to(acc)
                n_lo = tl.sum(tl.sum(at_lo, axis=1), axis=0)
                n_hi = tl.sum(tl.sum(at_hi, axis=1), axis=0)
                tie_lo = tl.zeros((HP, WP), dtype=acc)
                tie_hi = tl.zeros((HP, WP), dtype=acc)
                if n_lo > 0:  # most tiles hold no extremum
                    tie_lo = _upsample_adjoint(at_lo, rh, rw)
                if n_hi > 0:
                    tie_hi = _upsample_adjoint(at_hi, rh, rw)
                base = (p * n_tiles + tile) * 3
                tl.store(part_ptr + base * hw + off, _upsample_adjoint(dn, rh, rw), mask=low_inside)
                tl.store(part_ptr + (base + 1) * hw + off, tie_lo, mask=low_inside)
                tl.store(part_ptr + (base + 2) * hw + off, tie_hi, mask=low_inside)
                tl.store(count_ptr + (p * n_tiles + tile) * 2, n_lo)
                tl.store(count_ptr + (p * n_tiles + tile) * 2 + 1, n_hi)
    if NEED_IMAGES:
        dst = di_ptr + ((b.to(tl.int64) * K + k) * H + ys[None, :, None]) * W + xs[None, None, :]
        tl.store(dst, dx.to(di_ptr.dtype.element_ty), mask=pix)


@triton.jit
def _map_backward_kernel(
    raw_ptr,
    stats_ptr,
    gcam_ptr,
    part_ptr,
    count_ptr,
    index_ptr,
    ds_ptr,
    n_tiles,
    B,
    h,
    w,
    eps: tl.float64,
    sc_p,
    sc_h,
    sc_w,
    HP: tl.constexpr,
    WP: tl.constexpr,
    HAS_GCAM: tl.constexpr,
):
    """``dL/dS`` of pair ``p`` from ``dL/dcam`` = output gradient + the tiles' adjoint partials.

    With ``d = hi - lo + eps |hi|``: ``dcam/dA = 1/d``, ``dcam/dlo = (cam - 1)/d``,
    ``dcam/dhi = -(1 + eps) cam/d``; ``dlo/dA = R^T 1[up(A) = lo] / #ties`` (same for hi, as
    ``amin``/``amax`` split ties); ``dA/dS = 1[S > 0]``; 0 for a flat map, NaN for a bad index.
    """
    p = tl.program_id(0).to(tl.int64)
    acc = raw_ptr.dtype.element_ty
    eps = _scalar(eps, acc)
    off, inside = _low_res_offsets(h, w, HP, WP)
    hw = h * w
    raw = tl.load(raw_ptr + p * hw + off, mask=inside, other=0.0)
    lo = tl.load(stats_ptr + 2 * p)
    hi = tl.load(stats_ptr + 2 * p + 1)
    d = _denominator(lo, hi, eps)
    cam = tl.where(inside, (raw - lo) / d, 0.0)
    i = tl.arange(0, HP)[:, None]
    j = tl.arange(0, WP)[None, :]
    gc = tl.zeros((HP, WP), dtype=acc)
    if HAS_GCAM:  # else cam was not used: dL/dcam has the partials only
        gc += tl.load(gcam_ptr + p * sc_p + i * sc_h + j * sc_w, mask=inside, other=0.0).to(acc)
    tie_lo = tl.zeros((HP, WP), dtype=acc)
    tie_hi = tl.zeros((HP, WP), dtype=acc)
    n_lo = tl.full((), 0.0, acc)
    n_hi = tl.full((), 0.0, acc)
    for t in range(n_tiles):
        base = (p * n_tiles + t) * 3
        gc += tl.load(part_ptr + base * hw + off, mask=inside, other=0.0)
        tie_lo += tl.load(part_ptr + (base + 1) * hw + off, mask=inside, other=0.0)
        tie_hi += tl.load(part_ptr + (base + 2) * hw + off, mask=inside, other=0.0)
        n_lo += tl.load(count_ptr + (p * n_tiles + t) * 2)
        n_hi += tl.load(count_ptr + (p * n_tiles + t) * 2 + 1)
    d_lo = tl.sum(tl.sum(gc * (cam - 1.0), axis=1), axis=0) / d / tl.maximum(n_lo, 1.0)
    d_hi = -(1.0 + eps) * tl.sum(tl.sum(gc * cam, axis=1), axis=0) / d / tl.maximum(n_hi, 1.0)
    draw = tl.where(_is_flat(lo, hi), 0.0, gc / d + d_lo * tie_lo + d_hi * tie_hi)
    b = tl.load(index_ptr + p)
    ds = tl.where((b >= 0) & (b < B), tl.where(raw > 0.0, draw, 0.0), float("nan"))
    tl.store(ds_ptr + p * hw + off, ds, mask=inside)


# --------------------------------------------------------------------------- host side


def _launch(kernel: Any, grid: tuple[int, ...], *args: Any, **meta: Any) -> None:
    """Every kernel launch of the op goes through here (tests count them)."""
    wrap_triton(kernel)[grid](*args, **meta)


def tile_config(tile: Tile, h: int, w: int, W: int) -> dict[str, int]:
    """Constexprs of a tile kernel: ``BLOCK_H x BLOCK_W`` and the padded map ``HP x WP`` (>= 16 for the
    adjoint's ``tl.dot``)."""
    return {
        "BLOCK_H": tile.block_h,
        "BLOCK_W": min(tile.block_w, _pow2_at_least(W, 16)),
        "HP": _pow2_at_least(h, 16),
        "WP": _pow2_at_least(w, 16),
    }


def _tiles(cfg: dict[str, int], H: int, W: int) -> tuple[int, int]:
    return triton.cdiv(H, cfg["BLOCK_H"]), triton.cdiv(W, cfg["BLOCK_W"])


def _forward_outputs(features: Tensor, images: Tensor) -> tuple[Tensor, ...]:
    """Empty ``cam, erased, w (P, C), ReLU S (P, h*w), [lo, hi] (P, 2)`` (shared by the op and its fake)."""
    P, C, h, w = features.shape
    acc = _acc_dtype(features, images)
    dev = features.device
    return (
        features.new_empty((P, h, w)),
        images.new_empty((P, *images.shape[1:])),
        torch.empty((P, C), dtype=acc, device=dev),
        torch.empty((P, h * w), dtype=acc, device=dev),
        torch.empty((P, 2), dtype=acc, device=dev),
    )


def _forward(
    features: Tensor, grads: Tensor, images: Tensor, index: Tensor, sigma: float, omega: float, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The op's body: ``cam, erased`` and, for backward, ``w``, ``ReLU S`` and ``[lo, hi]``."""
    cam, erased, wts, raw, stats = _forward_outputs(features, images)
    P, C, h, w = features.shape
    B, K, H, W = images.shape
    if P == 0:
        return cam, erased, wts, raw, stats
    block_c, block_s = _channel_tiles(C, h * w)
    n_blocks = triton.cdiv(C, block_c)
    part = torch.empty((P, n_blocks, h * w), dtype=raw.dtype, device=raw.device)
    _launch(
        _gradcam_partial_kernel,
        (P, n_blocks),
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
        num_warps=CHANNEL_WARPS,
    )
    tile = FORWARD_TILE
    cfg = tile_config(tile, h, w, W)
    n_ty, n_tx = _tiles(cfg, H, W)
    scratch = torch.empty((P, n_ty * n_tx, h * w), dtype=raw.dtype, device=raw.device)
    _launch(
        _map_erase_kernel,
        (P, n_ty, n_tx),
        part,
        scratch,
        raw,
        stats,
        cam,
        images,
        index,
        erased,
        n_blocks,
        B,
        K,
        h,
        w,
        H,
        W,
        eps,
        sigma,
        omega,
        *images.stride(),
        HC=triton.next_power_of_2(h + 1),
        WC=triton.next_power_of_2(w + 1),
        KP=triton.next_power_of_2(K),
        num_warps=tile.warps,
        **cfg,
    )
    return cam, erased, wts, raw, stats


_fused_op = triton_op("gainx::attention_erase_fused", mutates_args=())(_forward)


@_fused_op.register_fake
def _fused_fake(
    features: Tensor, grads: Tensor, images: Tensor, index: Tensor, sigma: float, omega: float, eps: float
) -> tuple[Tensor, ...]:
    return _forward_outputs(features, images)


def _backward_outputs(
    features: Tensor, images: Tensor, need_features: bool, need_grads: bool, need_images: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """Empty ``dF, dG, dI`` (0-element where not needed; shared by the op and its fake)."""
    return (
        features.new_empty(features.shape if need_features else (0,)),
        features.new_empty(features.shape if need_grads else (0,)),
        images.new_empty(images.shape if need_images else (0,)),
    )


def _backward_body(
    grad_cam: Tensor,
    grad_erased: Tensor,
    features: Tensor,
    images: Tensor,
    index: Tensor,
    wts: Tensor,
    raw: Tensor,
    stats: Tensor,
    sigma: float,
    omega: float,
    eps: float,
    need_features: bool,
    need_grads: bool,
    need_images: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """The backward op's body: ``dF, dG, dI`` (0-element tensors where not needed)."""
    df, dg, di = _backward_outputs(features, images, need_features, need_grads, need_images)
    has_ge, has_gcam = grad_erased.numel() > 0, grad_cam.numel() > 0  # an empty gradient stands for zeros
    P, C, h, w = features.shape
    B, K, H, W = images.shape
    need_map = need_features or need_grads
    if not (need_images or (need_map and P)):
        return df, dg, di
    tile = BACKWARD_TILE
    cfg = tile_config(tile, h, w, W)
    n_ty, n_tx = _tiles(cfg, H, W)
    n_tiles = n_ty * n_tx if need_map else 0
    part = torch.empty((P, n_tiles, 3, h * w), dtype=raw.dtype, device=raw.device)
    counts = torch.empty((P, n_tiles, 2), dtype=raw.dtype, device=raw.device)
    _launch(
        _erase_backward_kernel,
        (B, n_ty, n_tx),
        raw,
        stats,
        images,
        index,
        grad_erased,
        di,
        part,
        counts,
        P,
        K,
        h,
        w,
        H,
        W,
        eps,
        sigma,
        omega,
        *images.stride(),
        *(grad_erased.stride() if has_ge else (0, 0, 0, 0)),
        KP=triton.next_power_of_2(K),
        NEED_IMAGES=need_images,
        NEED_MAP=need_map,
        HAS_GE=has_ge,
        num_warps=tile.warps,
        **cfg,
    )
    if not (need_map and P):
        return df, dg, di
    ds = torch.empty_like(raw)
    _launch(
        _map_backward_kernel,
        (P,),
        raw,
        stats,
        grad_cam,
        part,
        counts,
        index,
        ds,
        n_tiles,
        B,
        h,
        w,
        eps,
        *(grad_cam.stride() if has_gcam else (0, 0, 0)),
        HP=cfg["HP"],
        WP=cfg["WP"],
        HAS_GCAM=has_gcam,
    )
    block_c, block_s = _channel_tiles(C, h * w)
    _launch(
        _gradcam_backward_kernel,
        (P, triton.cdiv(C, block_c)),
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
        num_warps=CHANNEL_WARPS,
    )
    return df, dg, di


_fused_backward_op = triton_op("gainx::attention_erase_fused_backward", mutates_args=())(_backward_body)


@_fused_backward_op.register_fake
def _fused_backward_fake(
    grad_cam: Tensor,
    grad_erased: Tensor,
    features: Tensor,
    images: Tensor,
    index: Tensor,
    wts: Tensor,
    raw: Tensor,
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
    _cam, _erased, wts, raw, stats = output
    ctx.save_for_backward(features, images, index, wts, raw, stats)
    ctx.mark_non_differentiable(wts, raw, stats)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for the unused outputs
    ctx.hyper = (sigma, omega, eps)


def _backward(
    ctx: Any, grad_cam: Tensor | None, grad_erased: Tensor | None, *_internal: Tensor | None
) -> tuple[Tensor | None, ...]:
    features, images, index, wts, raw, stats = ctx.saved_tensors
    need_f, need_g, need_i = (bool(n) for n in ctx.needs_input_grad[:3])
    # an unused output's gradient is passed as an empty tensor, read as zeros (nothing filled)
    grad_cam = features.new_empty((0,)) if grad_cam is None else grad_cam
    grad_erased = images.new_empty((0,)) if grad_erased is None else grad_erased
    df, dg, di = torch.ops.gainx.attention_erase_fused_backward(
        grad_cam, grad_erased, features, images, index, wts, raw, stats, *ctx.hyper, need_f, need_g, need_i
    )
    return (df if need_f else None, dg if need_g else None, di if need_i else None, None, None, None, None)


_fused_op.register_autograd(_backward, setup_context=_setup_context)


def attention_erase_fused(
    features: Tensor,
    grads: Tensor,
    images: Tensor,
    index: Tensor,
    sigma: float = 0.5,
    omega: float = 10.0,
    eps: float = EPS,
) -> ErasedPairs:
    """The attention-mining step (eq. 1-4) on the fused kernels of this module.

    Same arguments and results as :func:`gainx.ops.attention_erase.attention_erase_eager`;
    differentiable w.r.t. ``features``, ``grads`` (second-order GAIN) and ``images``. ``cam``
    has the dtype of ``features``, ``erased`` that of ``images``; arithmetic in fp32 (fp64
    for fp64 inputs). Shapes and dtypes are checked on the host (no device work); the index
    range is checked on the host for CPU tensors only (see the module docstring for CUDA).
    """
    _check_inputs(features, grads, images, index, index_range=features.device.type == "cpu")
    cam, erased, *_ = torch.ops.gainx.attention_erase_fused(
        features, grads, images, index, float(sigma), float(omega), float(eps)
    )
    return ErasedPairs(cam=cam, erased=erased)
