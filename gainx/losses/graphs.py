"""CUDA-graph capture of a training step whose shapes repeat (``GAIN(..., cuda_graph=True)``).

A step is a function of tensors only: its host-side choices (how many pairs, how many
Grad-CAM passes) are fixed by a *key*. :class:`GraphedSteps` captures the step's forward
and backward once per key and tensor signature (shapes, dtypes, devices, ``requires_grad``)
with :func:`torch.cuda.make_graphed_callables`, then replays it: the inputs are copied
into the graph's static buffers and the whole step runs as two graph launches. The
step must make no host sync (the GAIN step makes none once its pairs are planned).

The capture runs the step a few times on the first batch of a key (warm-up); the model's
buffers (batch-norm running statistics) are put back afterwards, so the replay that follows
updates them exactly once. The tensors returned by a replay are the graph's static outputs:
the next replay of the same graph overwrites them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import Tensor, nn

Step = Callable[..., tuple[Tensor, ...]]
Capture = Callable[[nn.Module, tuple[Tensor, ...]], Step]


def capture_cuda(step: nn.Module, args: tuple[Tensor, ...]) -> Step:
    """:func:`torch.cuda.make_graphed_callables` of ``step`` on ``args``, which must all be CUDA tensors."""
    devices = sorted({t.device.type for t in args})
    if devices != ["cuda"]:
        raise ValueError(f"cuda_graph=True captures the step on a CUDA device; got tensors on {devices}")
    if torch.is_autocast_enabled("cuda") and torch.is_autocast_cache_enabled():
        raise ValueError("cuda_graph=True under torch.autocast needs torch.autocast('cuda', cache_enabled=False)")
    return torch.cuda.make_graphed_callables(step, args, allow_unused_input=True)


class _Step(nn.Module):
    """A step function as a module whose parameters are ``model``'s (what the capture differentiates)."""

    def __init__(self, model: nn.Module, fn: Step) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        return self.fn(*tensors)


class GraphedSteps:
    """The captured steps of one model, the ``capacity`` most recently used keys kept.

    Args:
        model: the module whose parameters the steps train; its buffers are restored after
            each capture's warm-up runs.
        capacity: captured graphs kept (each holds its own memory pool); the least recently
            used is dropped beyond it.
        capture: turns a step module and its sample arguments into the replaying callable
            (:func:`capture_cuda`).
    """

    def __init__(self, model: nn.Module, capacity: int = 4, capture: Capture = capture_cuda) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.model = model
        self.capacity = capacity
        self.capture = capture
        self.graphs: OrderedDict[tuple, Step] = OrderedDict()

    def run(self, key: tuple, fn: Step, tensors: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """``fn(*tensors)`` replayed from the graph of ``key`` and the tensors' signature (captured on a miss)."""
        key = (key, tuple((t.shape, t.dtype, t.device, t.requires_grad) for t in tensors))
        graphed = self.graphs.pop(key, None)
        if graphed is None:
            graphed = self._capture(fn, tensors)
        self.graphs[key] = graphed
        while len(self.graphs) > self.capacity:
            self.graphs.popitem(last=False)
        return graphed(*tensors)

    def _capture(self, fn: Step, tensors: tuple[Tensor, ...]) -> Step:
        saved = [b.detach().clone() for b in self.model.buffers()]
        try:
            return self.capture(_Step(self.model, fn), tensors)
        finally:
            with torch.no_grad():
                for buffer, value in zip(self.model.buffers(), saved):
                    buffer.copy_(value)
