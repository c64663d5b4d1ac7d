"""The GAIN step waits for the device nowhere and keeps its values.

A ``TorchDispatchMode`` sees every ATen op of a full forward + backward on the CPU:
none of them may be one that makes the host wait for a CUDA device (a data-dependent
output shape or a scalar read back). The values are checked against a plain
reference written here: one Grad-CAM backward per (image, class) pair, Python loops
for the per-image means.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from gainx.attention import capture_output
from gainx.attention.maps import class_gradients
from gainx.losses import GAIN, classification_loss
from gainx.losses.bn import frozen_bn_stats
from gainx.losses.graphs import GraphedSteps
from gainx.losses.pairs import plan_pairs
from gainx.losses.terms import am_class_score, masked_squared_error
from gainx.models import SmallCNN
from gainx.ops import attention_erase_eager, upsample

aten = torch.ops.aten

SYNC_OPS = {
    aten.nonzero,
    aten._local_scalar_dense,  # .item(), int(t), bool(t)
    aten.is_nonzero,
    aten.bincount,
    aten.masked_select,
    aten.unique_consecutive,
    aten.unique_dim,
    aten._unique,
    aten._unique2,
    aten.equal,
}
INDEXING_OPS = {aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_}
REPEAT_INTERLEAVE = {aten.repeat_interleave.Tensor, aten.repeat_interleave.self_Tensor}


def _sync_reason(func, args: tuple, kwargs: dict) -> str | None:
    """Why ``func(*args, **kwargs)`` would make the host wait for a CUDA device, or ``None``."""
    packet = func.overloadpacket
    if packet in SYNC_OPS:
        return str(func)
    if packet in INDEXING_OPS:
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        if any(i is not None and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return f"{func} with a boolean mask"
    if func in REPEAT_INTERLEAVE and kwargs.get("output_size", args[-1] if len(args) > 2 else None) is None:
        return f"{func} without output_size"
    return None


class OpRecorder(TorchDispatchMode):
    """Records every ATen op, and the ones that would wait for a CUDA device."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list = []
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append((func, args, kwargs))
        reason = _sync_reason(func, args, kwargs)
        if reason is not None:
            self.syncs.append(reason)
        return func(*args, **kwargs)


def _batch(num_classes: int = 4, size: int = 16):
    """Multi-label batch: 1, 3, 0 and 2 classes per image; a guide on images 0, 2 and 3."""
    torch.manual_seed(0)
    images = torch.randn(4, 3, size, size)
    labels = torch.tensor([[1.0, 0, 0, 0], [0, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0]])[:, :num_classes]
    guide = torch.randint(0, 2, (4, num_classes, size, size), dtype=torch.uint8)
    guide[:, :, :2] = 255
    has_guide = torch.tensor([True, False, True, True])
    return images, labels, guide, has_guide


# The paper's step (eq. 6-8 at alpha = 1, omega_e = 10) unless an entry names another guidance: the
# default counterfactual guidance draws its images on the host (and cannot be captured).
PAPER = dict(guidance="paper", alpha=1.0, omega_e=10.0)
STEPS = [
    dict(method="gain", multilabel=True),
    dict(method="gain", multilabel=False),
    dict(method="gain", multilabel=True, second_order=True),
    dict(method="gainext", multilabel=True),
    dict(method="gainext", multilabel=True, guidance="scaled"),
    dict(method="gainext", multilabel=True, guidance="all_classes"),
    dict(method="gainext", multilabel=True, guidance="signed"),
    dict(method="gainext", multilabel=True, guidance="rrr", rrr_scale=1.0),
]


@pytest.mark.parametrize("options", STEPS, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_gain_step_makes_no_host_sync(options):
    images, labels, guide, has_guide = _batch()
    if not options["multilabel"]:
        labels = F.one_hot(torch.tensor([0, 3, 1, 2]), 4).float()
    gain = GAIN(SmallCNN(4, width=8).train(), "features", backend="eager", **{**PAPER, **options})
    with OpRecorder() as recorder:
        out = gain(images, labels, guide, has_guide)
        out.loss.backward()
    assert out.loss_am > 0 and (options["method"] == "gain" or out.loss_e > 0)
    assert recorder.syncs == []


def test_class_gradients_with_known_ranks_makes_no_host_sync():
    features = torch.randn(3, 2, 4, 4, requires_grad=True)
    scores = features.pow(2).sum(dim=(2, 3)) @ torch.randn(2, 5)
    index, classes = torch.tensor([0, 0, 2, 2, 2]), torch.tensor([1, 4, 0, 2, 3])
    with OpRecorder() as recorder:
        grads = class_gradients(scores, features, index, classes, create_graph=False, num_ranks=3)
    assert recorder.syncs == []
    for p, (i, c) in enumerate(zip(index.tolist(), classes.tolist())):
        (expected,) = torch.autograd.grad(scores[i, c], features, retain_graph=True)
        torch.testing.assert_close(grads[p], expected[i])


def _bn_model(blocks: int) -> torch.nn.Module:
    layers = [torch.nn.Conv2d(3, 4, 3, padding=1)]
    for _ in range(blocks):
        layers += [torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 1)]
    return torch.nn.Sequential(*layers).train()


