"""Query options, rendering of maps, and the Prometheus exposition (gainx.serve)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from image_helpers import png_pixels  # tests/ is on sys.path under pytest

from gainx.serve.errors import ApiError
from gainx.serve.metrics import Metrics
from gainx.serve.options import (
    MAX_QUERY_BYTES,
    ModelLimits,
    PredictOptions,
    check_raw_budget,
    parse_options,
    parse_query,
)
from gainx.serve.render import heatmap_png, overlay_png, probabilities, resize_maps
from gainx.viz import heatmap, overlay

LIMITS = ModelLimits(
    classes=["cat", "dog", "7", "bird"],
    topk=3,
    default_topk=2,
    image_size=(32, 48),
    max_raw_pixels=10_000,
    max_raw_values=30_000,
    max_classes=3,
)


def opts(**query: str | list[str]):
    return parse_options({k: v if isinstance(v, list) else [v] for k, v in query.items()}, LIMITS)


def test_defaults() -> None:
    o = opts()
    assert (o.topk, o.class_ids, o.raw_size, o.heatmap, o.overlay) == (2, None, None, True, False)


@pytest.mark.parametrize("k", ["1", "2", "3"])
def test_topk(k: str) -> None:
    assert opts(topk=k).topk == int(k)


@pytest.mark.parametrize("k", ["0", "4", "-1", "two", "1.5", ""])
def test_bad_topk(k: str) -> None:
    with pytest.raises(ApiError, match="topk") as info:
        opts(topk=k)
    assert info.value.status == 400


def test_classes_by_name_and_id() -> None:
    # "7" is a class *name* (index 2); a name wins over an id
    assert opts(classes="dog,7").class_ids == (1, 2)
    assert opts(classes="3, cat").class_ids == (3, 0)


@pytest.mark.parametrize("value", ["fish", "4", "", "cat,,dog", "cat,dog,bird,cat"])
def test_bad_classes(value: str) -> None:
    with pytest.raises(ApiError, match="classes"):
        opts(classes=value)


@pytest.mark.parametrize(
    "query",
    [{"topk": "\u00b2"}, {"topk": "\u0663"}, {"classes": "\u00b2"}, {"raw": "\u00b2,3"}, {"raw_size": "3,\u0663"}],
)
def test_non_ascii_digits_are_refused(query: dict) -> None:
    """str.isdigit() accepts superscripts (which int() refuses: a 500) and other scripts' digits."""
    with pytest.raises(ApiError) as info:
        opts(**query)
    assert info.value.status == 400 and info.value.code == "bad_parameter"


def test_classes_are_bounded_by_the_model() -> None:
    """More ids than the model has classes fails inside ONNX Runtime, so it is refused up front."""
    limits = ModelLimits(
        classes=["cat", "dog"],
        topk=2,
        default_topk=2,
        image_size=(8, 8),
        max_raw_pixels=64,
        max_raw_values=64,
        max_classes=16,
    )
    assert parse_options({"classes": ["dog,cat"]}, limits).class_ids == (1, 0)
    with pytest.raises(ApiError, match="at most 2 per image .the model has 2 classes") as info:
        parse_options({"classes": ["0,1,0"]}, limits)
    assert info.value.status == 400


def test_parse_query_collects_values_in_order() -> None:
    assert parse_query(b"") == {}
    assert parse_query(b"topk=2&raw=1&topk=3&heatmap=") == {"topk": ["2", "3"], "raw": ["1"], "heatmap": [""]}
    assert parse_query(b"classes=cat%2Cdog") == {"classes": ["cat,dog"]}


def test_long_or_crowded_query_is_refused_before_parsing() -> None:
    with pytest.raises(ApiError) as info:
        parse_query(b"&".join(b"a%d=1" % i for i in range(12_000)))
    assert (info.value.status, info.value.code) == (414, "query_too_long")
    with pytest.raises(ApiError) as info:
        parse_query(b"&" * 100)  # short, but 101 parameters
    assert (info.value.status, info.value.code) == (400, "too_many_parameters")
    parse_query(b"classes=" + b"x" * (MAX_QUERY_BYTES - 8))  # exactly at the limit


