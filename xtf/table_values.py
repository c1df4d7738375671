"""A table's values from run records: a record's value by dotted path (`metric`, with the computed paths of
DERIVED) and the mean ± std over seeds (`summarise`). Below xtf.tables and xtf.plots, which both show them."""

from __future__ import annotations

import math

import numpy as np

from xtf.summary import kept_fraction

# Record paths whose table value is computed from the record, not read: path → record → (value, online?).
DERIVED = {"mask.kept_fraction": kept_fraction}


def metric(record: dict, path: str):
    """A value from a record by dotted path (e.g. "metrics.accuracy", "detection.filler.mask.f1"), or DERIVED's;
    None if absent."""
    if path in DERIVED:
        return DERIVED[path](record)[0]
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def summarise(values: list) -> tuple[float, float | None, int] | None:
    """(mean, sample std or None for one value, n) over the finite values; None when there is none."""
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return float(np.mean(vals)), (float(np.std(vals, ddof=1)) if len(vals) > 1 else None), len(vals)
