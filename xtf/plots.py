"""Figures of an experiment from its run records, made to be put in a paper (the spec's `plot:` block).

    python -m xtf.experiment --tables      # every experiments/*.yaml with records → results/tables/<name>.png

Kinds (checked by xtf.table_spec.check_plot):
- `bar`: one bar per cell, or grouped bars: `x` coordinate(s) along the axis, one colour per `hue` label (without
  a hue, per label of the last x coordinate), one panel per label combination of `panels` (two panel coordinates:
  rows × columns). The y axis starts at 0 for a value whose 0 is a natural baseline; a lower-is-better value
  (`best: min`: an answer NLL, a loss) gets an axis around its data and error bars, said in its axis label.
- `lines`: a value against the `x` coordinate, one panel per `facet` label (columns) and value (rows), a
  `reference` label drawn as a dashed line, and an optional `tradeoff` panel [x value, y value], one line per
  facet label.
- `passk`: pass@k against k, one line per `series` label, one panel per label combination of `facet`.

With a `table.baseline`, `plot_paired` draws the table's paired differences (xtf.table_ci) as a forest plot whose
error bars are the 95 % paired bootstrap CI, labelled as such (<name>_paired.png).

Conventions, the same in every kind: values are shown as in the table (× the value's `scale`); a point is the
mean over seeds and its error bar the sample std (none for one seed; titled as such: error bars that are CIs say
so, as the paired plot's do); every bar carries its value, and a zero
bar shows "0.0" on a mark at the baseline, while a grid cell without a complete run shows "—" (missing is never
drawn as zero); panels of a row share their y axis; one legend per figure, outside the data (below the
panels, in as many columns as fit; the PNG is cut to what is drawn, never cutting it); a panel without any run
is left out and named in the figure's note. Names and colours (xtf.plot_labels): a stand-in label is the model
that ran ("smollm2_135m (stand-in for llama31_8b)"), labels that point at exactly the same runs are drawn once,
and a method has the same colour in every figure.
"""

from __future__ import annotations

import re
from pathlib import Path

from xtf.plot_labels import PALETTE as COLOURS
from xtf.plot_labels import label_styles, merge_same_runs
from xtf.table_render import MISSING
from xtf.table_values import metric, summarise

MARKERS = "osD^vP*Xph"


def _series(spec, records, value) -> dict:
    """{cell label: (mean, std)} of a table value, scaled as in the table; cells without data are absent."""
    out = {}
    for label in spec["cells"]:
        s = summarise([metric(r, value["path"]) for r in records.get(label, [])])
        if s:
            out[label] = (s[0] * value["scale"], (s[1] or 0.0) * value["scale"])
    return out


def _unit(value) -> str:
    """The axis label of a table value: its name (the record field for a table's single `value`), "(%)" at scale 100."""
    name = value["path"].rsplit(".", 1)[-1] if value["name"] == "value" else value["name"]
    return f"{name} (%)" if value["scale"] == 100 else name


def _combos(spec, coords, cells) -> list[tuple]:
    return list(dict.fromkeys(tuple(spec["points"][cl][c] for c in coords) for cl in cells))


def _panels(spec, coords, has_data) -> tuple[list[tuple], list[tuple], int]:
    """(panels with data, panels without, columns of the panel grid): two coordinates → rows × columns."""
    keys = sorted(_combos(spec, coords, spec["cells"]),  # in label order: row by row of the panel grid
                  key=lambda k: [spec["labels"][c].index(x) for c, x in zip(coords, k)])
    full = [k for k in keys if any(has_data(cl) for cl in spec["cells"]
                                   if tuple(spec["points"][cl][c] for c in coords) == k)]
    empty = [k for k in keys if k not in full]
    ncols = len({k[1] for k in full}) if len(coords) == 2 else min(3, len(full))
    return full, empty, max(1, ncols)


def _figure(plt, n: int, ncols: int, width: float, height: float, sharey=True):
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(max(6.0, width * ncols), height * nrows + 0.9), squeeze=False,
                             sharey=sharey, layout="constrained")
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n])