@pytest.mark.parametrize(
    "images,classes,size,ok",
    [
        (1, 3, (100, 100), True),
        (1, 3, (100, 101), False),
        (3, 1, (100, 100), True),
        (2, 2, (100, 100), False),
    ],
)
def test_raw_budget_counts_every_map_of_the_request(images: int, classes: int, size, ok: bool) -> None:
    o = PredictOptions(topk=classes, class_ids=None, raw_size=size, heatmap=True, overlay=False)
    if ok:
        check_raw_budget(o, images, LIMITS)
    else:
        with pytest.raises(ApiError, match="at most 30000 per request") as info:
            check_raw_budget(o, images, LIMITS)
        assert (info.value.status, info.value.code) == (400, "raw_too_large")
    explicit = PredictOptions(topk=1, class_ids=(0,) * classes, raw_size=size, heatmap=True, overlay=False)
    if not ok:
        with pytest.raises(ApiError):
            check_raw_budget(explicit, images, LIMITS)


@pytest.mark.parametrize(
    "query,size",
    [
        ({"raw": "true"}, (32, 48)),
        ({"raw": "0"}, None),
        ({"raw": "5,7"}, (5, 7)),
        ({"raw_size": "100x100"}, (100, 100)),
        ({"raw": " 3 , 4 "}, (3, 4)),
    ],
)
def test_raw(query: dict, size) -> None:
    assert opts(**query).raw_size == size


@pytest.mark.parametrize(
    "query,needle",
    [
        ({"raw": "0,5"}, "raw"),
        ({"raw": "101,100"}, "raw"),
        ({"raw": "maybe"}, "raw"),
        ({"raw_size": "3"}, "raw_size"),
        ({"raw": "1", "raw_size": "2,2"}, "not both"),
        ({"topk": "1", "classes": "cat"}, "not both"),
        ({"overlay": "sure"}, "overlay"),
        ({"heatmap": "2"}, "heatmap"),
        ({"topK": "1"}, "unknown"),
        ({"topk": ["1", "2"]}, "more than once"),
    ],
)
def test_bad_queries_name_the_problem(query: dict, needle: str) -> None:
    with pytest.raises(ApiError, match=needle) as info:
        opts(**query)
    assert info.value.status == 400 and info.value.code == "bad_parameter"


def test_flags() -> None:
    o = opts(heatmap="false", overlay="YES")
    assert (o.heatmap, o.overlay) == (False, True)


@pytest.mark.parametrize(
    "src,dst",
    [
        ((7, 5), (32, 48)),
        ((32, 48), (7, 5)),
        ((1, 1), (3, 2)),
        ((9, 9), (9, 9)),
        ((4, 6), (13, 1)),
        ((7, 7), (224, 224)),
        ((224, 224), (17, 333)),
        ((3, 500), (999, 2)),
    ],
)
def test_resize_maps_matches_torch_bilinear(src: tuple[int, int], dst: tuple[int, int]) -> None:
    """The numpy resize equals torch's bilinear interpolate (align_corners=False) to 1e-6."""
    maps = np.random.default_rng(0).random((3, *src), dtype=np.float32)
    want = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[None], size=dst, mode="bilinear", align_corners=False
    )[0].numpy()
    got = resize_maps(maps, dst)
    assert got.shape == (3, *dst) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_heatmap_png_is_the_viz_heatmap() -> None:
    edges = np.arange(257, dtype=np.float32) / 256  # every bin boundary, 0 and 1
    near = np.nextafter(edges, np.float32(0))  # just below each boundary
    outside = np.array([-0.5, 1.5, 2.0], np.float32)  # clipped like viz.heatmap does
    random = np.random.default_rng(1).random(257 * 4 - 514 - 3, dtype=np.float32)
    att = np.concatenate([edges, near, outside, random]).reshape(4, 257)
    np.testing.assert_array_equal(png_pixels(heatmap_png(att)), heatmap(att))


def test_heatmap_png_non_finite_values() -> None:
    att = np.array([[np.nan, np.inf, -np.inf, 0.5]], np.float32)  # NaN and -inf as 0, +inf as 1
    np.testing.assert_array_equal(png_pixels(heatmap_png(att)), heatmap(np.array([[0.0, 1.0, 0.0, 0.5]])))


