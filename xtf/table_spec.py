"""The checks of an experiment spec's `table:` and `plot:` blocks (the keys are described in xtf.tables, the plot
kinds in xtf.plots): a bad block fails before any work, naming the file, the key and what is allowed (SpecError).
Called by xtf.experiment.load_experiment (through xtf.tables)."""

from __future__ import annotations

import re

from xtf.errors import SpecError

_TABLE_KEYS = ("rows", "columns", "split", "values", "value", "best", "scale", "digits", "names", "paper",
               "paper_key", "mean", "baseline")
_MEAN_KEYS = ("over", "label", "paper_key")
_VALUE_KEYS = ("path", "best", "scale", "digits")
_BEST = ("max", "min", "none")
_DIRECTIONS = ("column", "row", "none")


def _fail(path, key, problem):
    raise SpecError(f"{path}: {key}: {problem}")


def _coords(path, key, value, spec) -> list[str]:
    items = [value] if isinstance(value, str) else (value or [])
    if not isinstance(items, list):
        _fail(path, key, f"expected a coordinate or a list of them, got {value!r}")
    for c in items:
        if c not in spec["coords"]:
            _fail(path, key, f"unknown coordinate {c!r}; coordinates of this spec: {spec['coords']}")
    return [str(c) for c in items]


def check_table(path, raw, spec: dict) -> dict:
    """The table layout, checked against the spec's coordinates; defaults filled in."""
    if not isinstance(raw, dict):
        _fail(path, "table", "expected a mapping (rows, columns, values, ...)")
    unknown = sorted(set(raw) - set(_TABLE_KEYS))
    if unknown:
        _fail(path, f"table.{unknown[0]}", f"unknown key; allowed: {list(_TABLE_KEYS)}")
    rows = _coords(path, "table.rows", raw.get("rows", spec["coords"][:1]), spec)
    columns = _coords(path, "table.columns", raw.get("columns"), spec)
    split = _coords(path, "table.split", raw.get("split"), spec)
    if not rows:
        _fail(path, "table.rows", "at least one coordinate")
    placed = rows + columns + split
    twice = sorted({c for c in placed if placed.count(c) > 1})
    if twice:
        _fail(path, "table", f"coordinate {twice[0]!r} is placed twice (rows, columns, split)")
    missing = [c for c in spec["coords"] if c not in placed]
    if missing:
        _fail(path, "table", f"coordinate {missing[0]!r} is in neither rows, columns nor split (its cells would "
              f"collapse into one table cell)")
    if ("values" in raw) == ("value" in raw):
        _fail(path, "table.values", "give exactly one of 'value' (a record path) or 'values' {name: path}")
    values_raw = {"value": raw["value"]} if "value" in raw else raw["values"]
    if not isinstance(values_raw, dict) or not values_raw:
        _fail(path, "table.values", "expected a mapping {column name: record path or {path, best, scale, digits}}")
    scale, digits = raw.get("scale", 1), raw.get("digits", 3)
    values = []
    for name, v in values_raw.items():
        v = {"path": v} if isinstance(v, str) else v
        key = f"table.values.{name}"
        if not isinstance(v, dict) or not isinstance(v.get("path"), str):
            _fail(path, key, "expected a dotted record path (e.g. metrics.accuracy) or {path: ..., best: ...}")
        bad = sorted(set(v) - set(_VALUE_KEYS))
        if bad:
            _fail(path, f"{key}.{bad[0]}", f"unknown key; allowed: {list(_VALUE_KEYS)}")
        best = v.get("best", "max")
        if best not in _BEST:
            _fail(path, f"{key}.best", f"{best!r} is not allowed; choose one of {list(_BEST)}")
        s, d = v.get("scale", scale), v.get("digits", digits)
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not isinstance(d, int) or d < 0:
            _fail(path, key, "scale must be a number and digits an integer >= 0")
        values.append({"name": str(name), "path": v["path"], "best": best, "scale": s, "digits": d})
    direction = raw.get("best", "column")
    if direction not in _DIRECTIONS:
        _fail(path, "table.best", f"{direction!r} is not allowed; choose one of {list(_DIRECTIONS)}")
    names = raw.get("names") or {}
    if not isinstance(names, dict) or any(c not in spec["coords"] for c in names):
        _fail(path, "table.names", f"expected {{coordinate: display name}} over {spec['coords']}")
    paper = raw.get("paper")
    if paper is not None and not isinstance(paper, str):
        _fail(path, "table.paper", "expected a table key of experiments/paper_numbers.yaml")
    default_key = "/".join("{" + c + "}" for c in spec["coords"]) + ("/{value}" if len(values) > 1 else "")
    paper_key = raw.get("paper_key", default_key)
    fields = set(re.findall(r"{([^}]*)}", str(paper_key)))
    if not fields <= {*spec["coords"], "value"}:
        _fail(path, "table.paper_key", f"unknown field(s) {sorted(fields - {*spec['coords'], 'value'})}; "
              f"allowed: {spec['coords'] + ['value']}")
    return {"rows": rows, "columns": columns, "split": split, "values": values, "best": direction,
            "names": {str(k): str(v) for k, v in names.items()}, "paper": paper, "paper_key": str(paper_key),
            "mean": _check_mean(path, raw.get("mean"), rows, columns, split, paper),
            "baseline": _check_baseline(path, raw.get("baseline"), rows, spec)}


