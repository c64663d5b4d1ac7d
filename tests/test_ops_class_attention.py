"""gainx.ops.class_attention / gradcam: the extension against the eager
references and an independent autograd Grad-CAM; gradients, opcheck, edge
cases and input errors (both on the extension and on the eager fallback)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gainx.attention.head import find_linear_head
from gainx.models import build_model, default_target_layer
from gainx.ops import EPS, extension
from gainx.ops.class_attention import class_attention, class_attention_eager, gradcam, gradcam_eager

HAVE_EXT = extension.load() is not None
needs_ext = pytest.mark.skipif(not HAVE_EXT, reason="gainx._C is not built (test_extension_is_built fails)")
cuda = pytest.mark.cuda
needs_cuda = pytest.mark.skipif(
    not (torch.cuda.is_available() and HAVE_EXT and extension.supports(torch.device("cuda"))),
    reason="needs a CUDA device and gainx._C built with CUDA",
)

# (B, C, h, w, K, num_classes, H, W): odd sizes, up- and down-sampling, 1x1.
SHAPES = [
    (3, 5, 7, 6, 4, 10, 31, 17),
    (1, 1, 1, 1, 1, 1, 1, 1),
    (2, 4, 5, 9, 3, 6, 5, 9),
    (2, 3, 9, 8, 2, 4, 4, 3),
    (1, 6, 3, 3, 7, 7, 33, 1),
    (2, 16, 14, 14, 3, 20, 113, 97),
    (2, 32, 7, 7, 5, 20, 224, 224),
]
# dtype -> absolute tolerance on maps in [0, 1] (reduced types: against fp32).
ATOL = {torch.float64: 1e-12, torch.float32: 2e-6, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _inputs(shape, dtype=torch.float64, device="cpu", seed=0):
    B, C, h, w, K, N, _, _ = shape
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(B, C, h, w, generator=g, dtype=torch.float64)
    weight = torch.randn(N, C, generator=g, dtype=torch.float64)
    classes = torch.stack([torch.randperm(N, generator=g)[:K] for _ in range(B)]) if K <= N else None
    if classes is None:
        classes = torch.randint(0, N, (B, K), generator=g)
    return features.to(device, dtype), weight.to(device, dtype), classes.to(device)


@pytest.fixture(params=["ext", "eager"])
def path(request, monkeypatch):
    """Run the public functions on the extension, or force the eager fallback."""
    if request.param == "ext" and not HAVE_EXT:
        pytest.skip("gainx._C is not built")
    if request.param == "eager":
        monkeypatch.setattr(extension, "supports", lambda device: False)
    return request.param


def test_extension_is_built():
    assert HAVE_EXT, "gainx._C failed to load; build it with `pip install .` (or build_ext --inplace)"


@needs_ext
@pytest.mark.parametrize("dtype", list(ATOL))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_class_attention_matches_eager(shape, dtype):
    features, weight, classes = _inputs(shape, dtype)
    size = shape[-2:]
    got = class_attention(features, weight, classes, size)
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    want = class_attention_eager(features.to(ref_dtype), weight.to(ref_dtype), classes, size)
    assert got.dtype == dtype and got.shape == (shape[0], shape[4], *size)
    torch.testing.assert_close(got.to(ref_dtype), want, atol=ATOL[dtype], rtol=0)


@needs_ext
@pytest.mark.parametrize("dtype", list(ATOL))
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_gradcam_matches_eager(shape, dtype):
    features, _, _ = _inputs(shape, dtype)
    grads = torch.randn(features.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    size = shape[-2:]
    got = gradcam(features, grads, size)
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    want = gradcam_eager(features.to(ref_dtype), grads.to(ref_dtype), size)
    assert got.dtype == dtype and got.shape == (shape[0], *size)
    torch.testing.assert_close(got.to(ref_dtype), want, atol=ATOL[dtype], rtol=0)


def test_class_attention_is_gradcam_of_broadcast_rows(path):
    """A GAP + linear head's gradient is weight[c] / (h w) everywhere (eq. 1)."""
    B, C, h, w, K, N, H, W = SHAPES[0]
    features, weight, classes = _inputs(SHAPES[0])
    grads = (weight[classes] / (h * w))[..., None, None].expand(B, K, C, h, w)
    via_grads = gradcam(
        features.unsqueeze(1).expand(B, K, C, h, w).reshape(B * K, C, h, w), grads.reshape(B * K, C, h, w), (H, W)
    )
    torch.testing.assert_close(class_attention(features, weight, classes, (H, W)), via_grads.view(B, K, H, W))


