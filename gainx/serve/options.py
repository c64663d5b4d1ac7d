"""Query parameters of the predict endpoints, validated into :class:`PredictOptions`.

``topk=K``            how many of the model's top classes to return (1..model topk);
``classes=a,b``       explain these classes (names or ids) instead of the top-k;
``raw=true|H,W``      add the raw float maps, at the model's input size or at H x W
                      (``raw_size=H,W`` is the same as ``raw=H,W``);
``heatmap=false``     leave out the PNG heatmaps;
``overlay=true``      add PNG overlays of the heatmap on the (preprocessed) image.
Unknown or repeated parameters are refused, so typos do not pass silently. A
query string over ``MAX_QUERY_BYTES`` or with more than ``MAX_QUERY_PARAMS``
parameters is refused before it is parsed. Numbers are ASCII digits only.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import parse_qsl

from gainx.serve.errors import ApiError

PARAMS = ("topk", "classes", "raw", "raw_size", "heatmap", "overlay")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}
MAX_QUERY_BYTES = 1024
MAX_QUERY_PARAMS = 2 * len(PARAMS)  # room for a repeat to be refused by name


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
    max_raw_pixels: int  # per raw map
    max_raw_values: int  # raw map values per request, all images and classes
    max_classes: int  # per image, with ``classes=``


def _bad(message: str) -> ApiError:
    return ApiError(400, "bad_parameter", message)


def _is_number(text: str) -> bool:
    """Only ASCII digits: ``str.isdigit`` also accepts ``"²"``, which ``int`` refuses."""
    return text.isascii() and text.isdigit()


def parse_query(query_string: bytes) -> dict[str, list[str]]:
    """Name -> all values of a raw query string, in one linear pass; 414/400 when too long or too many."""
    if len(query_string) > MAX_QUERY_BYTES:
        raise ApiError(
            414,
            "query_too_long",
            f"the query string has {len(query_string)} bytes; at most {MAX_QUERY_BYTES} are accepted",
        )
    count = query_string.count(b"&") + 1 if query_string else 0
    if count > MAX_QUERY_PARAMS:
        raise ApiError(
            400,
            "too_many_parameters",
            f"the query string has {count} parameters; at most {MAX_QUERY_PARAMS} are accepted",
        )
    query: dict[str, list[str]] = {}
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        query.setdefault(key, []).append(value)
    return query


def _flag(name: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise _bad(f"{name}={value!r}: expected true or false")


def _size(name: str, value: str, limits: ModelLimits) -> tuple[int, int]:
    match = re.fullmatch(r"\s*([0-9]+)\s*[,x]\s*([0-9]+)\s*", value)
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
        elif _is_number(token) and int(token) < len(limits.classes):
            ids.append(int(token))
        else:
            raise _bad(f"classes: {token!r} is neither a class name nor an id in [0, {len(limits.classes)})")
    most = min(limits.max_classes, len(limits.classes))
    if len(ids) > most:
        raise _bad(
            f"classes: {len(ids)} classes asked, at most {most} per image (the model has "
            f"{len(limits.classes)} classes; the server allows {limits.max_classes})"
        )
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
        if not _is_number(q["topk"]) or not 1 <= int(q["topk"]) <= limits.topk:
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


def check_raw_budget(opts: PredictOptions, images: int, limits: ModelLimits) -> None:
    """Refuse (400) a request whose raw maps would hold more than ``max_raw_values`` floats in all."""
    if opts.raw_size is None:
        return
    maps = images * (len(opts.class_ids) if opts.class_ids is not None else opts.topk)
    values = maps * opts.raw_size[0] * opts.raw_size[1]
    if values > limits.max_raw_values:
        raise ApiError(
            400,
            "raw_too_large",
            f"raw maps of {images} image(s) x {maps // images} class(es) x {opts.raw_size[0]}x{opts.raw_size[1]} "
            f"= {values} values; at most {limits.max_raw_values} per request (ask for a smaller raw size, fewer "
            f"classes or fewer images)",
        )