def test_frozen_bn_stats_costs_no_op_per_batch_norm_layer():
    counts = []
    for blocks in (2, 20):
        model = _bn_model(blocks)
        with OpRecorder() as recorder, frozen_bn_stats(model):
            pass
        counts.append(len(recorder.ops))
    assert counts[0] == counts[1] == 0


def test_frozen_bn_forward_neither_reads_nor_writes_running_stats():
    model = _bn_model(3)
    model[1].momentum = None  # cumulative average: a counter read otherwise
    buffers = {b.data_ptr() for b in model.buffers()}
    before = copy.deepcopy(model.state_dict())
    x = torch.randn(2, 3, 8, 8) * 2 + 1
    with OpRecorder() as recorder, frozen_bn_stats(model):
        y = model(x)
    touched = [f for f, args, kwargs in recorder.ops for a in (*args, *kwargs.values()) if _aliases(a, buffers)]
    assert touched == [] and recorder.syncs == []
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    torch.testing.assert_close(y, _bn_model_batch_stats(model, x))
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def _aliases(value, pointers: set[int]) -> bool:
    return isinstance(value, torch.Tensor) and value.data_ptr() in pointers


def _bn_model_batch_stats(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output when every batch norm normalizes with the batch's biased statistics."""
    for layer in model:
        if isinstance(layer, torch.nn.BatchNorm2d):
            var, mean = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, correction=0)
            x = (x - mean) / torch.sqrt(var + layer.eps) * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)
        else:
            x = layer(x)
    return x


def test_plan_pairs_matches_nonzero_and_checks_the_guide_flags():
    labels = torch.tensor([[0.9, 0, 0.7], [0, 0, 0], [0.2, 0.6, 0.8]])
    plan = plan_pairs(labels, torch.tensor([False, True, True]), torch.device("cpu"))
    index, classes = torch.nonzero(labels > 0.5, as_tuple=True)
    assert plan.index.tolist() == index.tolist() and plan.classes.tolist() == classes.tolist()
    assert plan.num_ranks == 2 and plan.num_pairs == 4
    assert plan.guided_pairs.tolist() == [2, 3] and plan.guided_rows.tolist() == [1, 2]
    empty = plan_pairs(torch.zeros(2, 3), None, torch.device("cpu"))
    assert empty.num_pairs == 0 and empty.num_ranks == 0 and empty.guided_rows.numel() == 0
    with pytest.raises(ValueError, match=r"has_guide must be \(3,\)"):
        plan_pairs(labels, torch.ones(2, dtype=torch.bool), torch.device("cpu"))


def _reference_step(model, images, labels, guide, has_guide, method, multilabel, second_order):
    """Eq. 1-8 one pair at a time (no batching of the Grad-CAM passes, Python per-image means).

    Returns the loss, the erased images' scores and the erase step's output, and the model's
    buffers before the attention-mining forward, to put back after the backward pass.
    """
    layer = model.features
    with capture_output(layer) as captured:
        scores = model(images)
    loss_cl = classification_loss(scores, labels, multilabel)
    features = captured.features
    pairs = [(i, c) for i in range(labels.shape[0]) for c in range(labels.shape[1]) if labels[i, c] > 0.5]
    grads = [
        torch.autograd.grad(scores[i, c], features, retain_graph=True, create_graph=second_order)[0][i]
        for i, c in pairs
    ]
    idx = torch.tensor([i for i, _ in pairs])
    erased = attention_erase_eager(features[idx], torch.stack(grads), images, idx)
    stats = [b.clone() for b in model.buffers()]  # the attention-mining stream leaves them alone
    scores_am = model(erased.erased)
    probs = am_class_score(scores_am, torch.tensor([c for _, c in pairs]), "auto", multilabel)
    loss_am = _per_image_mean([(i, probs[p]) for p, (i, _) in enumerate(pairs)])
    loss = loss_cl + loss_am
    if method == "gainext":
        guided = [(p, i, c) for p, (i, c) in enumerate(pairs) if has_guide[i]]
        maps = upsample(erased.cam, images.shape[-2:])
        loss_e = _per_image_mean([(i, masked_squared_error(maps[p], guide[i, c])) for p, i, c in guided])
        loss = loss + 10.0 * loss_e
    return loss, scores_am, erased, stats


