"""Pick the ``(B, num_classes)`` scores out of what a model returns.

Models return a tensor, a tuple (torchvision GoogLeNet / Inception in train
mode), a dict, or an output object (Hugging Face ``...ForImageClassification``
returns an ``ImageClassifierOutput`` whose scores are ``.logits``). An
``output=`` selector names the scores: a key or attribute name (``"logits"``),
an index into a tuple or list (``0``), or a callable ``result -> scores``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from torch import Tensor

__all__ = ["OutputSelector", "describe_output", "select_scores"]

OutputSelector = Union[str, int, Callable[[Any], Tensor], None]


def describe_output(result: Any) -> str:
    """A one-line account of a model's return value, for error messages."""
    if isinstance(result, Tensor):
        return f"a Tensor of shape {tuple(result.shape)}"
    if isinstance(result, Mapping):
        return f"{type(result).__name__} with keys {list(result.keys())}"
    if isinstance(result, Sequence) and not isinstance(result, str):
        items = ", ".join(describe_output(r) if isinstance(r, Tensor) else type(r).__name__ for r in result)
        return f"{type(result).__name__} of {len(result)} ({items})"
    tensors = [k for k, v in vars(result).items() if isinstance(v, Tensor)] if hasattr(result, "__dict__") else []
    return f"{type(result).__name__} with Tensor attributes {tensors}"


def select_scores(result: Any, output: OutputSelector = None) -> Tensor:
    """The ``(B, num_classes)`` scores in ``result`` chosen by ``output`` (see the module docstring).

    Raises:
        TypeError / ValueError: naming what the model returned and how to select from it.
    """
    scores = pick_output(result, output)
    if not isinstance(scores, Tensor):
        how = "" if output is not None else "; pass output= (a key, attribute, index or callable) to pick the scores"
        raise TypeError(f"model returned {describe_output(result)}, not a (B, num_classes) score Tensor{how}")
    if scores.dim() != 2:
        raise ValueError(f"model scores must be (B, num_classes), got shape {tuple(scores.shape)}")
    return scores


def pick_output(result: Any, output: OutputSelector) -> Any:
    """What ``output`` selects in ``result``, unchecked (so it also works on torch.fx proxies while tracing)."""
    if output is None:
        scores = result
    elif callable(output):
        scores = output(result)
    elif isinstance(output, str):
        if isinstance(result, Mapping) and output in result:
            scores = result[output]
        elif not isinstance(result, Mapping) and hasattr(result, output):
            scores = getattr(result, output)
        else:
            raise ValueError(
                f"output={output!r}: the model returned {describe_output(result)}, which has no {output!r}"
            )
    elif isinstance(output, int) and isinstance(result, Sequence) and -len(result) <= output < len(result):
        scores = result[output]
    else:
        raise ValueError(f"output={output!r} cannot index what the model returned: {describe_output(result)}")
    return scores
