"""The ``"fused"`` attention-mining backend (:mod:`gainx.ops.attention_erase_fused`) against the eager reference,
and the design it promises: 2 kernel launches forward, 3 backward, no ATen work besides allocations inside the op.

Without a CUDA device the kernels run in Triton's interpreter (``erase_helpers`` sets ``TRITON_INTERPRET`` first).
"""

from __future__ import annotations

import pytest
import torch
from erase_helpers import (  # tests/ is on sys.path under pytest
    DEVICES,
    SHAPES,
    TOL,
    assert_close,
    assert_compiled_matches_eager,
    assert_gain_step_matches_eager,
    assert_gradcheck,
    assert_no_pairs,
    compare,
    inputs,
    opcheck,
    require_interpreter,
)
from torch.utils._python_dispatch import TorchDispatchMode

from gainx.ops import EPS, attention_erase, attention_erase_eager, available_backends, upsample
from gainx.ops import attention_erase_fused as fused
from gainx.ops.attention_erase_triton import _INTERPRETED

require_interpreter(_INTERPRETED, "tests/test_attention_erase_fused.py")

FUSED_SHAPES = {
    **SHAPES,
    "scale_9_image_without_pair": (2, 3, 7, 7, 3, 64, 48, [2, 2]),
    "one_by_one_map": (2, 1, 1, 1, 1, 9, 5, [0, 0]),
    "two_column_tiles": (2, 3, 5, 4, 1, 9, 70, [0, 0]),  # W = 70 > the 64-wide tiles
}
ALLOCATIONS = {"aten.empty.memory_format", "aten.empty_like.default", "aten.new_empty.default"}


# every shape in fp64 and fp32; the half types on two shapes (their error is the storage rounding)
HALF_SHAPES = ("odd_7x5_to_33x29", "many_classes_multi_tile")
CASES = [(name, dtype) for name in FUSED_SHAPES for dtype in (torch.float64, torch.float32)] + [
    (name, dtype) for name in HALF_SHAPES for dtype in (torch.float16, torch.bfloat16)
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("shape", "dtype"), CASES, ids=[f"{name}-{dtype}" for name, dtype in CASES])
def test_values_and_gradients_match_eager(shape: str, dtype: torch.dtype, device: str) -> None:
    compare(fused.attention_erase_fused, FUSED_SHAPES[shape], dtype, device)


@pytest.mark.parametrize("device", DEVICES)
def test_fp64_hyperparameters_are_not_rounded(device: str) -> None:
    compare(fused.attention_erase_fused, SHAPES["odd_7x5_to_33x29"], torch.float64, device, sigma=0.55, omega=10.3)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("h", "w", "H", "W"),
    [(7, 7, 112, 3), (7, 5, 33, 29), (3, 9, 50, 4), (9, 9, 5, 6), (16, 2, 7, 64), (1, 3, 2, 17), (5, 5, 5, 5)],
)
def test_extremes_from_run_ends_equal_full_image(h: int, w: int, H: int, W: int, device: str) -> None:
    """``lo, hi`` found on the run-end candidates are the min and max of the whole upsampled map
    (up- and downsampling, scale 1, 1-pixel maps), up to the rounding of the interpolation formula."""
    gen = torch.Generator().manual_seed(h * 1000 + W)
    features = torch.randn(2, 1, h, w, generator=gen, dtype=torch.float64).to(device)
    images = torch.zeros(1, 3, H, W, dtype=torch.float64, device=device)
    index = torch.zeros(2, dtype=torch.int64, device=device)
    ones = torch.ones_like(features)
    *_, raw, stats = torch.ops.gainx.attention_erase_fused(features, ones, images, index, 0.5, 10.0, EPS)
    up = upsample(features.squeeze(1).clamp_min(0), (H, W))
    torch.testing.assert_close(raw, features.flatten(1).clamp_min(0), rtol=0, atol=0)
    torch.testing.assert_close(stats[:, 0], up.amin(dim=(1, 2)), rtol=1e-13, atol=1e-300)
    torch.testing.assert_close(stats[:, 1], up.amax(dim=(1, 2)), rtol=1e-13, atol=1e-300)