def _per_image_mean(values: list) -> torch.Tensor:
    per_image: dict[int, list] = {}
    for i, v in values:
        per_image.setdefault(i, []).append(v)
    return torch.stack([torch.stack(v).mean() for v in per_image.values()]).mean()


@pytest.mark.parametrize(
    "method, multilabel, second_order",
    [("gain", True, False), ("gain", False, False), ("gain", True, True), ("gainext", True, False)],
)
def test_gain_step_values_and_gradients_match_the_plain_reference(method, multilabel, second_order):
    images, labels, guide, has_guide = _batch()
    if not multilabel:
        labels = F.one_hot(torch.tensor([0, 3, 1, 2]), 4).float()
    torch.manual_seed(1)
    model = SmallCNN(4, width=8).train()
    reference = copy.deepcopy(model)
    out = GAIN(
        model, "features", method=method, multilabel=multilabel, second_order=second_order, backend="eager", **PAPER
    )(images, labels, guide, has_guide)
    out.loss.backward()
    loss, scores_am, erased, stats = _reference_step(
        reference, images, labels, guide, has_guide, method, multilabel, second_order
    )
    loss.backward()
    for buffer, saved in zip(reference.buffers(), stats):
        buffer.copy_(saved)
    torch.testing.assert_close(out.loss, loss)
    torch.testing.assert_close(out.scores_am, scores_am)
    torch.testing.assert_close(out.erased, erased.erased)
    torch.testing.assert_close(out.cam, erased.cam)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=lambda m, n=name: f"{n}: {m}")
    for (name, b), r in zip(model.named_buffers(), reference.buffers()):
        torch.testing.assert_close(b, r, rtol=0, atol=0, msg=lambda m, n=name: f"{n}: {m}")


def test_cuda_graph_refuses_cpu_tensors_and_host_side_guidance():
    images, labels, guide, has_guide = _batch()
    gain = GAIN(SmallCNN(4, width=8), "features", multilabel=True, cuda_graph=True)
    with pytest.raises(ValueError, match="captures the step on a CUDA device; got tensors on \\['cpu'\\]"):
        gain(images, labels)
    with pytest.raises(ValueError, match="cannot capture guidance='counterfactual'"):
        GAIN(SmallCNN(4, width=8), "features", method="gainext", guidance="counterfactual", cuda_graph=True)
    with pytest.raises(ValueError, match="needs rrr_scale"):
        GAIN(SmallCNN(4, width=8), "features", method="gainext", guidance="rrr", cuda_graph=True)


def _warm_up_capture(captures: list):
    """Stands in for ``make_graphed_callables`` on the CPU: runs the step three times (its warm-up), then replays
    by calling the step again."""

    def capture(step, args):
        captures.append([tuple(a.shape) for a in args])
        for _ in range(3):
            step(*args)
        return step

    return capture


def test_graphed_steps_replay_the_eager_step_and_restore_buffers_after_warm_up():
    images, labels, guide, has_guide = _batch()
    torch.manual_seed(1)
    model = SmallCNN(4, width=8).train()
    eager_model = copy.deepcopy(model)
    options = dict(method="gainext", multilabel=True, backend="eager", **PAPER)
    graphed = GAIN(model, "features", cuda_graph=True, **options)
    captures: list = []
    graphed.graphs = GraphedSteps(model, capacity=1, capture=_warm_up_capture(captures))
    eager = GAIN(eager_model, "features", **options)
    more = labels.clone()
    more[2, 1] = 1.0
    for step_labels in (labels, labels[:, [1, 0, 2, 3]], more, labels):
        out, expected = graphed(images, step_labels, guide, has_guide), eager(images, step_labels, guide, has_guide)
        out.loss.backward()
        expected.loss.backward()
        for name in ("loss", "loss_cl", "loss_am", "loss_e", "scores", "cam", "erased", "scores_am", "pair_index"):
            torch.testing.assert_close(getattr(out, name), getattr(expected, name).detach(), msg=name)
    for p, q in zip(model.parameters(), eager_model.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    for b, r in zip(model.buffers(), eager_model.buffers()):  # warm-up runs left no trace
        torch.testing.assert_close(b, r, rtol=0, atol=0)
    # permuted classes: the same pair structure, replayed with new pair values; one more pair: captured again,
    # which evicts the first graph (capacity 1), so the last step is captured once more
    assert len(captures) == 3 and len(graphed.graphs.graphs) == 1
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        GraphedSteps(model, capacity=0)