def _check_baseline(path, raw, rows: list[str], spec: dict) -> str | None:
    """table.baseline: a label of the last row coordinate (the row every other row of its group is compared with)."""
    if raw is None:
        return None
    labels = spec["labels"][rows[-1]]
    if not isinstance(raw, str) or raw not in labels:
        _fail(path, "table.baseline", f"{raw!r} is not a label of the row coordinate {rows[-1]!r}; allowed: {labels}")
    return raw


def _check_mean(path, raw, rows, columns, split, paper) -> dict | None:
    """table.mean → {over, label, paper_key or None}; the paper key may name only the coordinates the mean keeps."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("over") not in ("rows", "columns"):
        _fail(path, "table.mean", "expected {over: rows | columns, label: <row or column label>, paper_key: ...}")
    bad = sorted(set(raw) - set(_MEAN_KEYS))
    if bad:
        _fail(path, f"table.mean.{bad[0]}", f"unknown key; allowed: {list(_MEAN_KEYS)}")
    if raw["over"] == "columns" and not columns:
        _fail(path, "table.mean.over", "a mean over columns needs table.columns")
    label = raw.get("label", "mean")
    if not isinstance(label, str) or not label:
        _fail(path, "table.mean.label", f"expected a non-empty text, got {label!r}")
    paper_key = raw.get("paper_key")
    if paper_key is not None:
        if paper is None:
            _fail(path, "table.mean.paper_key", "needs table.paper (the paper table the printed means are in)")
        kept = split + (columns if raw["over"] == "rows" else rows) + ["value"]
        fields = set(re.findall(r"{([^}]*)}", str(paper_key)))
        if not fields <= set(kept):
            _fail(path, "table.mean.paper_key", f"unknown field(s) {sorted(fields - set(kept))}; a mean over "
                  f"{raw['over']} keeps only {kept}")
        paper_key = str(paper_key)
    return {"over": raw["over"], "label": label, "paper_key": paper_key}


def check_plot(path, raw, spec: dict) -> dict:
    if not isinstance(raw, dict) or raw.get("kind") not in ("bar", "lines", "passk"):
        _fail(path, "plot.kind", "expected one of ['bar', 'lines', 'passk']")
    names = [v["name"] for v in spec["table"]["values"]]

    def value_names(key, default=None):
        items = raw.get(key, default)
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list) or not items or any(n not in names for n in items):
            _fail(path, f"plot.{key}", f"expected table value name(s) from {names}, got {items!r}")
        return items

    kind = raw["kind"]
    allowed = {"bar": {"kind", "value", "x", "hue", "panels"},
               "lines": {"kind", "x", "facet", "values", "reference", "tradeoff"},
               "passk": {"kind", "values", "series", "facet"}}[kind]
    unknown = sorted(set(raw) - allowed)
    if unknown:
        _fail(path, f"plot.{unknown[0]}", f"unknown key for kind {kind}; allowed: {sorted(allowed)}")
    out = {"kind": kind}
    if kind == "bar":
        out["value"] = value_names("value", names[:1])[0]
        out["x"] = _coords(path, "plot.x", raw.get("x"), spec)
        hue = _coords(path, "plot.hue", raw.get("hue"), spec)
        out["panels"] = _coords(path, "plot.panels", raw.get("panels"), spec)
        if len(hue) > 1 or len(out["panels"]) > 2:
            _fail(path, "plot", "bar takes at most one hue coordinate and at most two panel coordinates")
        out["hue"] = hue[0] if hue else None
        placed = out["x"] + hue + out["panels"]
        if len(set(placed)) != len(placed):
            _fail(path, "plot", f"a coordinate is placed twice (x, hue, panels): {placed}")
    elif kind == "lines":
        out["x"] = _coords(path, "plot.x", raw.get("x"), spec)
        out["facet"] = _coords(path, "plot.facet", raw.get("facet"), spec)
        if len(out["x"]) != 1 or len(out["facet"]) > 1:
            _fail(path, "plot", "lines needs one x coordinate and at most one facet coordinate")
        out["values"] = value_names("values", names[:1])
        out["reference"] = raw.get("reference")
        if out["reference"] is not None and (not out["facet"] or out["reference"]
                                             not in spec["labels"][out["facet"][0]]):
            _fail(path, "plot.reference", "expected a label of the facet coordinate")
        out["tradeoff"] = value_names("tradeoff") if raw.get("tradeoff") else None
        if out["tradeoff"] and len(out["tradeoff"]) != 2:
            _fail(path, "plot.tradeoff", "expected [x value, y value]")
    else:
        out["values"] = value_names("values")
        for n in out["values"]:
            if not re.search(r"@(\d+)$", n):
                _fail(path, "plot.values", f"{n!r}: pass@k value names must end in @<k>")
        out["series"] = _coords(path, "plot.series", raw.get("series"), spec)
        out["facet"] = _coords(path, "plot.facet", raw.get("facet"), spec)
        if len(out["series"]) != 1 or len(out["facet"]) > 2:
            _fail(path, "plot", "passk needs one series coordinate and at most two facet coordinates")
    return out
