"""An evaluation report as strict JSON: rounded numbers, and ``null`` with a reason where a metric is undefined."""

from __future__ import annotations

import math
from typing import Any

DIGITS = 4
_NO_GUIDE = "no image of the split carries a mask or boxes (with an object pixel) to score the attention maps against"
UNDEFINED = {"mAP": "no class of the split has a positive image", "miou": _NO_GUIDE, "pointing_game": _NO_GUIDE}


def json_report(report: dict[str, Any], digits: int = DIGITS) -> dict[str, Any]:
    """``report`` (nested dicts of numbers) with every float rounded to ``digits`` decimals and every NaN
    replaced by ``None`` plus a ``<key>_undefined`` entry beside it that says why (the one ``report`` gives, else
    a generic one; ``json.dumps`` would write ``NaN``, which is not JSON)."""
    out: dict[str, Any] = {}
    for key, value in report.items():
        if isinstance(value, dict):
            out[key] = json_report(value, digits)
        elif isinstance(value, float) and math.isnan(value):
            out[key] = None
            reason = report.get(f"{key}_undefined") or UNDEFINED.get(
                key, "no value: the split holds nothing to compute it on"
            )
            out[f"{key}_undefined"] = reason
        elif isinstance(value, float):
            out[key] = round(value, digits)
        else:
            out[key] = value
    return out