def _autograd_gradcam(model, layer, images, classes, size):
    """Grad-CAM from scratch: d score / d F by autograd, then eq. 1-2, upsampling, min-max."""
    store = {}
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: store.update(F=o))
    logits = model(images)
    handle.remove()
    feats, maps = store["F"], []
    for k in range(classes.shape[1]):
        (g,) = torch.autograd.grad(logits.gather(1, classes[:, k : k + 1]).sum(), feats, retain_graph=True)
        raw = torch.relu((g.mean(dim=(2, 3), keepdim=True) * feats).sum(1, keepdim=True))
        up = F.interpolate(raw, size=size, mode="bilinear", align_corners=False)[:, 0]
        lo, hi = up.amin(dim=(1, 2), keepdim=True), up.amax(dim=(1, 2), keepdim=True)
        maps.append(torch.where(hi > lo, (up - lo) / (hi - lo + EPS * hi), 0.0))  # all-zero map: zeros
    return feats.detach(), torch.stack(maps, 1)


@pytest.mark.parametrize("arch,num_classes,image", [("small_cnn", 6, 40), ("resnet18", 7, 96)])
def test_matches_autograd_gradcam_on_real_model(path, arch, num_classes, image):
    torch.manual_seed(0)
    model = build_model(arch, num_classes).double().eval()
    layer = default_target_layer(arch)
    head = find_linear_head(model, layer)
    assert head is not None
    images = torch.randn(3, 3, image, image + 8, dtype=torch.float64)
    classes = torch.tensor([[0, 5, 2], [1, 1, 4], [3, 2, 0]])
    feats, want = _autograd_gradcam(model, layer, images, classes, (image, image + 8))
    got = class_attention(feats, head.weight.detach(), classes, (image, image + 8))
    torch.testing.assert_close(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("h,w", [(1, 1), (4, 5)])
def test_constant_map_gives_zeros(path, h, w):
    features = torch.ones(2, 3, h, w)
    weight = torch.randn(4, 3)
    out = class_attention(features, weight, torch.tensor([[0, 1], [2, 3]]), (9, 7))
    assert out.shape == (2, 2, 9, 7) and torch.equal(out, torch.zeros_like(out))
    out = gradcam(features, torch.zeros_like(features), (9, 7))
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearly_constant_map_gives_zeros_like_eager(path, dtype):
    """A map whose range is rounding noise (<= FLAT of its max) is zeros, not noise stretched to [0, 1]."""
    g = torch.Generator().manual_seed(0)
    features = (3.7 + 1e-7 * torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64)).to(dtype)
    weight = torch.tensor([[1.1, 2.3, 0.7], [0.5, 0.2, 0.9]], dtype=dtype)
    classes = torch.tensor([[0, 1], [1, 0]])
    want = class_attention_eager(features, weight, classes, (37, 45))
    assert torch.equal(want, torch.zeros_like(want))  # the reference's flat-map rule applies
    assert torch.equal(class_attention(features, weight, classes, (37, 45)), want)
    grads = features[:, :1].expand_as(features).contiguous()
    assert torch.equal(gradcam(features, grads, (37, 45)), gradcam_eager(features, grads, (37, 45)))


def test_empty_batch_and_no_classes(path):
    features, weight, classes = _inputs(SHAPES[0], torch.float32)
    assert class_attention(features[:0], weight, classes[:0], (8, 9)).shape == (0, 4, 8, 9)
    assert class_attention(features, weight, classes[:, :0], (8, 9)).shape == (3, 0, 8, 9)
    assert gradcam(features[:0], features[:0], (8, 9)).shape == (0, 8, 9)


