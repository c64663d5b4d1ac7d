"""The Triton attention-mining kernels against the eager reference (values and gradients).

Without a CUDA device the kernels run in Triton's interpreter (``erase_helpers`` sets ``TRITON_INTERPRET``
before the kernels are imported; the module fails at collection with instructions when that was too late).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from erase_helpers import (  # tests/ is on sys.path under pytest
    CUDA,
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
    run,
)

from gainx.ops import attention_erase, attention_erase_eager
from gainx.ops import attention_erase_triton as ops

require_interpreter(ops._INTERPRETED, "tests/test_attention_erase_triton.py")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_values_and_gradients_match_eager(shape: tuple, dtype: torch.dtype, device: str) -> None:
    compare(ops.attention_erase_triton, shape, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
def test_fp64_hyperparameters_are_not_rounded(device: str) -> None:
    """sigma, omega and eps that fp32 cannot hold: fp64 results still match the reference to 1e-12
    (a compiled kernel would otherwise receive them as fp32)."""
    compare(
        ops.attention_erase_triton,
        SHAPES["odd_7x5_to_33x29"],
        torch.float64,
        device,
        sigma=0.55,
        omega=10.3,
        eps=1.1e-7,
    )


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device: str) -> None:
    def views(features: torch.Tensor, grads: torch.Tensor, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        nhwc = features.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # channels-last strides
        wide = torch.cat([grads, grads], dim=1)[:, ::2]  # channel stride 2
        flipped = images.transpose(2, 3).contiguous().transpose(2, 3)  # column-major pixels
        assert not (nhwc.is_contiguous() or wide.is_contiguous() or flipped.is_contiguous())
        return nhwc, wide, flipped

    compare(ops.attention_erase_triton, SHAPES["odd_7x5_to_33x29"], torch.float32, device, views)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_output_gradients(device: str) -> None:
    """Output gradients with stride 0 (broadcast) and column-major pixels."""
    features, grads, images, index = inputs(SHAPES["odd_7x5_to_33x29"], torch.float64, device)
    grad_cam = torch.tensor(0.3, dtype=torch.float64, device=device).expand(3, 7, 5)
    grad_erased = torch.randn(3, 3, 29, 33, dtype=torch.float64, device=device).transpose(2, 3)
    results = []
    for fn in (ops.attention_erase_triton, attention_erase_eager):
        leaves = [t.clone().requires_grad_(True) for t in (features, grads, images)]
        out = fn(*leaves, index)
        results.append(torch.autograd.grad(list(out), leaves, [grad_cam, grad_erased]))
    for name, a, e in zip(("d features", "d grads", "d images"), *results):
        assert_close(a, e, TOL[torch.float64], name)


@pytest.mark.parametrize("device", DEVICES)
def test_mixed_precision_features_fp32_images(device: str) -> None:
    """Autocast case: fp16 features/grads, fp32 images; erased keeps the image dtype."""
    features, grads, images, index = inputs(SHAPES["odd_7x5_to_33x29"], torch.float16, device)
    ref = attention_erase_eager(features.double(), grads.double(), images.double(), index)
    out = ops.attention_erase_triton(features, grads, images.float(), index)
    assert out.cam.dtype == torch.float16 and out.erased.dtype == torch.float32
    assert_close(out.cam, ref.cam, TOL[torch.float16], "cam")
    assert_close(out.erased, ref.erased, TOL[torch.float16], "erased")


@pytest.mark.parametrize("device", DEVICES)
def test_zero_map_matches_eager_without_nan(device: str) -> None:
    """ReLU kills everything: constant zero map, cam = 0, no NaN anywhere."""
    shape = SHAPES["odd_7x5_to_33x29"]
    compare(ops.attention_erase_triton, shape, torch.float64, device, lambda f, g, i: (f.abs(), -g.abs(), i))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_positive_map_min_gradient(dtype: torch.dtype, device: str) -> None:
    """No ReLU zeros: the gradient through the map's minimum reaches the features."""
    compare(
        ops.attention_erase_triton,
        SHAPES["odd_7x5_to_33x29"],
        dtype,
        device,
        lambda f, g, i: (f.abs() + 0.1, g.abs(), i),
    )


@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_fp64(device: str) -> None:
    assert_gradcheck(ops.attention_erase_triton, (2, 3, 4, 3, 2, 9, 7, [1, 0]), device)


