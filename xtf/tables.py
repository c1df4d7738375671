"""Tables and plots of an experiment from its local run records: Markdown and LaTeX, "mean ± std" over seeds.

    python -m xtf.experiment --tables          # every experiments/*.yaml that has records → results/tables/

A spec's `table:` block (checked by `check_table`):

    rows: [train, method]      # coordinates down the side; all but the last one form row groups
    columns: [model]           # coordinates across the top (may be empty)
    split: [task]              # one sub-table per label of these coordinates (optional)
    values:                    # one sub-column per value; a dotted path into results.json, or a mapping
      accuracy: metrics.accuracy
      kept fraction: {path: mask.kept_fraction, best: none}
    best: column               # bold the best of each column within a row group | row | none
    scale: 100                 # shown value = record value × scale (the paper prints percentages)
    digits: 1
    names: {cell: method}      # display names of coordinates (optional)
    paper: table1              # key in experiments/paper_numbers.yaml → a "paper" sub-column beside ours
    paper_key: "{train}/{method}/{task}/{model}"   # the number's key in that table (default: every coordinate)
    mean:                      # optional: a last row (over: rows) or column (over: columns) of means
      over: rows
      label: Average
      paper_key: "{task}/Average/{method}"   # the paper's printed mean (fields: the other placements + value)

Each cell is "mean ± std" over its seeds (sample std, ddof=1), "(n=k)" when fewer than the spec's seeds are
complete, "—" when none is (never 0), blank when the combination is not part of the grid. The best of a group
is bold (**…** / \\textbf). Paper numbers are shown as printed in the paper (no scaling); a number that could
not be read from the paper is absent from paper_numbers.yaml and shows "—".

A mean cell is the mean of the shown cell means it spans (the grid's cells only; a blank, excluded combination is
not counted), "—" until every one of them has a value; its paper sub-column is the paper's printed mean (never
computed here: the paper's may span other rows). Means compete for bold only with means.

`mask.kept_fraction` is the share of answer tokens a run trained on (xtf.summary.kept_fraction): for an online
method (xtf.online, which keeps every answer token in its offline mask and selects per batch) it is the kept
fraction chosen during training, and the cell says "(online)". DERIVED lists such computed record paths.

`plot:` kinds (rendered by xtf.plots, which says how): `bar` (a bar per cell, or grouped: `x` coordinates, a
colour per `hue` label, a panel per `panels` label), `lines` (x = a coordinate, one panel per `facet` label and
value, and an optional `tradeoff` panel [x value, y value] with one line per facet label), `passk` (pass@k vs k,
one line per `series` label, panels = the labels of up to two `facet` coordinates).
"""

from __future__ import annotations

import json
import math
import re
import sys
from pathlib import Path

import numpy as np
import yaml

from xtf.experiment import PAPER_NUMBERS, ROOT, SpecError, collect, expand
from xtf.summary import kept_fraction, stale_code_lines

_TABLE_KEYS = ("rows", "columns", "split", "values", "value", "best", "scale", "digits", "names", "paper",
               "paper_key", "mean")
_MEAN_KEYS = ("over", "label", "paper_key")
_VALUE_KEYS = ("path", "best", "scale", "digits")
_BEST = ("max", "min", "none")
_DIRECTIONS = ("column", "row", "none")
MISSING = "—"


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
            "mean": _check_mean(path, raw.get("mean"), rows, columns, split, paper)}


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


# ---------------------------------------------------------------------------------------------------------------
# Values

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