def test_non_contiguous_inputs(path):
    features, weight, classes = _inputs(SHAPES[0])
    want = class_attention_eager(features, weight, classes, (20, 21))
    got = class_attention(
        features.to(memory_format=torch.channels_last),
        weight.t().contiguous().t(),
        classes.t().contiguous().t(),
        (20, 21),
    )
    torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
    wide = torch.randn(3, 10, 7, 12, dtype=torch.float64)[..., ::2]
    torch.testing.assert_close(gradcam(wide, wide.flip(1), (9, 9)), gradcam_eager(wide, wide.flip(1), (9, 9)))


@needs_ext
@pytest.mark.parametrize("shape,fast", [((1, 2, 3, 3, 3, 3, 2, 2), False), ((2, 3, 4, 3, 2, 5, 7, 9), True)], ids=str)
def test_gradcheck(shape, fast):
    features, weight, classes = _inputs(shape)
    # positive inputs: no ReLU kink, and generic values: distinct min / max.
    features, weight = features.abs().requires_grad_(), weight.abs().requires_grad_()
    size = shape[-2:]
    fn = lambda f, w: class_attention(f, w, classes, size)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (features, weight), fast_mode=fast)
    grads = features.detach().flip(1).requires_grad_()
    assert torch.autograd.gradcheck(lambda f, g: gradcam(f, g, size), (features, grads), fast_mode=fast)


@needs_ext
def test_gradients_match_eager():
    features, weight, classes = _inputs(SHAPES[0])
    upstream = torch.randn(3, 4, 11, 13, dtype=torch.float64)
    grads = []
    for fn in (class_attention, class_attention_eager):
        f, w = features.clone().requires_grad_(), weight.clone().requires_grad_()
        grads.append(torch.autograd.grad((fn(f, w, classes, (11, 13)) * upstream).sum(), (f, w)))
    torch.testing.assert_close(grads[0], grads[1])
    g_in = features.flip(0)
    results = []
    for fn in (gradcam, gradcam_eager):
        f, g = features.clone().requires_grad_(), g_in.clone().requires_grad_()
        results.append(torch.autograd.grad((fn(f, g, (11, 13)) * upstream[:, 0]).sum(), (f, g)))
    torch.testing.assert_close(results[0], results[1])


@needs_ext
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda, needs_cuda])])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(requires_grad, device):
    features, weight, classes = _inputs(SHAPES[0], torch.float32, device=device)
    features.requires_grad_(requires_grad)
    weight.requires_grad_(requires_grad)
    torch.library.opcheck(torch.ops.gainx.class_attention.default, (features, weight, classes, [13, 11], EPS))
    torch.library.opcheck(torch.ops.gainx.gradcam.default, (features, features.detach().flip(1), [13, 11], EPS))


@needs_ext
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[cuda, needs_cuda])])
@pytest.mark.parametrize("k", [1, 5, 20])
def test_class_counts_with_ties_and_flat_maps(k, device):
    """K = 1, 5, 20 maps per image at odd sizes: tied maxima (integer-valued features), and a
    flat map (zero weight row) beside non-flat ones; values and gradients equal the eager reference."""
    g = torch.Generator().manual_seed(k)
    features = torch.randint(0, 3, (3, 6, 5, 7), generator=g).double().to(device)
    weight = torch.randint(-1, 3, (23, 6), generator=g).double()
    weight[4] = 0.0
    weight = weight.to(device)
    classes = torch.randint(0, 23, (3, k), generator=g)
    classes[0, 0] = 4
    classes = classes.to(device)
    upstream = torch.randn(3, k, 37, 29, generator=g, dtype=torch.float64).to(device)
    results = []
    for fn in (class_attention, class_attention_eager):
        f, w = features.clone().requires_grad_(), weight.clone().requires_grad_()
        out = fn(f, w, classes, (37, 29))
        results.append((out.detach(), *torch.autograd.grad((out * upstream).sum(), (f, w))))
    assert torch.equal(results[0][0][0, 0], torch.zeros_like(results[0][0][0, 0]))
    for got, want in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, want, atol=1e-12, rtol=0)