@pytest.mark.parametrize("device", DEVICES)
def test_positive_constant_map_is_finite(device: str) -> None:
    """A constant positive map normalizes to 0 (range 0, eps guards): erased = I (1 - T(0)), finite grads."""
    features, grads, images, index = inputs(SHAPES["odd_7x5_to_33x29"], torch.float32, device)
    features, grads = torch.ones_like(features), torch.ones_like(grads)
    out, grads_, _ = run(ops.attention_erase_triton, features, grads, images, index)
    assert out[0].abs().max().item() <= 1e-6
    keep = 1 - torch.sigmoid(torch.tensor(-10.0 * 0.5, dtype=torch.float64))
    assert_close(out[1], images.double()[index] * keep, 1e-5, "erased")
    assert all(torch.isfinite(g).all() for g in grads_)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_nearly_constant_map_is_flat_like_eager(dtype: torch.dtype, device: str) -> None:
    """A map whose range is rounding noise (<= FLAT of its max) gives cam = 0 and zero map gradients, as eager."""

    def near_constant(f: torch.Tensor, g: torch.Tensor, i: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return 3.7 + 1e-7 * f, torch.ones_like(g), i

    compare(ops.attention_erase_triton, SHAPES["odd_7x5_to_33x29"], dtype, device, near_constant)
    features, grads, images, index = inputs(SHAPES["odd_7x5_to_33x29"], dtype, device)
    out = ops.attention_erase_triton(*near_constant(features, grads, images), index)
    assert torch.equal(out.cam, torch.zeros_like(out.cam))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wrt", [0, 1, 2], ids=["features", "grads", "images"])
def test_gradient_of_one_input_only(wrt: int, device: str) -> None:
    """One input requires grad (e.g. detached grads = first-order GAIN); only ``erased`` is used."""
    data = list(inputs(SHAPES["many_classes_multi_tile"], torch.float64, device))
    weights = torch.randn(5, 3, 20, 40, dtype=torch.float64, device=device)
    got, ref = [], []
    for fn, result in ((ops.attention_erase_triton, got), (attention_erase_eager, ref)):
        args = list(data)
        args[wrt] = args[wrt].clone().requires_grad_(True)
        result.extend(torch.autograd.grad((fn(*args).erased * weights).sum(), args[wrt]))
    assert_close(got[0], ref[0], TOL[torch.float64], f"gradient of input {wrt}")


@pytest.mark.parametrize("device", DEVICES)
def test_no_pairs(device: str) -> None:
    assert_no_pairs(ops.attention_erase_triton, device)


@pytest.mark.parametrize("device", DEVICES)
def test_bad_inputs_raise_clear_errors(device: str) -> None:
    features, grads, images, index = inputs(SHAPES["odd_7x5_to_33x29"], torch.float32, device)
    cases = [
        ((features[0], grads, images, index), ValueError, "features and grads"),
        ((features, grads[:, :2], images, index), ValueError, "features and grads"),
        ((features, grads, images[0], index), ValueError, "images must be"),
        ((features, grads, images, index[:2]), ValueError, "index must be"),
        ((features, grads.double(), images, index), TypeError, "grads dtype"),
        ((features.int(), grads.int(), images, index), TypeError, "features must be float"),
        ((features, grads, images, index.int()), TypeError, "index must be int64"),
    ]
    if device == "cpu":  # on CUDA a bad index is an asynchronous device-side assert
        cases += [
            ((features, grads, images, index + 5), IndexError, r"\[0, 2\)"),
            ((features, grads, images, -index - 1), IndexError, r"\[0, 2\)"),
        ]
    for args, exc, message in cases:
        with pytest.raises(exc, match=message):
            ops.attention_erase_triton(*args)


@pytest.mark.parametrize("device", DEVICES)
def test_large_maps_are_refused(device: str) -> None:
    features = torch.zeros(1, 1, 1, ops._MAX_MAP_SIDE + 1, device=device)
    images = torch.zeros(1, 3, 4, 4, device=device)
    with pytest.raises(ValueError, match="backend='eager'"):
        ops.attention_erase_triton(features, features, images, torch.zeros(1, dtype=torch.int64, device=device))


@pytest.mark.skipif(CUDA, reason="checks the CPU error without the interpreter")
def test_cpu_without_interpreter_says_what_to_do(tmp_path) -> None:
    code = (
        "import torch; from gainx.ops.attention_erase_triton import attention_erase_triton as f; "
        "x = torch.zeros(1, 2, 3, 3); f(x, x, torch.zeros(1, 3, 8, 8), torch.zeros(1, dtype=torch.int64))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode != 0
    assert "TRITON_INTERPRET=1" in done.stderr and "backend='eager'" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("device", DEVICES)
def test_gain_loss_triton_equals_eager(device: str) -> None:
    assert_gain_step_matches_eager("triton", device)


@pytest.mark.parametrize("device", DEVICES)
def test_am_loss_through_backends_on_small_cnn(device: str) -> None:
    """L_am-like loss through ``gainx.ops.attention_erase``: features and second-order
    grads from autograd on a real model, the erased image's class score back through the model."""
    from gainx.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN(num_classes=3, width=4).double().to(device).eval()
    images = torch.rand(2, 3, 24, 20, dtype=torch.float64, device=device)
    index = torch.tensor([0, 0, 1], device=device)
    classes = torch.tensor([0, 2, 1], device=device)

    def loss_for(backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = model.features(images)
        scores = model.fc(model.pool(features).flatten(1))
        rows = features.index_select(0, index)
        grads = torch.stack(
            [
                torch.autograd.grad(scores[b, c], features, create_graph=True)[0][b]
                for b, c in zip(index.tolist(), classes.tolist())
            ]
        )
        pairs = attention_erase(rows, grads, images, index, backend=backend)
        loss = model(pairs.erased).sigmoid().gather(1, classes[:, None]).mean() + pairs.cam.mean()
        return loss.detach(), [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]

    loss_e, grads_e = loss_for("eager")
    loss_t, grads_t = loss_for("triton")
    assert_close(loss_t, loss_e, 1e-10, "L_am")
    for i, (a, e) in enumerate(zip(grads_t, grads_e)):
        assert_close(a, e, 1e-8, f"parameter {i} gradient")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device: str) -> None:
    opcheck(torch.ops.gainx.attention_erase.default, device)


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="torch.compile of the user-defined Triton kernels needs a CUDA device")
def test_torch_compile_sees_through_the_op() -> None:
    assert_compiled_matches_eager(ops.attention_erase_triton)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the message is for CPU tensors without the interpreter")
def test_cpu_tensors_without_the_interpreter_name_both_kernel_backends():
    code = (
        "import torch\nfrom gainx.ops import attention_erase\n"
        "f = torch.randn(2, 4, 3, 3)\n"
        "for backend in ('triton', 'fused'):\n"
        "    try:\n"
        "        attention_erase(f, f, torch.rand(2, 3, 8, 8), torch.arange(2), backend=backend)\n"
        "    except RuntimeError as exc:\n"
        "        print(backend, exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == ["triton", "fused"]
    assert all("the triton and fused backends need CUDA tensors (got cpu)" in line for line in lines), out