def load_paper_numbers(path: Path = PAPER_NUMBERS) -> dict:
    """experiments/paper_numbers.yaml: {source: {...}, tables: {key: {table, status, note, values: {key: num}}}}."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    tables = data.get("tables")
    if not isinstance(data.get("source"), dict) or not isinstance(tables, dict):
        raise SpecError(f"{path}: expected keys 'source' (where the numbers come from) and 'tables'")
    for key, t in tables.items():
        vals = (t or {}).get("values") or {}
        if not isinstance(vals, dict) or not all(isinstance(v, (int, float)) for v in vals.values()):
            raise SpecError(f"{path}: tables.{key}.values: expected {{cell key: number}}")
    return data


# ---------------------------------------------------------------------------------------------------------------
# Layout: sections (one per split label) of rows × columns, each cell ours or the paper's

def _ordered(spec, coords, labels_of_cells):
    """Unique label tuples of `coords` over the given cells, in the order they first appear in the grid."""
    return list(dict.fromkeys(tuple(spec["points"][label][c] for c in coords) for label in labels_of_cells))


def build(spec: dict, records: dict[str, list[dict]], paper_values: dict | None) -> list[dict]:
    """The table as data: [{title, row_coords, columns: [{levels, ...}], rows: [{labels, cells}]}]."""
    t = spec["table"]
    n_seeds = len(spec["seeds"])
    by_point = {tuple(p[c] for c in spec["coords"]): label for label, p in spec["points"].items()}
    values = t["values"]
    show_value = len(values) > 1 or not t["columns"]
    sections = []
    for skey in _ordered(spec, t["split"], spec["cells"]):
        in_split = [lb for lb in spec["cells"] if tuple(spec["points"][lb][c] for c in t["split"]) == skey]
        row_keys = _ordered(spec, t["rows"], in_split)
        col_keys = _ordered(spec, t["columns"], in_split)
        mean = t["mean"]
        sources = ("ours", "paper") if t["paper"] else ("ours",)
        columns = []
        for ck in [*col_keys, *([None] if mean and mean["over"] == "columns" else [])]:
            for v in values:
                for source in sources:
                    # ck == () for a table without column coordinates (one column per value); None = the mean
                    head = list(ck) if ck is not None else [mean["label"]] + [""] * (len(t["columns"]) - 1)
                    levels = head + ([v["name"]] if show_value else []) + ([source] if t["paper"] else [])
                    columns.append({"levels": levels, "key": ck if ck is not None else (mean["label"],), "value": v,
                                    "source": source, "mean": ck is None})
        rows = []
        for rk in row_keys:
            cells = []
            for col in columns:
                point = dict(zip(t["split"], skey)) | dict(zip(t["rows"], rk))
                if col["mean"]:  # the mean of this row's cells of the same value and source
                    spanned = [c for other, c in zip(columns, cells) if not other["mean"]
                               and (other["value"]["name"], other["source"]) == (col["value"]["name"], col["source"])]
                    cells.append(_mean_cell(spanned, point, col, paper_values, mean))
                    continue
                point |= dict(zip(t["columns"], col["key"]))
                label = by_point.get(tuple(point[c] for c in spec["coords"]))
                cells.append(_cell(label, point, col, records, paper_values, t, n_seeds))
            rows.append({"labels": list(rk), "cells": cells})
        if mean and mean["over"] == "rows":
            point = dict(zip(t["split"], skey))
            cells = [_mean_cell([r["cells"][i] for r in rows], point | dict(zip(t["columns"], col["key"])), col,
                                paper_values, mean) for i, col in enumerate(columns)]
            rows.append({"labels": [mean["label"]] + [""] * (len(t["rows"]) - 1), "cells": cells, "mean": True})
        _bold(rows, columns, t)
        title = ", ".join(f"{t['names'].get(c, c)} = {x}" for c, x in zip(t["split"], skey)) or None
        sections.append({"title": title, "row_coords": [t["names"].get(c, c) for c in t["rows"]],
                         "columns": columns, "rows": rows})
    return sections


def _cell(label, point, col, records, paper_values, t, n_seeds) -> dict:
    v = col["value"]
    if label is None:
        return {"absent": True}
    if col["source"] == "paper":
        key = t["paper_key"].format(**point, value=v["name"])
        num = (paper_values or {}).get(key)
        return {"mean": None if num is None else f"{num:.{v['digits']}f}", "std": None, "n": None}
    runs = records.get(label, [])
    s = summarise([metric(r, v["path"]) for r in runs])
    if s is None:
        return {"mean": None, "std": None, "n": None}
    mean, std, n = s
    online = v["path"] in DERIVED and any(DERIVED[v["path"]](r)[1] for r in runs)
    return {"mean": f"{mean * v['scale']:.{v['digits']}f}",
            "std": None if std is None else f"{std * v['scale']:.{v['digits']}f}",
            "n": n if n < n_seeds else None, "value": mean * v["scale"], "online": online}


def _mean_cell(spanned: list[dict], point: dict, col: dict, paper_values, mean: dict) -> dict:
    """The mean of the spanned cells' shown means (grid cells only; "—" until all have one), or for the paper
    sub-column the paper's printed mean (mean.paper_key)."""
    v = col["value"]
    if col["source"] == "paper":
        key = mean["paper_key"].format(**point, value=v["name"]) if mean["paper_key"] else None
        num = (paper_values or {}).get(key)
        return {"mean": None if num is None else f"{num:.{v['digits']}f}", "std": None, "n": None, "is_mean": True}
    present = [c for c in spanned if not c.get("absent")]
    if not present or any("value" not in c for c in present):
        return {"mean": None, "std": None, "n": None, "is_mean": True}
    m = float(np.mean([c["value"] for c in present]))
    return {"mean": f"{m:.{v['digits']}f}", "std": None, "n": None, "value": m, "is_mean": True}