def _finish(fig, title: str, handles, labels, empty_note: str = "", legend_title: str | None = None) -> None:
    """The title and the figure's one legend below the panels, in as many columns as fit the figure's width (a
    legend wider than the figure would be cut at both sides)."""
    fig.suptitle(title + (f"\n({empty_note})" if empty_note else ""), fontsize=10)  # laid out with the panels
    rows = 1 if len(labels) <= 9 else 2
    while handles:  # rows of equal length: 8 labels in 2 rows of 4, not 7 and 1
        ncol = -(-len(labels) // rows)
        legend = fig.legend(handles, labels, loc="outside lower center", ncol=ncol, fontsize=8, frameon=False,
                            title=legend_title, title_fontsize=8)
        if ncol == 1 or legend.get_window_extent(fig.canvas.get_renderer()).width <= fig.bbox.width * 0.97:
            return
        legend.remove()
        rows += 1


def _over_seeds(spec) -> str:
    n = len(spec["seeds"])
    return f"mean over {n} seeds, error bars: sample std over seeds (not a CI)" if n > 1 else \
        "one seed (no error bars)"


def _empty_note(coords, empty) -> str:
    if not empty:
        return ""
    names = ["/".join(k) for k in empty]
    shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
    return f"no complete run, not drawn: {'/'.join(coords)} = {shown}"


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(axis="y", color="#e5e5e5", lw=0.6)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8)


# ---------------------------------------------------------------------------------------------------------------