def _tied_map(f: torch.Tensor, g: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Weights (1, 0): the map is channel 0, a small integer map (exact bilinear values at a x4 upsample) whose
    min and max are each attained on several cells and the stretches between them: ties at many pixels.
    Channel 1 (weight 0) gives ``d grads`` a non-zero reference (a map is invariant to its own scale)."""
    tied = torch.tensor([[1.0, 3, 3, 2], [2, 1, 2, 3], [3, 2, 1, 1], [1, 2, 3, 2]], dtype=f.dtype, device=f.device)
    maps = torch.stack([tied, tied.flip(0) + 1.0])
    features = torch.stack([maps, f[:, 1]], dim=1)
    grads = torch.stack([torch.ones_like(maps), torch.zeros_like(maps)], dim=1)
    return features, grads, i


@pytest.mark.parametrize("device", DEVICES)
def test_ties_split_the_min_max_gradient_like_eager(device: str) -> None:
    """Exact ties of the upsampled min and max: the gradient is split evenly between all tied pixels."""
    compare(fused.attention_erase_fused, (2, 2, 4, 4, 1, 16, 16, [0, 0]), torch.float64, device, _tied_map)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "make",
    [
        lambda f, g, i: (f.abs(), -g.abs(), i),  # ReLU kills everything: zero map
        lambda f, g, i: (torch.ones_like(f), torch.ones_like(g), i),  # constant positive map
        lambda f, g, i: (3.7 + 1e-7 * f, torch.ones_like(g), i),  # range below FLAT of the max
    ],
    ids=["zero", "constant", "nearly_constant"],
)
def test_flat_maps_give_zero_cam_like_eager(make, device: str) -> None:
    compare(fused.attention_erase_fused, SHAPES["one_class_per_image"], torch.float64, device, make)
    features, grads, images, index = inputs(SHAPES["one_class_per_image"], torch.float64, device)
    out = fused.attention_erase_fused(*make(features, grads, images), index)
    assert torch.equal(out.cam, torch.zeros_like(out.cam))


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs_and_output_gradients(device: str) -> None:
    features, grads, images, index = inputs(SHAPES["odd_7x5_to_33x29"], torch.float64, device)
    views = (
        features.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),  # channels-last strides
        torch.cat([grads, grads], dim=1)[:, ::2],  # channel stride 2
        images.transpose(2, 3).contiguous().transpose(2, 3),  # column-major pixels
    )
    grad_cam = torch.tensor(0.3, dtype=torch.float64, device=device).expand(3, 7, 5)
    grad_erased = torch.randn(3, 3, 29, 33, dtype=torch.float64, device=device).transpose(2, 3)
    results = []
    for fn in (fused.attention_erase_fused, attention_erase_eager):
        leaves = [t.clone().requires_grad_(True) for t in views]
        out = fn(*leaves, index)
        results.append((out, torch.autograd.grad(list(out), leaves, [grad_cam, grad_erased])))
    (out, grads_), (ref, ref_grads) = results
    for name, a, e in zip(("cam", "erased", "d features", "d grads", "d images"), [*out, *grads_], [*ref, *ref_grads]):
        assert_close(a, e, TOL[torch.float64], name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(("used", "wrt"), [("cam", 0), ("erased", 1), ("erased", 2)])
def test_one_output_one_input(used: str, wrt: int, device: str) -> None:
    """One output used (the other's gradient is None: no zero tensor is filled) and one input requiring grad."""
    data = inputs(SHAPES["one_class_per_image"], torch.float64, device)
    got = []
    for fn in (fused.attention_erase_fused, attention_erase_eager):
        args = list(data)
        args[wrt] = args[wrt].clone().requires_grad_(True)
        out = getattr(fn(*args), used)
        weights = torch.linspace(-1, 1, out.numel(), dtype=out.dtype, device=device).reshape(out.shape)
        grad = torch.autograd.grad((out * weights).sum(), args[wrt], allow_unused=True)[0]
        got.append(torch.zeros_like(args[wrt]) if grad is None else grad)
    assert_close(got[0], got[1], TOL[torch.float64], f"gradient of input {wrt} through {used}")


@pytest.mark.parametrize("device", DEVICES)
def test_no_pairs(device: str) -> None:
    assert_no_pairs(fused.attention_erase_fused, device)


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_fp64(device: str) -> None:
    assert_gradcheck(fused.attention_erase_fused, (2, 2, 3, 3, 2, 7, 5, [1, 0]), device)


@pytest.mark.parametrize("device", DEVICES)
def test_out_of_range_index(device: str) -> None:
    """The op never reads outside the batch: a bad pair's outputs and input gradients are NaN (the device-side
    flag), the other pairs are exact; the public function raises IndexError on CPU tensors."""
    features, grads, images, index = inputs(SHAPES["odd_7x5_to_33x29"], torch.float64, device)
    bad = index.clone()
    bad[1] = 7
    if device == "cpu":
        with pytest.raises(IndexError, match=r"\[0, 2\)"):
            fused.attention_erase_fused(features, grads, images, bad)
    leaves = [t.clone().requires_grad_(True) for t in (features, grads)]
    cam, erased, *_ = torch.ops.gainx.attention_erase_fused(*leaves, images, bad, 0.5, 10.0, EPS)
    d_features, d_grads = torch.autograd.grad((cam.sum(), erased.sum()), leaves)
    assert cam[1].isnan().all() and erased[1].isnan().all()
    assert d_features[1].isnan().all() and d_grads[1].isnan().all()
    good = [0, 2]
    ref = attention_erase_eager(features[good], grads[good], images, index[good])
    assert_close(cam[good], ref.cam, TOL[torch.float64], "cam of the good pairs")
    assert_close(erased[good], ref.erased, TOL[torch.float64], "erased of the good pairs")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    opcheck(torch.ops.gainx.attention_erase_fused.default, device)


class _AtenOps(TorchDispatchMode):
    """Records the name of every operator dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("device", DEVICES)
def test_launches_and_aten_ops_per_call(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forward: 2 launches, backward: 3; inside the ops no ATen operator but allocations (no host sync, no
    index sort, no zero fill), and around them autograd adds nothing (no zero-filled unused gradients)."""
    launches: list[str] = []
    launch = fused._launch

    def counting(kernel, grid, *args, **meta) -> None:  # noqa: ANN001
        launches.append(getattr(kernel, "__name__", None) or kernel.fn.__name__)
        launch(kernel, grid, *args, **meta)

    monkeypatch.setattr(fused, "_launch", counting)
    features, grads, images, index = inputs(SHAPES["many_classes_multi_tile"], torch.float32, device)
    leaves = [t.requires_grad_(True) for t in (features, grads, images)]
    hyper = (0.5, 10.0, EPS)
    with _AtenOps() as outer:
        out = torch.ops.gainx.attention_erase_fused(*leaves, index, *hyper)
        forward_launches = len(launches)
        torch.autograd.grad(out[:2], leaves, [torch.ones_like(out[0]), torch.ones_like(out[1])])
    assert forward_launches == 2 and len(launches) == 5, launches
    assert outer.ops[:1] == ["gainx.attention_erase_fused.default"], outer.ops
    assert [op for op in outer.ops if op.startswith("aten.") and "ones_like" not in op] == [], outer.ops

    monkeypatch.setattr(fused, "_launch", lambda *args, **meta: None)  # the host side only (the interpreter's
    features, grads, images = (t.detach() for t in leaves)  # numpy round trips are not the op's work)
    grad_cam, grad_erased = torch.ones_like(out[0]), torch.ones_like(out[1])
    with _AtenOps() as inner:
        _cam, _erased, wts, raw, stats = fused._forward(features, grads, images, index, *hyper)
        fused._backward_body(grad_cam, grad_erased, features, images, index, wts, raw, stats, *hyper, True, True, True)
    work = [op for op in inner.ops if op not in ALLOCATIONS]
    assert work == [], work


def test_backend_is_registered() -> None:
    """``backend="fused"`` reaches the step through the seam, and ``gainx train --backend`` offers it."""
    from gainx.cli import build_parser

    assert "fused" in available_backends()
    assert build_parser().parse_args(["train", "--data", "d", "--out", "o", "--backend", "fused"]).backend == "fused"
    features, grads, images, index = inputs(SHAPES["one_class_per_image"], torch.float64, "cpu")
    if torch.cuda.is_available():
        features, grads, images, index = (t.cuda() for t in (features, grads, images, index))
    out = attention_erase(features, grads, images, index, backend="fused")
    ref = attention_erase_eager(features, grads, images, index)
    assert_close(out.erased, ref.erased, TOL[torch.float64], "erased")


@pytest.mark.parametrize("device", DEVICES)
def test_gain_loss_fused_equals_eager(device: str) -> None:
    assert_gain_step_matches_eager("fused", device)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.compile of user-defined Triton kernels needs CUDA")
def test_torch_compile_sees_through_the_op() -> None:
    assert_compiled_matches_eager(fused.attention_erase_fused)