def _bold(rows, columns, t) -> None:
    """Mark the best of each group (as displayed, so equal-looking numbers are all bold); groups of one, and groups
    where every value ties (nothing is best), stay plain."""
    if t["best"] == "none":
        return
    groups: dict[tuple, list[dict]] = {}
    for rk in rows:
        for col, cell in zip(columns, rk["cells"]):
            if col["source"] != "ours" or col["value"]["best"] == "none" or "value" not in cell:
                continue
            if t["best"] == "column":
                gkey = (tuple(rk["labels"][:-1]), tuple(col["key"]), col["value"]["name"])
            else:
                gkey = (tuple(rk["labels"]), col["value"]["name"])
            gkey += (bool(cell.get("is_mean")),)  # a mean competes only with means
            groups.setdefault(gkey, []).append((col["value"], cell))
    for members in groups.values():
        if len(members) < 2:
            continue
        pick = max if members[0][0]["best"] == "max" else min
        best = pick(float(cell["mean"]) for _, cell in members)
        if all(float(cell["mean"]) == best for _, cell in members):
            continue
        for _, cell in members:
            cell["bold"] = float(cell["mean"]) == best


# ---------------------------------------------------------------------------------------------------------------
# Rendering

def _text(cell: dict, tex: bool) -> str:
    if cell.get("absent"):
        return ""
    if cell["mean"] is None:
        return "---" if tex else MISSING
    pm = " $\\pm$ " if tex else " ± "
    text = cell["mean"] + ("" if cell["std"] is None else pm + cell["std"])
    if cell["n"] is not None:
        text += f" (n={cell['n']})"
    if cell.get("online"):
        text += " (online)"
    if cell.get("bold"):
        text = f"\\textbf{{{text}}}" if tex else f"**{text}**"
    return text


def _row_labels(rows: list[dict]) -> list[list[str]]:
    """Row labels with a group label shown only where it changes (the last coordinate always)."""
    out, last = [], None
    for r in rows:
        labels = list(r["labels"])
        shown = [x if last is None or labels[: i + 1] != last[: i + 1] else "" for i, x in enumerate(labels[:-1])]
        out.append(shown + labels[-1:])
        last = labels
    return out


def to_markdown(sections: list[dict]) -> str:
    parts = []
    for s in sections:
        if s["title"]:
            parts.append(f"### {s['title']}\n")
        head = [x.replace("|", "\\|") for x in s["row_coords"]
                + [" / ".join(x for x in c["levels"] if x) for c in s["columns"]]]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(s["row_coords"]) + "---:|" * len(s["columns"])]
        for labels, r in zip(_row_labels(s["rows"]), s["rows"]):
            lines.append("| " + " | ".join([x.replace("|", "\\|") for x in labels]
                                           + [_text(c, tex=False) for c in r["cells"]]) + " |")
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "<": r"$<$", ">": r"$>$", "|": r"$|$", "±": r"$\pm$", "×": r"$\times$", "—": "---", "–": "--"}