def _plot_bar(plt, spec, records, p, vals):
    value = vals[p["value"]]
    data = _series(spec, records, value)
    if not data:
        return None
    hue, pcoords = p["hue"], p["panels"]
    xcoords = p["x"] or [c for c in spec["coords"] if c not in pcoords and c != hue]
    hues = spec["labels"][hue] if hue else [None]
    by_point = {tuple(pt[c] for c in spec["coords"]): cl for cl, pt in spec["points"].items()}
    full, empty, ncols = _panels(spec, pcoords, lambda cl: cl in data)
    groups_all = _combos(spec, xcoords, spec["cells"])
    width = 0.8 / len(hues)
    per_panel = len(groups_all) * len(hues)
    vertical = hue is not None and per_panel > 8  # value labels turned 90°: many thin bars
    panel_w = max(3.2, (0.16 if vertical else 0.6) * per_panel + 1.0)  # inches: room for every value label
    ncols = max(1, min(ncols, int(18 // panel_w)))  # a page-wide figure at most; more panels wrap
    fig, axes = _figure(plt, len(full), ncols, panel_w, 3.0)
    bottom, top = _bar_range(value, data)
    step = (top - bottom) / 100  # 1 % of the axis: where value labels and dashes sit
    colour_by = hue or xcoords[-1]  # a colour per method (xtf.plot_labels), hatched where labels share one
    styles = label_styles(spec, colour_by)
    missing_seen = False
    for ax, pk in zip(axes, full):
        where = dict(zip(pcoords, pk))
        groups = [g for g in groups_all if any(
            by_point.get(tuple({**where, **dict(zip(xcoords, g)), hue: h}.get(c) for c in spec["coords"]))
            for h in hues)]
        for gi, g in enumerate(groups):
            for hi, h in enumerate(hues):
                point = {**where, **dict(zip(xcoords, g)), **({hue: h} if hue else {})}
                cl = by_point.get(tuple(point.get(c) for c in spec["coords"]))
                if cl is None:
                    continue  # not part of the grid (excluded): nothing drawn, as the table leaves it blank
                x = gi + (hi - (len(hues) - 1) / 2) * width
                colour, hatch = styles[point[colour_by]]
                if cl not in data:
                    missing_seen = True
                    ax.text(x, bottom + 2 * step, MISSING, ha="center", va="bottom", fontsize=9, color="#757575")
                    continue
                mean, std = data[cl]
                ax.bar(x, mean, width * 0.92, color=colour, hatch=hatch, edgecolor="white", lw=0, yerr=std or None,
                       capsize=2, error_kw={"lw": 0.8, "ecolor": "#333333"})
                if mean == 0:  # a zero bar has no height: a mark on the baseline shows it is there
                    ax.plot([x - width * 0.46, x + width * 0.46], [0, 0], color=colour, lw=2.5,
                            solid_capstyle="butt", clip_on=False)
                ax.text(x, mean + std + step, f"{mean:.{value['digits']}f}", ha="center", va="bottom",
                        fontsize=6.5 if vertical else 7.5, rotation=90 if vertical else 0)
        ax.set_xticks(range(len(groups)), [" / ".join(g) for g in groups])
        if len(groups) > 3:
            plt.setp(ax.get_xticklabels(), rotation=35, ha="right", rotation_mode="anchor")
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylim(bottom, top)
        ax.set_title(", ".join(f"{c} = {x}" for c, x in where.items()), fontsize=9)
        _style(ax)
    for ax in axes[::ncols]:
        ax.set_ylabel(_unit(value) + ("" if bottom == 0 else "\n(axis not from 0)"), fontsize=8)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    labels = [lab for lab in spec["labels"][colour_by] if any(spec["points"][cl][colour_by] == lab for cl in data)]
    handles = [Patch(facecolor=styles[lab][0], hatch=styles[lab][1], edgecolor="white", lw=0) for lab in labels]
    if missing_seen:
        handles.append(Line2D([], [], ls="none", marker="$—$", color="#9e9e9e", markersize=8))
        labels.append("no complete run")
    _finish(fig, f"{spec['name']}: {_unit(value)}\n{_over_seeds(spec)}", handles, labels,
            _empty_note(pcoords, empty), spec["table"]["names"].get(colour_by, colour_by))
    return fig


def _bar_range(value: dict, data: dict) -> tuple[float, float]:
    """The y axis of a bar chart: from 0 for a value whose 0 is a natural baseline (a share, a count: `best` max or
    none); for a lower-is-better value (`best: min`: an answer NLL, a loss, where 0 is an unreachable ideal) around
    the data with its error bars, so that the differences that matter are not flattened. Room above for labels."""
    low, high = min(m - s for m, s in data.values()), max(m + s for m, s in data.values())
    if value["best"] != "min":
        bottom = min(0.0, low)
        return bottom, (high * 1.25 if high > 0 else bottom + value["scale"])
    span = (high - low) or abs(high) * 0.1 or 1.0
    return low - 0.25 * span, high + 0.35 * span


def _numeric(labels):
    try:
        return [float(x) for x in labels]
    except ValueError:
        return None


def _plot_lines(plt, spec, records, p, vals):
    from matplotlib.lines import Line2D

    x, facet = p["x"][0], (p["facet"] or [None])[0]
    names = list(dict.fromkeys([*p["values"], *(p["tradeoff"] or [])]))
    data = {n: _series(spec, records, vals[n]) for n in names}
    if not any(data.values()):
        return None
    ref = [cl for cl in spec["cells"] if facet and spec["points"][cl][facet] == p["reference"]]
    facets = [f for f in (spec["labels"][facet] if facet else [None]) if f != p["reference"]]
    cells_of = {f: [cl for cl in spec["cells"] if facet is None or spec["points"][cl][facet] == f] for f in facets}
    shown = [f for f in facets if any(cl in data[n] for n in names for cl in cells_of[f])]
    empty = [(f,) for f in facets if f not in shown]
    styles = label_styles(spec, facet, hatch_shared=False) if facet else {}
    colour = {f: styles[f][0] if facet else COLOURS[0] for f in facets}  # a method's colour where facets are methods
    nrows, ncols = len(p["values"]), len(shown) + (1 if p["tradeoff"] else 0)
    fig = plt.figure(figsize=(3.1 * ncols, 2.5 * nrows + 1.0), layout="constrained")
    grid = fig.add_gridspec(nrows, ncols)
    for i, name in enumerate(p["values"]):
        first = None
        for j, f in enumerate(shown):
            ax = fig.add_subplot(grid[i, j], sharey=first)
            first = first or ax
            labels = [spec["points"][cl][x] for cl in cells_of[f]]
            xs = _numeric(labels) or list(range(len(labels)))
            pts = sorted((xv, *data[name][cl]) for xv, cl in zip(xs, cells_of[f]) if cl in data[name])
            if pts:
                ax.errorbar([a for a, _, _ in pts], [m for _, m, _ in pts], yerr=[s for _, _, s in pts],
                            marker="o", ms=4, capsize=3, color=colour[f], lw=1.4)
            for cl in ref:
                if cl in data[name]:
                    m, s = data[name][cl]
                    ax.axhline(m, ls="--", color="grey", lw=1)
                    if s:
                        ax.axhspan(m - s, m + s, color="grey", alpha=0.12, lw=0)
            if _numeric(labels) is None:
                ax.set_xticks(xs, labels, rotation=30, ha="right", rotation_mode="anchor")
            ax.set_title(f if f else name, fontsize=9)
            ax.set_xlabel(x, fontsize=8)
            if j == 0:
                ax.set_ylabel(_unit(vals[name]), fontsize=8)
            else:
                ax.tick_params(labelleft=False)
            _style(ax)
    if p["tradeoff"]:
        xn, yn = p["tradeoff"]
        ax = fig.add_subplot(grid[:, -1])
        for f in shown:
            pts = sorted((*data[xn][cl], *data[yn][cl]) for cl in cells_of[f] if cl in data[xn] and cl in data[yn])
            if pts:  # joined in order of the x value
                ax.errorbar([a for a, _, _, _ in pts], [c for _, _, c, _ in pts], xerr=[b for _, b, _, _ in pts],
                            yerr=[d for _, _, _, d in pts], marker="o", ms=4, capsize=2, color=colour[f], lw=1.2)
        for cl in ref:
            if cl in data[xn] and cl in data[yn]:
                ax.errorbar(data[xn][cl][0], data[yn][cl][0], xerr=data[xn][cl][1] or None,
                            yerr=data[yn][cl][1] or None, marker="*", ms=10, color="black", ls="none")
        ax.set_xlabel(_unit(vals[xn]), fontsize=8)
        ax.set_ylabel(_unit(vals[yn]), fontsize=8)
        ax.set_title(f"trade-off: {yn} vs {xn}", fontsize=9)
        _style(ax)
    handles = [Line2D([], [], color=colour[f], marker="o", ms=4) for f in shown]
    labels = [str(f) for f in shown]
    if ref:
        handles.append(Line2D([], [], color="grey", ls="--", marker="*" if p["tradeoff"] else None,
                              markerfacecolor="black", markeredgecolor="black", ms=8))
        labels.append(f"{p['reference']} (reference{', ± std band' if len(spec['seeds']) > 1 else ''})")
    _finish(fig, f"{spec['name']}\n{_over_seeds(spec)}", handles if facet else [], labels,
            _empty_note([facet] if facet else [], empty), facet)
    return fig


def _plot_passk(plt, spec, records, p, vals):
    from matplotlib.lines import Line2D

    ks = [int(re.search(r"@(\d+)$", n).group(1)) for n in p["values"]]
    data = {n: _series(spec, records, vals[n]) for n in p["values"]}
    if not any(data.values()):
        return None
    series, facet = p["series"][0], p["facet"]
    full, empty, ncols = _panels(spec, facet, lambda cl: any(cl in d for d in data.values()))
    fig, axes = _figure(plt, len(full), ncols, 2.7, 2.3)
    names = spec["labels"][series]
    colours = [label_styles(spec, series, hatch_shared=False)[s][0] for s in names]  # a method's own colour
    top = max(m + s for d in data.values() for m, s in d.values())
    for ax, pk in zip(axes, full):
        where = dict(zip(facet, pk))
        zero = True
        for si, s in enumerate(names):
            cells = [cl for cl in spec["cells"] if spec["points"][cl][series] == s
                     and all(spec["points"][cl][k] == v for k, v in where.items())]
            pts = sorted((k, *data[n][cl]) for cl in cells for k, n in zip(ks, p["values"]) if cl in data[n])
            if pts:
                zero = zero and all(m == 0 for _, m, _ in pts)
                ax.errorbar([k for k, _, _ in pts], [m for _, m, _ in pts], yerr=[e for _, _, e in pts],
                            marker=MARKERS[si % len(MARKERS)], ms=4, capsize=2, lw=1.2,
                            color=colours[si])
        if zero:
            ax.text(0.5, 0.5, "every series is 0 at every k", transform=ax.transAxes, ha="center", fontsize=7,
                    color="grey")
        ax.set_xticks(ks)
        ax.set_xlabel("k", fontsize=8)
        ax.set_title(", ".join(f"{c} = {x}" for c, x in where.items()) or spec["name"], fontsize=9)
        _style(ax)
    for ax in axes[::ncols]:
        ax.set_ylabel("pass@k (%)" if vals[p["values"][0]]["scale"] == 100 else "pass@k", fontsize=8)
    axes[0].set_ylim(-0.04 * (top or 100), (top or 100) * 1.08)
    handles = [Line2D([], [], color=colours[i], marker=MARKERS[i % len(MARKERS)], ms=4)
               for i in range(len(names))]
    _finish(fig, f"{spec['name']}: pass@k\n{_over_seeds(spec)}", handles, list(names), _empty_note(facet, empty),
            series)
    return fig


KINDS = {"bar": _plot_bar, "lines": _plot_lines, "passk": _plot_passk}
CI_LABEL = "95 % paired bootstrap CI (questions × seeds)"


def paired_figure(spec: dict, sections: list[dict]):
    """The table's Δ columns (xtf.table_ci) as a forest plot: one panel per sub-table and Δ column, a row per table
    row, the difference as a point and its 95 % paired bootstrap CI as the error bar (never the seed std); a
    cell without a difference shows its text ("n/a", "—", "not paired") mid-panel. None when no cell has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    panels = [(sec, i, col) for sec in sections for i, col in enumerate(sec["columns"]) if col["source"] == "diff"
              and any("diff" in r["cells"][i] for r in sec["rows"])]
    if not panels:
        return None
    height = max(len([r for r in sec["rows"] if not r.get("mean")]) for sec, _, _ in panels) * 0.28 + 1.2
    fig, axes = _figure(plt, len(panels), min(3, len(panels)), 3.6, height, sharey=False)
    for ax, (sec, i, col) in zip(axes, panels):
        rows = [r for r in sec["rows"] if not r.get("mean") and r["cells"][i].get("text") != "(baseline)"]
        for y, r in enumerate(rows):
            cell = r["cells"][i]
            if "diff" in cell:
                d, lo, hi = cell["diff"]
                ax.errorbar(d, y, xerr=[[d - lo], [hi - d]], fmt="o", ms=4, capsize=3, color=COLOURS[0], lw=1.2)
            elif not cell.get("absent"):
                ax.text(0.5, y, cell.get("text", MISSING), ha="center", va="center", fontsize=7, color="#757575",
                        transform=ax.get_yaxis_transform())  # mid-panel: a missing difference is never drawn as 0
        ax.axvline(0, color="grey", lw=0.8, ls="--")
        ax.set_yticks(range(len(rows)), [" / ".join(x for x in r["labels"] if x) for r in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        points = " (percentage points)" if col["value"]["scale"] == 100 else ""
        ax.set_xlabel(f"Δ {col['value']['name']} vs {spec['table']['baseline']}{points}", fontsize=8)
        t = spec["table"]
        where = [f"{t['names'].get(c, c)} = {x}" for c, x in zip(t["columns"], col["key"])]
        ax.set_title(", ".join(x for x in [sec["title"], *where] if x) or col["value"]["name"], fontsize=9)
        _style(ax)
        ax.grid(axis="x", color="#e5e5e5", lw=0.6)
    handle = Line2D([], [], marker="o", ms=4, color=COLOURS[0])
    _finish(fig, f"{spec['name']}: paired difference to {spec['table']['baseline']} (error bars: {CI_LABEL}, not "
                 f"the seed std)", [handle], [f"difference, {CI_LABEL}"])
    return fig


def plot_paired(spec: dict, sections: list[dict], out: Path) -> Path | None:
    """Render `paired_figure` into `out` (PNG); None, and no file, when no Δ cell has a difference."""
    return _save(paired_figure(spec, sections), out)


def figure(spec: dict, records: dict[str, list[dict]]):
    """The spec's plot as a matplotlib Figure (None when no cell has data); the caller saves or closes it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spec, records = merge_same_runs(spec, records)
    vals = {v["name"]: v for v in spec["table"]["values"]}
    return KINDS[spec["plot"]["kind"]](plt, spec, records, spec["plot"], vals)


def plot(spec: dict, records: dict[str, list[dict]], out: Path) -> Path | None:
    """Render the spec's plot into `out` (PNG); None, and no file, when no cell has data."""
    return _save(figure(spec, records), out)


def _save(fig, out: Path) -> Path | None:
    import matplotlib.pyplot as plt

    if fig is None:
        return None
    fig.savefig(out, dpi=130, bbox_inches="tight", pad_inches=0.08)  # nothing cut, whatever sticks out
    plt.close(fig)
    return Path(out)