def _children(prof, op: str) -> list[list[str]]:
    """For each profiled call of ``op``: the names of the ATen ops it ran directly, in order."""
    return [[c.name for c in e.cpu_children] for e in prof.events() if e.name == op]


def _descendants(prof, op: str) -> set[str]:
    names, todo = set(), [e for e in prof.events() if e.name == op]
    while todo:
        e = todo.pop()
        names.update(c.name for c in e.cpu_children)
        todo.extend(e.cpu_children)
    return names


# ATen ops that only allocate or re-view (no pass over data, no launch).
_NO_DATA_PASS = {"aten::empty", "aten::view", "aten::reshape", "aten::unsqueeze", "aten::squeeze"}


@needs_ext
def test_cpp_path_has_no_scalar_reads_and_one_gemm_pass():
    """The C++ ops read no tensor value on the host (no item / _local_scalar_dense / aminmax: on CUDA
    each is a device sync) and fold 1 / (h w) into the GEMM (baddbmm's alpha, no separate div / mean)."""
    features, weight, classes = _inputs(SHAPES[0], torch.float32)
    grads = features.flip(1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.ops.gainx.class_attention(features, weight, classes, [13, 11], EPS)
        torch.ops.gainx.gradcam(features, grads, [13, 11], EPS)
    for op, passes in (
        ("gainx::class_attention", ["aten::index_select", "aten::baddbmm_"]),
        ("gainx::gradcam", ["aten::sum", "aten::baddbmm_"]),
    ):
        (children,) = _children(prof, op)
        assert [c for c in children if c not in _NO_DATA_PASS] == passes, (op, children)
        host_reads = _descendants(prof, op) & {"aten::item", "aten::_local_scalar_dense", "aten::aminmax"}
        assert not host_reads, (op, host_reads)


def _run_ends(n_in: int, n_out: int) -> list[int]:
    """Output indices that end a run of equal first source index (the CUDA epilogue's candidates)."""
    scale = torch.tensor(n_in / n_out, dtype=torch.float32)
    src = (scale * (torch.arange(n_out, dtype=torch.float32) + 0.5) - 0.5).clamp_min(0)
    i0 = src.long().clamp_max(n_in - 1).tolist()
    return [d for d in range(n_out) if d in (0, n_out - 1) or i0[d] != i0[d - 1] or i0[d] != i0[d + 1]]


@pytest.mark.parametrize("h,w,H,W", [(7, 7, 224, 224), (14, 14, 448, 448), (5, 9, 37, 13), (9, 8, 4, 3), (1, 3, 7, 1)])
def test_upsampled_extremes_lie_on_run_end_candidates(h, w, H, W):
    """The CUDA epilogue reduces min / max over (y run ends) x (x run ends) only: within a block of
    runs the bilinear upsampling is bilinear in its two lerp weights, so its extremes sit on run ends."""
    maps = torch.randn(16, h, w, generator=torch.Generator().manual_seed(h * W), dtype=torch.float64).relu()
    up = F.interpolate(maps[:, None], size=(H, W), mode="bilinear", align_corners=False)[:, 0]
    ys, xs = _run_ends(h, H), _run_ends(w, W)
    assert len(ys) <= min(H, 2 * h) and len(xs) <= min(W, 2 * w)
    cand = up[:, ys][:, :, xs]
    torch.testing.assert_close(cand.amin(dim=(1, 2)), up.amin(dim=(1, 2)), atol=1e-15, rtol=1e-13)
    torch.testing.assert_close(cand.amax(dim=(1, 2)), up.amax(dim=(1, 2)), atol=1e-15, rtol=1e-13)


def test_cuda_sources_read_no_values_on_the_host():
    """Secondary guard: the C++/CUDA code of the CUDA path never copies a value to the host."""
    root = Path(__file__).resolve().parents[1] / "csrc" / "ops"
    sources = [root / "cam_common.h", *sorted((root / "cuda").glob("*.cu"))]
    banned = re.compile(r"\.item\s*<|aminmax|_local_scalar_dense|cudaDeviceSynchronize|cudaStreamSynchronize|kCPU")
    for src in sources:
        hits = [line for line in src.read_text().splitlines() if banned.search(line)]
        assert not hits, (src.name, hits)


def _bad_calls():
    f, w, c = _inputs(SHAPES[0], torch.float32)
    return [
        ("weight dtype", lambda: class_attention(f, w.double(), c, (8, 8)), TypeError, "weight has dtype"),
        ("classes dtype", lambda: class_attention(f, w, c.int(), (8, 8)), TypeError, "classes must be int64"),
        ("features dtype", lambda: class_attention(f.long(), w, c, (8, 8)), TypeError, "floating-point"),
        ("class < 0", lambda: class_attention(f, w, c - 10, (8, 8)), ValueError, r"classes must lie in \[0, 10\)"),
        ("class >= N", lambda: class_attention(f, w, c + 1, (8, 8)), ValueError, r"classes must lie in \[0, 10\)"),
        ("weight C", lambda: class_attention(f, w[:, :4], c, (8, 8)), ValueError, "weight must be"),
        ("classes B", lambda: class_attention(f, w, c[:2], (8, 8)), ValueError, r"classes must be \(B, K\)"),
        ("features 3-D", lambda: class_attention(f[0], w, c, (8, 8)), ValueError, "4-D"),
        ("empty h", lambda: class_attention(f[:, :, :0], w, c, (8, 8)), ValueError, "non-empty spatial"),
        ("out_size", lambda: class_attention(f, w, c, (0, 8)), ValueError, "out_size"),
        ("grads shape", lambda: gradcam(f, f[:, :2], (8, 8)), ValueError, "grads must have the shape"),
        ("grads dtype", lambda: gradcam(f, f.double(), (8, 8)), TypeError, "grads has dtype"),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_bad_input_errors(path, case):
    name, call, exc, match = _bad_calls()[case]
    with pytest.raises(exc, match=match):
        call()


def test_device_mismatch_eager_message(monkeypatch):
    monkeypatch.setattr(extension, "supports", lambda device: False)
    f, w, c = _inputs(SHAPES[0], torch.float32)
    with pytest.raises(ValueError, match="weight is on meta but features is on cpu"):
        class_attention(f, w.to("meta"), c, (8, 8))


def test_missing_extension_warns_once_and_falls_back():
    code = textwrap.dedent(
        """
        import sys, warnings
        sys.modules["gainx._C"] = None  # import of the extension fails
        import torch
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from gainx.ops.class_attention import class_attention, class_attention_eager
            from gainx.ops import extension
            f, w, c = torch.randn(2, 3, 4, 4), torch.randn(5, 3), torch.tensor([[0, 4], [1, 2]])
            for _ in range(2):
                out = class_attention(f, w, c, (9, 9))
            assert not extension.supports(torch.device("cpu"))
        assert torch.equal(out, class_attention_eager(f, w, c, (9, 9)))
        msgs = [str(x.message) for x in caught if "gainx._C" in str(x.message)]
        assert len(msgs) == 1, msgs
        print("ok")
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@needs_ext
def test_baseline_isa_build_matches_eager(tmp_path):
    """ATEN_CPU_CAPABILITY=default selects the portable at::vec build of the write pass."""
    code = textwrap.dedent(
        """
        import torch
        from gainx.ops import extension
        from gainx.ops.class_attention import class_attention, class_attention_eager
        assert extension.load() is not None, "the child process must run the built extension"
        g = torch.Generator().manual_seed(0)
        f, w = torch.randn(3, 8, 7, 5, generator=g), torch.randn(6, 8, generator=g)
        c = torch.tensor([[0, 5], [1, 2], [3, 4]])
        for dtype, atol in ((torch.float32, 2e-6), (torch.float64, 1e-12), (torch.bfloat16, 2e-2)):
            got = class_attention(f.to(dtype), w.to(dtype), c, (37, 45)).double()
            want = class_attention_eager(f.double(), w.double(), c, (37, 45))
            assert (got - want).abs().max() < atol, (dtype, (got - want).abs().max())
        print("ok")
        """
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    # cwd outside the checkout: the child imports the package this test runs (with gainx._C), not ./gainx
    res = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_cuda_matches_eager(shape, dtype):
    features, weight, classes = _inputs(shape, dtype, device="cuda")
    size = shape[-2:]
    ref_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    want = class_attention_eager(features.to(ref_dtype), weight.to(ref_dtype), classes, size)
    got = class_attention(features, weight, classes, size)
    # cuBLAS may use TF32-free fp32 but a different summation order than the CPU.
    torch.testing.assert_close(got.to(ref_dtype), want, atol=max(ATOL[dtype], 1e-5), rtol=0)
    grads = features.flip(1)
    want = gradcam_eager(features.to(ref_dtype), grads.to(ref_dtype), size)
    torch.testing.assert_close(gradcam(features, grads, size).to(ref_dtype), want, atol=max(ATOL[dtype], 1e-5), rtol=0)


@cuda
@needs_cuda
def test_cuda_gradcheck_and_device_mismatch():
    features, weight, classes = _inputs((2, 3, 4, 3, 2, 5, 7, 9), device="cuda")
    features, weight = features.abs().requires_grad_(), weight.abs().requires_grad_()
    assert torch.autograd.gradcheck(lambda f, w: class_attention(f, w, classes, (7, 9)), (features, weight))
    with pytest.raises(ValueError, match="weight is on cpu but features is on cuda"):
        class_attention(features.detach(), weight.detach().cpu(), classes, (7, 9))
    with pytest.raises(ValueError, match="classes is on cpu but features is on cuda"):
        class_attention(features.detach(), weight.detach(), classes.cpu(), (7, 9))


@cuda
@needs_cuda
def test_cuda_ops_make_no_host_sync():
    """torch.cuda sync debug mode turns any synchronizing call inside the ops into an error."""
    features, weight, classes = _inputs(SHAPES[-1], torch.float32, device="cuda")
    grads = features.flip(1)
    want = class_attention(features, weight, classes, (224, 224))  # first call: cuBLAS handle, kernel attributes
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = torch.ops.gainx.class_attention(features, weight, classes, [224, 224], EPS)
        torch.ops.gainx.gradcam(features, grads, [224, 224], EPS)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(got, want)


@cuda
@needs_cuda
def test_cuda_class_out_of_range_is_a_device_assert():
    """On CUDA the classes' range is checked in the gather kernel (no host read): a device-side assert."""
    code = textwrap.dedent(
        """
        import torch
        from gainx.ops.class_attention import class_attention
        f, w = torch.randn(2, 3, 4, 4, device="cuda"), torch.randn(5, 3, device="cuda")
        try:
            class_attention(f, w, torch.tensor([[0, 1], [5, 2]], device="cuda"), (8, 8))
            torch.cuda.synchronize()
        except RuntimeError as exc:
            print("device-side assert" in str(exc))
        """
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.strip() == "True", res.stdout + res.stderr
    assert "classes must lie in [0, 5), got 5" in res.stdout + res.stderr


@cuda
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_wide_maps(dtype):
    """Rows wider than the default shared-memory budget (the epilogue opts in to more) and odd widths."""
    for shape in [(2, 3, 4, 5, 2, 4, 3, 6000), (2, 3, 4, 5, 2, 4, 9, 2501)]:
        features, weight, classes = _inputs(shape, dtype, device="cuda")
        size = shape[-2:]
        want = class_attention_eager(features, weight, classes, size)
        torch.testing.assert_close(class_attention(features, weight, classes, size), want, atol=1e-5, rtol=0)


@needs_ext
@pytest.mark.parametrize("out_size", [[0, 4], [4, 0], [0, -3]])
def test_fake_kernels_refuse_the_out_size_the_real_kernels_refuse(out_size):
    """Under tracing (meta tensors) the ops check ``out_size`` as their CPU kernels do."""
    f, w = torch.empty(2, 3, 4, 4, device="meta"), torch.empty(5, 3, device="meta")
    cls = torch.zeros(2, 2, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match=r"out_size must be two positive ints"):
        torch.ops.gainx.class_attention(f, w, cls, out_size)
    with pytest.raises(ValueError, match=r"out_size must be two positive ints"):
        torch.ops.gainx.gradcam(f, f, out_size)
