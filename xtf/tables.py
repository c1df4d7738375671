"""Tables and plots of an experiment from its local run records: Markdown and LaTeX, "mean ± std" over seeds.

    python -m xtf.experiment --tables          # every experiments/*.yaml that has records → results/tables/

A spec's `table:` block (checked by xtf.table_spec.check_table; rendered by xtf.table_render):

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
    baseline: normal           # optional: a label of the last row coordinate; every value with per-question
                               # records (accuracy, answer NLL) gets a "Δ <value> vs normal [95% CI]" sub-column

Each cell is "mean ± std" over its seeds (sample std, ddof=1), "(n=k)" when fewer than the spec's seeds are
complete, "—" when none is (never 0), blank when the combination is not part of the grid. The best of a group
is bold (**…** / \\textbf). Paper numbers are shown as printed in the paper (no scaling); a number that could
not be read from the paper is absent from paper_numbers.yaml and shows "—".

A mean cell is the mean of the shown cell means it spans (the grid's cells only; a blank, excluded combination is
not counted), "—" until every one of them has a value; its paper sub-column is the paper's printed mean (never
computed here: the paper's may span other rows). Means compete for bold only with means.

With a baseline, a Δ cell is the row's paired difference to the baseline row of its row group and column, with
its 95 % paired bootstrap CI over questions × seeds (xtf.table_ci, xtf.paired); the plots draw the Δ cells with
the CI as error bars (<name>_paired.png, xtf.plots.plot_paired).

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
import sys
from pathlib import Path

import numpy as np
import yaml

from xtf import table_ci
from xtf.errors import SpecError
from xtf.experiment_runs import PAPER_NUMBERS, ROOT, collect, expand
from xtf.plots import plot, plot_paired
from xtf.summary import stale_code_lines
from xtf.table_render import MISSING, to_latex, to_markdown
from xtf.table_values import DERIVED, metric, summarise  # noqa: F401 - re-exported: tables.metric

# ---------------------------------------------------------------------------------------------------------------
# Values (xtf.table_values: a record's value by path, the mean over seeds) and the paper's numbers


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


def _columns(t: dict, col_keys: list[tuple]) -> list[dict]:
    """The sub-columns: per column key (and the mean column, key None) per value: ours, the paper's, and with a
    baseline the paired difference to it (source "diff", not for the mean column)."""
    mean, diffs = t["mean"], table_ci.diff_values(t)
    show_value = len(t["values"]) > 1 or not t["columns"] or bool(diffs)
    sources = ("ours", "paper") if t["paper"] else ("ours",)
    columns = []
    for ck in [*col_keys, *([None] if mean and mean["over"] == "columns" else [])]:
        # ck == () for a table without column coordinates (one column per value); None = the mean
        head = list(ck) if ck is not None else [mean["label"]] + [""] * (len(t["columns"]) - 1)
        key = ck if ck is not None else (mean["label"],)
        for v in t["values"]:
            for source in sources:
                levels = head + ([v["name"]] if show_value else []) + ([source] if t["paper"] else [])
                columns.append({"levels": levels, "key": key, "value": v, "source": source, "mean": ck is None})
            if v in diffs and ck is not None:
                levels = head + [table_ci.diff_header(v, t["baseline"])] + ([""] if t["paper"] else [])
                columns.append({"levels": levels, "key": key, "value": v, "source": "diff", "mean": False})
    return columns


def build(spec: dict, records: dict[str, list[dict]], paper_values: dict | None, questions=None) -> list[dict]:
    """The table as data: [{title, row_coords, columns: [{levels, ...}], rows: [{labels, cells}]}].
    questions: record → its per-question values (xtf.table_ci.question_loader), for the Δ columns of a table
    with a baseline; None: those cells show "—"."""
    t = spec["table"]
    n_seeds = len(spec["seeds"])
    by_point = {tuple(p[c] for c in spec["coords"]): label for label, p in spec["points"].items()}
    sections = []
    for skey in _ordered(spec, t["split"], spec["cells"]):
        in_split = [lb for lb in spec["cells"] if tuple(spec["points"][lb][c] for c in t["split"]) == skey]
        row_keys = _ordered(spec, t["rows"], in_split)
        mean = t["mean"]
        columns = _columns(t, _ordered(spec, t["columns"], in_split))
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
                if col["source"] == "diff":
                    base = by_point.get(tuple({**point, t["rows"][-1]: t["baseline"]}[c] for c in spec["coords"]))
                    cells.append(_diff_cell(label, base, col, records, questions, n_seeds))
                    continue
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


def _diff_cell(label, base, col, records, questions, n_seeds) -> dict:
    """The paired difference of this row's cell to its baseline row's (xtf.table_ci); blank outside the grid."""
    if label is None or base is None:
        return {"absent": True}
    if label == base:
        return {"text": "(baseline)"}
    return table_ci.diff_cell(records.get(label, []), records.get(base, []), col["value"], questions, n_seeds,
                              (label, base))


def _mean_cell(spanned: list[dict], point: dict, col: dict, paper_values, mean: dict) -> dict:
    """The mean of the spanned cells' shown means (grid cells only; "—" until all have one), or for the paper
    sub-column the paper's printed mean (mean.paper_key); a Δ column has no mean (blank)."""
    v = col["value"]
    if col["source"] == "diff":
        return {"absent": True}
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
    diffs = table_ci.diff_values(spec["table"])
    sections = build(spec, records, paper, table_ci.question_loader(spec) if diffs and records else None)
    for why in dict.fromkeys(c["why"] for s in sections for r in s["rows"] for c in r["cells"] if "why" in c):
        print(f"[xtf] WARNING: {spec['name']}: {why}", file=sys.stderr)
    ci_note = table_ci.note(spec["table"]["baseline"], MISSING) if diffs else ""
    n_runs, n_done = len(expand(spec)), sum(len(r) for r in records.values())
    seeds = ", ".join(map(str, spec["seeds"]))
    bold = {"column": "; bold: the best of each column within its row group", "row": "; bold: the best of each row",
            "none": ""}[spec["table"]["best"]]
    header = (f"# {spec['name']}\n\n{spec['description']}\n\n"
              f"Generated from the run records in results/{spec['name']}/ ({n_done} of {n_runs} runs complete; "
              f"seeds {seeds}): mean ± std over seeds, (n=k) where fewer seeds are complete, {MISSING} where none "
              f"is{bold}. Rebuild: `make tables`.\n" + "".join(f"\n{x}\n" for x in (ci_note, note) if x) + "\n")
    md_path = out_dir / f"{spec['name']}.md"
    md = to_markdown(sections)
    md_path.write_text(header + md)
    (out_dir / f"{spec['name']}.tex").write_text(to_latex(sections, spec["name"], ci_note))
    (out_dir / f"{spec['name']}.json").write_text(json.dumps(
        {label: [r["run_id"] for r in rs] for label, rs in records.items()}, indent=1) + "\n")
    if spec["plot"] and records:
        plot(spec, records, out_dir / f"{spec['name']}.png")
    if diffs and records:  # the Δ columns with their CIs as error bars (none drawn when no cell has one)
        plot_paired(spec, sections, out_dir / f"{spec['name']}_paired.png")
    print(md)
    print(f"[xtf] table: {md_path} ({n_done}/{n_runs} runs)")
    return md_path
