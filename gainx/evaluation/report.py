"""An evaluation report as strict JSON: rounded numbers, and ``null`` with a reason where a metric is undefined."""

from __future__ import annotations

import math
from typing import Any

DIGITS = 4
UNDEFINED = {
    "mAP": "no class of the split has a positive image",
    "miou": "no image of the split carries a mask or boxes to score the attention maps against",
    "pointing_game": "no image of the split carries a mask or boxes to score the attention maps against",
}


def json_report(report: dict[str, Any], digits: int = DIGITS) -> dict[str, Any]:
    """``report`` (nested dicts of numbers) with every float rounded to ``digits`` decimals and every NaN
    replaced by ``None`` plus a ``<key>_undefined`` entry beside it that says why (``json.dumps`` would write
    ``NaN``, which is not JSON)."""
    out: dict[str, Any] = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out[key] = json_report(value, digits)
        elif isinstance(value, float) and math.isnan(value):
            out[key] = None
            out[f"{key}_undefined"] = UNDEFINED.get(key, "no value: the split holds nothing to compute it on")
        elif isinstance(value, float):
            out[key] = round(value, digits)
        else:
            out[key] = value
    return out
