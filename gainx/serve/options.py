"""Query parameters of the predict endpoints, validated into :class:`PredictOptions`.

``topk=K``            how many of the model's top classes to return (1..model topk);
``classes=a,b``       explain these classes (names or ids) instead of the top-k;
``raw=true|H,W``      add the raw float maps, at the model's input size or at H x W
                      (``raw_size=H,W`` is the same as ``raw=H,W``);
``heatmap=false``     leave out the PNG heatmaps;
``overlay=true``      add PNG overlays of the heatmap on the (preprocessed) image.
Unknown or repeated parameters are refused, so typos do not pass silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gainx.serve.errors import ApiError

PARAMS = ("topk", "classes", "raw", "raw_size", "heatmap", "overlay")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


@dataclass(frozen=True)
class PredictOptions:
    topk: int
    class_ids: tuple[int, ...] | None  # explicit classes (then topk is unused)
    raw_size: tuple[int, int] | None  # None: no raw maps
    heatmap: bool
    overlay: bool


@dataclass(frozen=True)
class ModelLimits:
    """What the options are checked against."""

    classes: Sequence[str]
    topk: int  # classes the graph ranks per image
    default_topk: int
    image_size: tuple[int, int]
    max_raw_pixels: int
    max_classes: int  # per image, with ``classes=``


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_parameter", message)


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise _bad(f"{name}={value!r}: expected true or false")


def _size(name: str, value: str, limits: ModelLimits) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[,x]\s*(\d+)\s*", value)
    if match is None:
        raise _bad(f"{name}={value!r}: expected H,W (two positive integers)")
    h, w = int(match[1]), int(match[2])
    if h < 1 or w < 1 or h * w > limits.max_raw_pixels:
        raise _bad(f"{name}={value!r}: need H, W >= 1 and H*W <= {limits.max_raw_pixels}")
    return h, w


def _class_ids(value: str, limits: ModelLimits) -> tuple[int, ...]:
    names = {name: i for i, name in enumerate(limits.classes)}
    ids = []
    for token in (t.strip() for t in value.split(",")):
        if token in names:
            ids.append(names[token])
        elif token.isdigit() and int(token) < len(limits.classes):
            ids.append(int(token))
        else:
            raise _bad(f"classes: {token!r} is neither a class name nor an id in [0, {len(limits.classes)})")
    if len(ids) > limits.max_classes:
        raise _bad(f"classes: {len(ids)} classes asked, at most {limits.max_classes} per image")
    return tuple(ids)


def parse_options(query: Mapping[str, Sequence[str]], limits: ModelLimits) -> PredictOptions:
    """Validate ``query`` (name -> all values given) into options; 400 on anything wrong."""
    unknown = sorted(set(query) - set(PARAMS))
    if unknown:
        raise _bad(f"unknown query parameter(s) {unknown}; allowed: {list(PARAMS)}")
    repeated = sorted(k for k, v in query.items() if len(v) > 1)
    if repeated:
        raise _bad(f"query parameter(s) {repeated} given more than once")
    q = {k: v[0] for k, v in query.items()}
    if "raw" in q and "raw_size" in q:
        raise _bad("give raw or raw_size, not both")
    if "topk" in q and "classes" in q:
        raise _bad("give topk or classes, not both")
    topk = limits.default_topk
    if "topk" in q:
        if not q["topk"].isdigit() or not 1 <= int(q["topk"]) <= limits.topk:
            raise _bad(f"topk={q['topk']!r}: expected an integer in [1, {limits.topk}] (the model ranks {limits.topk})")
        topk = int(q["topk"])
    raw_size = None
    if "raw_size" in q:
        raw_size = _size("raw_size", q["raw_size"], limits)
    elif "raw" in q:
        if "," in q["raw"] or "x" in q["raw"]:
            raw_size = _size("raw", q["raw"], limits)
        elif _flag("raw", q["raw"]):
            raw_size = tuple(limits.image_size)
    return PredictOptions(
        topk=topk,
        class_ids=_class_ids(q["classes"], limits) if "classes" in q else None,
        raw_size=raw_size,
        heatmap=_flag("heatmap", q.get("heatmap", "true")),
        overlay=_flag("overlay", q.get("overlay", "false")),
    )
