"""Shared helpers of the attention-mining kernel tests (``test_attention_erase_*.py``): inputs, comparison with the
eager reference, tolerances.

Without a CUDA device the kernels run in Triton's interpreter: ``TRITON_INTERPRET`` is read when ``@triton.jit``
decorates a kernel, i.e. when a kernel module is first imported in the process, so this module sets it before any
import of gainx; :func:`require_interpreter` fails a test module with instructions when some earlier import
compiled the kernels instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from gainx.ops import EPS, ErasedPairs, attention_erase_eager  # noqa: E402

DEVICES = ["cpu"] if not CUDA else [pytest.param("cuda", marks=pytest.mark.cuda)]
# max |kernel - reference| / max |reference| allowed, per input dtype (reference: eager in fp64)
TOL = {torch.float64: 1e-12, torch.float32: 1e-4, torch.float16: 3e-3, torch.bfloat16: 6e-2}

# (P, C, h, w, B, H, W, index)
SHAPES = {
    "odd_7x5_to_33x29": (3, 5, 7, 5, 2, 33, 29, [0, 1, 0]),
    "one_class_per_image": (2, 3, 4, 6, 2, 16, 24, [0, 1]),
    "many_classes_multi_tile": (5, 20, 3, 3, 2, 20, 40, [1, 1, 1, 0, 1]),  # 2 x 2 tiles
    "unused_image_downsample": (2, 7, 9, 9, 3, 5, 6, [2, 0]),
    "tall_map_17x3_padded_to_32": (1, 2, 17, 3, 1, 24, 8, [0]),
}


def require_interpreter(interpreted: bool, test_file: str) -> None:
    """Fail the calling test module when its kernels were compiled without a CUDA device to run them."""
    if not CUDA and not interpreted:
        pytest.fail(
            "the Triton kernels were imported before TRITON_INTERPRET=1 was set and there is no CUDA "
            f"device: run `TRITON_INTERPRET=1 pytest {test_file}`",
            pytrace=False,
        )


def inputs(shape: tuple, dtype: torch.dtype, device: str, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random ``features, grads, images, index`` of ``shape`` (a :data:`SHAPES` value)."""
    P, C, h, w, B, H, W, index = shape
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(P, C, h, w, generator=gen).to(device, dtype)
    grads = torch.randn(P, C, h, w, generator=gen).to(device, dtype)
    images = torch.rand(B, 3, H, W, generator=gen).to(device, dtype)
    return features, grads, images, torch.tensor(index, dtype=torch.int64, device=device)


def run(
    fn: Callable[..., ErasedPairs],
    features: torch.Tensor,
    grads: torch.Tensor,
    images: torch.Tensor,
    index: torch.Tensor,
    weights: list[torch.Tensor] | None = None,
    **hyper: float,
) -> tuple[list, list, list]:
    """Outputs of ``fn`` and the gradients of a random weighted sum of them w.r.t. the leaves."""
    leaves = [t.detach().requires_grad_(True) for t in (features, grads, images)]
    out = fn(*leaves, index, **hyper)
    if weights is None:
        gen = torch.Generator().manual_seed(1)
        weights = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device) for o in out]
    loss = sum((o.double() * wt).sum() for o, wt in zip(out, weights))
    return list(out), list(torch.autograd.grad(loss, leaves)), weights


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """``max |actual - expected| <= tol * max |expected|``, all finite."""
    assert actual.shape == expected.shape, what
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual.double() - expected.double()).abs().max().item()
    scale = max(expected.double().abs().max().item(), 1e-12)
    assert err <= tol * scale, f"{what}: max error {err:.3g} > {tol:g} x {scale:.3g}"


def compare(
    impl: Callable[..., ErasedPairs],
    shape: tuple,
    dtype: torch.dtype,
    device: str,
    make: Callable | None = None,
    **hyper: float,
) -> None:
    """``impl`` on ``dtype`` inputs vs eager on the same inputs upcast to fp64: values and gradients.

    ``make`` transforms the random ``features, grads, images``; ``hyper``: sigma, omega, eps."""
    features, grads, images, index = inputs(shape, dtype, device)
    if make is not None:
        features, grads, images = make(features, grads, images)
    double = (features.double(), grads.double(), images.double(), index)
    ref_out, ref_grads, weights = run(attention_erase_eager, *double, **hyper)
    out, grads_, _ = run(impl, features, grads, images, index, weights, **hyper)
    assert out[0].dtype == dtype and out[1].dtype == dtype
    for name, a, e in zip(("cam", "erased"), out, ref_out):
        assert_close(a, e, TOL[dtype], name)
    for name, a, e in zip(("d features", "d grads", "d images"), grads_, ref_grads):
        assert_close(a, e, TOL[dtype], name)


