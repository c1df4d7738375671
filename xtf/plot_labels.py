"""How the figures of xtf.plots name and colour what they show.

- A label that names a model (conf/model/<label>.yaml) whose runs ran another model (a stand-in table, e.g.
  table1_smollm2: every model column runs smollm2_135m) is drawn as the model that ran: "smollm2_135m (stand-in
  for llama31_8b)", never as the paper model's name alone.
- Labels of a coordinate that point at exactly the same runs are drawn once ("a = b", or "a … z (n labels, same
  runs)"; stand-ins: "smollm2_135m (stand-in for a, b, c)").
- Each method (conf/method/<name>.yaml, the option a cell's `method=` override names) has one colour, the same in
  every figure (METHOD_COLOURS); labels of one figure that ran the same method (normal on clean and on noisy data,
  XTF's attribute subsets) share its colour and differ by hatch. A coordinate whose labels are not methods gets
  PALETTE's colours in label order.
"""

from __future__ import annotations

from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"
# The first ten: seaborn's "deep" (the colours xtf.plots always used), then six more as distinct as they come.
PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974",
           "#64b5cd", "#1b9e77", "#d95f02", "#e7298a", "#66a61e", "#a6761d", "#17becf"]
HATCHES = ["", "//", "..", "xx", "\\\\", "++", "oo", "--"]
NEUTRAL = "#607d8b"  # a method without a config file (not expected): a colour no method has


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# Method option (conf/method/*.yaml, in name order) → its colour in every figure.
METHOD_COLOURS = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(_options("method"))}


def ran(spec: dict, cell: str, group: str) -> str | None:
    """The option of config group `group` (model, method) that `cell` ran: its last `group=` override."""
    found = [o.partition("=")[2] for o in [*spec["base"], *spec["cells"][cell]]
             if o.partition("=")[0].lstrip("+~") == group]
    return found[-1] if found else None


def _only(spec: dict, coord: str, label: str, group: str) -> str | None:
    """The one option of `group` every cell of `coord` = `label` ran; None when they ran several or none."""
    options = {ran(spec, cl, group) for cl in spec["cells"] if spec["points"][cl][coord] == label}
    return options.pop() if len(options) == 1 else None


def stand_ins(spec: dict, coord: str) -> dict[str, str]:
    """{label: the model its runs ran} for the labels of `coord` that name a model but ran another one."""
    models = set(_options("model"))
    out = {}
    for label in spec["labels"][coord]:
        model = _only(spec, coord, label, "model")
        if label in models and model is not None and model != label:
            out[label] = model
    return out


def _stand_in_text(model: str, labels: list[str]) -> str:
    shown = ", ".join(labels) if len(labels) <= 3 else f"{labels[0]} … {labels[-1]}, {len(labels)} models"
    return f"{model}\n(stand-in for {shown})"


def _merged_text(labels: list[str], stand: dict[str, str]) -> str:
    models = {stand.get(x) for x in labels}
    if None not in models and len(models) == 1:
        return _stand_in_text(models.pop(), labels)
    return " = ".join(labels) if len(labels) == 2 else f"{labels[0]} … {labels[-1]}\n({len(labels)} labels, same runs)"


def merge_same_runs(spec: dict, records: dict) -> tuple[dict, dict]:
    """The spec as drawn: labels of a coordinate whose cells hold exactly the same runs (same run ids at every
    other coordinate) become one label, and stand-in labels are named by the model that ran (module docstring);
    records without a run id are never merged."""
    mergeable = bool(records) and all("run_id" in r for rs in records.values() for r in rs)
    for c in spec["coords"]:
        stand, groups = stand_ins(spec, c), {}
        for lab in spec["labels"][c]:
            cells = [cl for cl in spec["cells"] if spec["points"][cl][c] == lab]
            sig = tuple(sorted((tuple(sorted((k, v) for k, v in spec["points"][cl].items() if k != c)),
                                tuple(sorted(r["run_id"] for r in records.get(cl, [])))) for cl in cells))
            groups.setdefault(sig if mergeable else lab, []).append(lab)
        rename, drop = {}, set()
        for sig, labs in groups.items():
            if len(labs) > 1 and any(runs for _, runs in sig):
                rename[labs[0]] = _merged_text(labs, stand)
                drop.update(labs[1:])
            elif labs[0] in stand:
                rename.update({x: _stand_in_text(stand[x], [x]) for x in labs})
        if not rename:
            continue
        keep = [cl for cl in spec["cells"] if spec["points"][cl][c] not in drop]
        points = {cl: {**spec["points"][cl], c: rename.get(spec["points"][cl][c], spec["points"][cl][c])}
                  for cl in keep}
        spec = {**spec, "cells": {cl: spec["cells"][cl] for cl in keep}, "points": points,
                "labels": {**spec["labels"], c: [rename.get(x, x) for x in spec["labels"][c] if x not in drop]}}
        records = {cl: rs for cl, rs in records.items() if cl in points}
    return spec, records


def label_styles(spec: dict, coord: str, hatch_shared: bool = True) -> dict[str, tuple[str, str]]:
    """{label of `coord`: (colour, hatch)}: the method's colour (METHOD_COLOURS) where every label ran one method,
    labels sharing a method told apart by hatch (or, without `hatch_shared`, for lines that have no hatch, PALETTE
    in label order instead); PALETTE in label order for labels that are not methods."""
    labels = spec["labels"][coord]
    methods = [_only(spec, coord, lab, "method") for lab in labels]
    if None in methods or (not hatch_shared and len(set(methods)) < len(methods)):
        return {lab: (PALETTE[i % len(PALETTE)], "") for i, lab in enumerate(labels)}
    out, seen = {}, {}
    for lab, method in zip(labels, methods):
        seen[method] = seen.get(method, -1) + 1
        out[lab] = (METHOD_COLOURS.get(method, NEUTRAL), HATCHES[seen[method] % len(HATCHES)])
    return out