def tex_escape(text: str) -> str:
    return "".join(_TEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(sections: list[dict], name: str) -> str:
    parts = [f"% {name}: generated by xtf.tables from the run records in results/{name}/ — do not edit.\n"
             f"% Rebuild: python -m xtf.experiment --tables   (needs \\usepackage{{booktabs}})\n"]
    for s in sections:
        nr, cols = len(s["row_coords"]), s["columns"]
        depth = len(cols[0]["levels"])
        lines = []
        if s["title"]:
            lines.append(f"\\par\\smallskip\\textit{{{tex_escape(s['title'])}}}\\par")
        lines += [f"\\begin{{tabular}}{{{'l' * nr}{'r' * len(cols)}}}", "\\toprule"]
        for level in range(depth):
            cells = [tex_escape(c) for c in s["row_coords"]] if level == depth - 1 else [""] * nr
            rules, i = [], 0
            while i < len(cols):  # merge neighbours with the same header prefix
                j = i
                while j + 1 < len(cols) and cols[j + 1]["levels"][: level + 1] == cols[i]["levels"][: level + 1]:
                    j += 1
                label = tex_escape(cols[i]["levels"][level])
                cells.append(label if j == i else f"\\multicolumn{{{j - i + 1}}}{{c}}{{{label}}}")
                if j > i and level < depth - 1 and label:
                    rules.append(f"\\cmidrule(lr){{{nr + i + 1}-{nr + j + 1}}}")
                i = j + 1
            lines.append(" & ".join(cells) + " \\\\" + (" " + " ".join(rules) if rules else ""))
        lines.append("\\midrule")
        last_group = None
        for labels, r in zip(_row_labels(s["rows"]), s["rows"]):
            group = None if r.get("mean") else r["labels"][:-1]  # a mean row is set apart
            if last_group is not None and group != last_group:
                lines.append("\\midrule")
            last_group = group
            lines.append(" & ".join([tex_escape(x) for x in labels] + [_text(c, tex=True) for c in r["cells"]])
                         + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}"]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------------------------

def paper_values_for(spec: dict, paper_numbers: Path = PAPER_NUMBERS) -> tuple[dict | None, str]:
    """The paper's numbers for this spec's table and a one-line source note (SpecError for unknown keys)."""
    key = spec["table"]["paper"]
    if key is None:
        return None, ""
    data = load_paper_numbers(paper_numbers)
    if key not in data["tables"]:
        raise SpecError(f"{spec['path']}: table.paper: {key!r} is not a table of {paper_numbers}; "
                        f"allowed: {sorted(data['tables'])}")
    entry, src = data["tables"][key] or {}, data["source"]
    values = entry.get("values") or {}
    t = spec["table"]

    def keys(points: dict) -> set[str]:
        found = {t["paper_key"].format(**p, value=v["name"]) for p in points.values() for v in t["values"]}
        if t["mean"] and t["mean"]["paper_key"]:  # the paper's printed means: the key drops the averaged coordinates
            found |= {t["mean"]["paper_key"].format(**p, value=v["name"]) for p in points.values()
                      for v in t["values"]}
        return found

    # A stand-in leaves cells out (stand_in.exclude: e.g. table1's full rows): the paper's numbers are checked
    # against the whole grid (all_points), and those of the cells shown are the ones kept.
    valid, whole = keys(spec["points"]), keys(spec.get("all_points", spec["points"]))
    stray = sorted(set(values) - whole)
    if stray:
        raise SpecError(f"{paper_numbers}: tables.{key}.values: {stray[0]!r} matches no cell of {spec['path']} "
                        f"(keys look like {sorted(whole)[0]!r})")
    values = {k: v for k, v in values.items() if k in valid}
    note = (f"Paper column: arXiv {src.get('arxiv')} {src.get('version', '')}, {entry.get('table', key)}; "
            f"{len(values)} of {len(valid)} numbers transcribed ({entry.get('status', 'see the file')}). "
            f"Source and gaps: experiments/paper_numbers.yaml.")
    return values, note


def write_tables(spec: dict, out_dir: str | Path | None = None, skip_empty: bool = False,
                 records: dict | None = None, paper_numbers: Path = PAPER_NUMBERS) -> Path | None:
    """results/tables/<name>.{md,tex,json} (+ .png) from the local records; with skip_empty, an experiment with
    no record at all is left alone (its committed table is not overwritten by dashes)."""
    out_dir = Path(out_dir or ROOT / "results" / "tables")
    records = collect(spec) if records is None else records
    if skip_empty and not records:
        print(f"[xtf] {spec['name']}: no complete run yet, table not built")
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    # A record reused by every rebuild may have been made by other code than this: said, never a failure.
    for line in stale_code_lines([r for rs in records.values() for r in rs], spec["name"]):
        print(line, file=sys.stderr)
    paper, note = paper_values_for(spec, paper_numbers)
    sections = build(spec, records, paper)
    n_runs, n_done = len(expand(spec)), sum(len(r) for r in records.values())
    seeds = ", ".join(map(str, spec["seeds"]))
    bold = {"column": "; bold: the best of each column within its row group", "row": "; bold: the best of each row",
            "none": ""}[spec["table"]["best"]]
    header = (f"# {spec['name']}\n\n{spec['description']}\n\n"
              f"Generated from the run records in results/{spec['name']}/ ({n_done} of {n_runs} runs complete; "
              f"seeds {seeds}): mean ± std over seeds, (n=k) where fewer seeds are complete, {MISSING} where none "
              f"is{bold}. Rebuild: `make tables`.\n" + (f"\n{note}\n" if note else "") + "\n")
    md_path = out_dir / f"{spec['name']}.md"
    md = to_markdown(sections)
    md_path.write_text(header + md)
    (out_dir / f"{spec['name']}.tex").write_text(to_latex(sections, spec["name"]))
    (out_dir / f"{spec['name']}.json").write_text(json.dumps(
        {label: [r["run_id"] for r in rs] for label, rs in records.items()}, indent=1) + "\n")
    if spec["plot"] and records:
        from xtf.plots import plot

        plot(spec, records, out_dir / f"{spec['name']}.png")
    print(md)
    print(f"[xtf] table: {md_path} ({n_done}/{n_runs} runs)")
    return md_path