def gain_step(backend: str, device: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """GAINext loss and parameter gradients of a tiny SmallCNN, second-order, fp64, on ``backend``."""
    from gainx import GAIN
    from gainx.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(num_classes=4, width=4).double().to(device)
    images = torch.rand(2, 3, 20, 28, dtype=torch.float64, device=device)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 0, 0]], dtype=torch.float64, device=device)
    guide = (torch.rand(2, 4, 20, 28, device=device) > 0.5).to(torch.uint8)
    has_guide = torch.tensor([True, True], device=device)
    objective = GAIN(model, "features", method="gainext", second_order=True, backend=backend)
    out = objective(images, labels, guide, has_guide)
    params = [p for p in model.parameters() if p.requires_grad]
    return out.loss.detach(), [g.detach() for g in torch.autograd.grad(out.loss, params)]


def assert_gain_step_matches_eager(backend: str, device: str) -> None:
    """A second-order GAINext step on ``backend`` gives eager's loss and parameter gradients."""
    loss_eager, grads_eager = gain_step("eager", device)
    loss, grads = gain_step(backend, device)
    assert_close(loss, loss_eager, 1e-10, "GAIN loss")
    for i, (a, e) in enumerate(zip(grads, grads_eager)):
        assert_close(a, e, 1e-8, f"parameter {i} gradient")


def assert_no_pairs(impl: Callable[..., ErasedPairs], device: str) -> None:
    """``impl`` with no pairs: empty ``cam`` and ``erased`` (eager's shapes) and a zero image gradient."""
    features, grads, images, index = inputs((0, 4, 3, 3, 2, 8, 8, []), torch.float32, device)
    images.requires_grad_(True)
    out = impl(features, grads, images, index)
    ref = attention_erase_eager(features, grads, images, index)
    assert out.cam.shape == ref.cam.shape and out.erased.shape == ref.erased.shape
    (d_images,) = torch.autograd.grad(out.erased.sum(), images)
    assert torch.equal(d_images, torch.zeros_like(images))


def opcheck(op: torch._ops.OpOverload, device: str) -> None:
    """``torch.library.opcheck`` of an attention-mining op: schema, fake tensor and autograd registration; on CUDA
    also AOT dispatch (the interpreter cannot trace kernels with fake tensors: wrap_triton passes interpreted
    kernels through untraced)."""
    features, grads, images, index = inputs(SHAPES["odd_7x5_to_33x29"], torch.float64, device)
    args = (features.requires_grad_(), grads.requires_grad_(), images.requires_grad_(), index, 0.5, 10.0, EPS)
    utils = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if device == "cuda":
        utils.append("test_aot_dispatch_dynamic")
    torch.library.opcheck(op, args, test_utils=utils)


def assert_compiled_matches_eager(impl: Callable[..., ErasedPairs]) -> None:
    """``torch.compile(impl, fullgraph=True)`` on fp32 CUDA inputs matches eager in fp64."""
    features, grads, images, index = inputs(SHAPES["odd_7x5_to_33x29"], torch.float32, "cuda")
    out = torch.compile(impl, fullgraph=True)(features, grads, images, index)
    ref = attention_erase_eager(features.double(), grads.double(), images.double(), index)
    assert_close(out.cam, ref.cam, TOL[torch.float32], "cam")
    assert_close(out.erased, ref.erased, TOL[torch.float32], "erased")


def assert_gradcheck(impl: Callable[..., ErasedPairs], shape: tuple, device: str) -> None:
    """``impl``'s backward against finite differences of its own forward (fp64, all three inputs).

    Positive features and grads keep the map away from the ReLU kink, and random values have a
    unique minimum and maximum, so the map is differentiable at the point checked."""
    features, grads, images, index = inputs(shape, torch.float64, device)
    leaves = tuple(t.requires_grad_(True) for t in (features.abs() + 0.1, grads.abs() + 0.1, images))

    def op(f: torch.Tensor, g: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(impl(f, g, i, index))

    assert torch.autograd.gradcheck(op, leaves, fast_mode=True)