def test_overlay_png_blends_on_the_model_input() -> None:
    rng = np.random.default_rng(2)
    image, att = rng.random((3, 9, 14), dtype=np.float32), rng.random((9, 14), dtype=np.float32)
    rgb = np.round(image.transpose(1, 2, 0) * 255).astype(np.uint8)
    np.testing.assert_array_equal(png_pixels(overlay_png(image, att)), overlay(rgb, att))
    with pytest.raises(ValueError, match="differ in size"):
        overlay_png(image, att[:, :5])


SAMPLE = re.compile(r'^[a-z_]+(\{[a-z_]+="[^"\n]*"(,[a-z_]+="[^"\n]*")*\})? (\d+(\.\d+)?(e[-+]\d+)?|\+Inf)$')


def parse(text: str) -> dict[str, float]:
    """Check every line's syntax and return {series: value}."""
    assert text.endswith("\n")
    samples = {}
    for line in text.splitlines():
        if line.startswith("# "):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        assert SAMPLE.match(line), line
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_metrics_exposition() -> None:
    m = Metrics(max_batch=12)
    for status, seconds in [(200, 0.003), (200, 0.2), (400, 0.0004), (200, 99.0)]:
        m.observe_request("/v1/predict", "POST", status, seconds)
    m.observe_batch(12, 0.01)
    m.observe_batch(3, 0.02)
    depth = [7]
    m.add_gauge("gainx_queue_depth", "Images waiting.", lambda: depth[0])
    s = parse(m.render())
    assert s['gainx_requests_total{endpoint="/v1/predict",method="POST",status="200"}'] == 3
    assert s['gainx_requests_total{endpoint="/v1/predict",method="POST",status="400"}'] == 1
    lat = 'gainx_request_duration_seconds_bucket{endpoint="/v1/predict",le="%s"}'
    assert s[lat % "0.001"] == 1 and s[lat % "0.005"] == 2 and s[lat % "0.25"] == 3 and s[lat % "10.0"] == 3
    assert s[lat % "+Inf"] == 4 == s['gainx_request_duration_seconds_count{endpoint="/v1/predict"}']
    assert s['gainx_request_duration_seconds_sum{endpoint="/v1/predict"}'] == pytest.approx(99.2034)
    assert s['gainx_batch_size_bucket{le="2.0"}'] == 0 and s['gainx_batch_size_bucket{le="4.0"}'] == 1
    assert s['gainx_batch_size_bucket{le="8.0"}'] == 1 and s['gainx_batch_size_bucket{le="12.0"}'] == 2
    assert s["gainx_batch_size_sum"] == 15 and s["gainx_images_total"] == 15
    assert s["gainx_queue_depth"] == 7
    assert s["process_open_fds"] > 0 and s["process_resident_memory_bytes"] > 0  # prometheus_client's process metrics
    depth[0] = 0
    assert parse(m.render())["gainx_queue_depth"] == 0


def test_unlabelled_histograms_start_at_zero() -> None:
    s = parse(Metrics(max_batch=4).render())
    assert s['gainx_batch_size_bucket{le="+Inf"}'] == 0 == s["gainx_batch_size_count"] == s["gainx_batch_size_sum"]
    assert s["gainx_inference_duration_seconds_count"] == 0
    assert not any(k.startswith("gainx_request_duration") for k in s)  # labelled: no series before a request


def test_metrics_label_escaping() -> None:
    m = Metrics(max_batch=1)
    m.observe_request('a"b\\c\nd', "GET", 404, 0.1)
    assert 'endpoint="a\\"b\\\\c\\nd"' in m.render()


@pytest.mark.parametrize("multilabel", [False, True])
def test_probabilities_are_those_gainx_attention_reports(multilabel: bool) -> None:
    """Softmax over the classes (sigmoid per class for multi-label models), finite for extreme logits."""
    logits = np.array([3.0, -1.5, 0.25, 800.0, -800.0], np.float32)
    torch_logits = torch.from_numpy(logits).double()
    want = torch_logits.sigmoid() if multilabel else torch_logits.softmax(0)
    got = probabilities(logits, multilabel)
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-12, atol=0)
    assert np.isfinite(got).all() and (multilabel or abs(got.sum() - 1) < 1e-12)
