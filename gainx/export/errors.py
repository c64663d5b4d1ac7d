"""Short causes for export errors: the first line of a library's (often pages-long) message, the op torch.onnx lacks."""

from __future__ import annotations

import re

import torch

_MISSING_OP = re.compile(r"No ONNX function found for <OpOverload\(op='([^']+)'")


def first_line(exc: BaseException) -> str:
    """``"TypeName: first non-empty line of the message"``."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0].strip() if lines else ''}".rstrip(": ")


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from, outermost first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def missing_onnx_op(exc: BaseException) -> str | None:
    """The ATen/prims operation torch.onnx found no ONNX function for, if that is why ``exc`` was raised."""
    for cause in _causes(exc):
        found = _MISSING_OP.search(str(cause))
        if found:
            return found.group(1)
    return None


def conversion_error(exc: BaseException) -> ValueError:
    """A ``ValueError`` saying why ``torch.onnx.export`` failed on the attention graph and what to do."""
    op = missing_onnx_op(exc)
    if op is not None:
        return ValueError(
            f"torch.onnx (torch {torch.__version__}) has no ONNX function for the operation {op!r}, used by the "
            f"model or by the gradient of the layers after the target layer: a limitation of the converter, which "
            f"a fixed image size does not lift. Choose a target layer after which that operation is not used, "
            f"replace it in the model, or compute the attention in PyTorch (gainx.attention_maps)"
        )
    return ValueError(
        f"torch.onnx.export cannot convert the attention graph ({first_line(_causes(exc)[-1])}); a target "
        f"layer closer to the output leaves fewer operations to convert, or compute the attention in PyTorch "
        f"(gainx.attention_maps)"
    )
