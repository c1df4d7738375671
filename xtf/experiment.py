"""Experiments as data: one YAML file per paper artifact names its grid (shared overrides, cells or a product of
coordinates, seeds) and its table layout; this module expands it into runs, runs the missing ones through the
Hydra sweeper (a complete run is skipped, so a relaunch runs only missing cells) and builds its tables from the
local records.

    python -m xtf.experiment experiments/threshold_sweep.yaml           # run missing cells, then the tables
    python -m xtf.experiment experiments/noise_benchmark.yaml --table   # the tables from existing records only
    python -m xtf.experiment experiments/table1.yaml --list             # every run with its Hydra overrides
    python -m xtf.experiment --tables                                   # every experiments/*.yaml with records

The Hydra sweeper (`make sweep EXP=<name>`) reads the same spec through `load_experiment` and `expand`.

Spec format (see experiments/*.yaml for real ones):

    name: table2                 # = the file name; results go to results/<name>/<run_id>/
    description: ...             # printed above the table
    base: [model=tiny, ...]      # overrides shared by every run (a cell's own overrides come after and win)
    seeds: [0, 1, 2]
    cells:                       # EITHER listed cells (one coordinate, "cell") ...
      normal: [method=normal]
    grid:                        # ... OR a product of coordinates (a list of products = their union)
      model: [llama32_1b, r1_qwen_1_5b]                   # a config group: label v -> override model=v
      method: {Normal: method=normal, XTF: [method=xtf]}  # label -> override(s)
      threshold: {key: method.kn.threshold, values: [0.9, 0.95]}   # label str(v) -> key=v
    exclude: [{method: CA, train: LoRA}]                  # combinations of labels not run
    table:                       # rendered by xtf.tables (see there)
      rows: [method]             # coordinates down the side (all but the last group the rows)
      columns: [model]           # coordinates across the top
      split: []                  # coordinates that make separate sub-tables
      values: {accuracy: metrics.accuracy}   # record fields (dotted paths); or {name: {path, best, ...}}
    plot: {kind: bar, value: accuracy}       # optional, see xtf.plots
"""

from __future__ import annotations

import argparse
import itertools
import re
import time
from pathlib import Path

import yaml

from xtf import tables
from xtf.errors import SpecError
from xtf.experiment_runs import (  # noqa: F401 - re-exported: `from xtf.experiment import expand` etc.
    CONF,
    EXPERIMENTS,
    PAPER_NUMBERS,
    ROOT,
    cell_overrides,
    collect,
    composer,
    expand,
)
from xtf.table_spec import check_plot, check_table

LISTED = "cell"  # the coordinate of a spec with listed cells
_TOP_KEYS = ("name", "description", "base", "seeds", "cells", "grid", "exclude", "table", "plot", "stand_in")
STAND_IN_SUFFIX = "_tiny"
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def _fail(path, key: str, problem: str) -> None:
    raise SpecError(f"{path}: {key}: {problem}")


def _overrides(path, key: str, value) -> list[str]:
    """A string or a list of strings, each a Hydra override `key=value` (a config group's option must exist)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(o, str) for o in items):
        _fail(path, key, f"expected an override string or a list of them, got {value!r}")
    for o in items:
        k, eq, v = o.partition("=")
        k = k.lstrip("+~")
        if not eq or not k:
            _fail(path, key, f"{o!r} is not a Hydra override 'key=value'")
        if (CONF / k).is_dir() and not (CONF / k / f"{v}.yaml").is_file() and v not in ("null", ""):
            _fail(path, key, f"{o!r}: no option {v!r} in config group '{k}'; allowed: {group_options(k)}")
    return list(items)


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _coordinate(path, key: str, coord: str, value) -> dict[str, list[str]]:
    """One coordinate of a grid → {label: overrides}, in the spec's order."""
    if isinstance(value, list):  # shorthand for a config group: model: [a, b] -> model=a, model=b
        if not (CONF / coord).is_dir():
            _fail(path, key, f"a plain list of values needs '{coord}' to be a config group "
                  f"({sorted(p.name for p in CONF.iterdir() if p.is_dir())}); otherwise write "
                  f"{{label: override}} or {{key: <config key>, values: [...]}}")
        return {str(v): _overrides(path, f"{key}.{v}", f"{coord}={v}") for v in value}
    if isinstance(value, dict) and set(value) == {"key", "values"}:
        if not isinstance(value["values"], list) or not value["values"]:
            _fail(path, f"{key}.values", "expected a non-empty list")
        return {str(v): _overrides(path, f"{key}.{v}", f"{value['key']}={v}") for v in value["values"]}
    if isinstance(value, dict) and value:
        return {str(label): _overrides(path, f"{key}.{label}", ov) for label, ov in value.items()}
    _fail(path, key, "expected a list of config-group options, {label: overrides} or {key: ..., values: [...]}")


def _grid_cells(path, grid, exclude) -> tuple[list[str], dict[str, dict]]:
    """Grid → (coordinate names, {cell label: {"coords": {coord: label}, "overrides": [...]}}), product order."""
    blocks = grid if isinstance(grid, list) else [grid]
    if not blocks or not all(isinstance(b, dict) and b for b in blocks):
        _fail(path, "grid", "expected a mapping {coordinate: values} or a non-empty list of such mappings")
    coords = [str(c) for c in blocks[0]]
    if LISTED in coords:
        _fail(path, "grid", f"'{LISTED}' is reserved for listed cells; name the coordinate otherwise")
    cells: dict[str, dict] = {}
    for i, block in enumerate(blocks):
        key = f"grid[{i}]" if isinstance(grid, list) else "grid"
        if [str(c) for c in block] != coords:
            _fail(path, key, f"every product must have the same coordinates in the same order: {coords}, "
                  f"got {list(block)}")
        axes = [list(_coordinate(path, f"{key}.{c}", c, block[c]).items()) for c in block]
        for combo in itertools.product(*axes):
            point = {c: label for c, (label, _) in zip(coords, combo)}
            if any(all(point.get(k) == v for k, v in ex.items()) for ex in exclude):
                continue
            label = " / ".join(point.values())
            if label in cells:
                _fail(path, key, f"cell {label!r} appears twice")
            cells[label] = {"coords": point, "overrides": [o for _, ov in combo for o in ov]}
    return coords, cells


def load_experiment(path: str | Path, stand_in: bool = False) -> dict:
    """The experiment spec, checked and normalised: name, description, base, seeds, coords (coordinate names),
    cells {label: cell-specific overrides}, points {label: {coord: label}}, labels {coord: [labels in order]},
    table, plot, path. Errors name the file, the key and what is allowed (SpecError).

    stand_in=True: the spec's `stand_in` variant — the same grid and table layout with every real model replaced
    by a CPU-sized model (`stand_in.models` per model, else `stand_in.default_model`, default `tiny`; a packaged
    real LM such as smollm2_135m works too), plus `stand_in.overrides` (small data), `stand_in.seeds` and
    `stand_in.exclude` (cells to leave out, as `exclude`), recorded under the experiment `<name>_<suffix>`
    (`stand_in.suffix`, default `tiny`): the whole path from runs to the paper's table layout, checked on a CPU
    before any GPU hour is spent. Its numbers say nothing about the paper's models."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SpecError(f"{path}: cannot read the spec: {e}") from e
    if not isinstance(raw, dict):
        _fail(path, "(top level)", "expected a mapping")
    unknown = sorted(set(raw) - set(_TOP_KEYS))
    if unknown:
        _fail(path, unknown[0], f"unknown key; allowed: {list(_TOP_KEYS)}")
    for key in ("name", "base", "seeds", "table"):
        if key not in raw:
            _fail(path, key, "missing (required: name, base, seeds, cells or grid, table)")
    name = raw["name"]
    if not isinstance(name, str) or not _NAME.match(name) or name != path.stem:
        _fail(path, "name", f"{name!r} must be the file's name without .yaml ({path.stem!r})")
    base = _overrides(path, "base", raw["base"]) if raw["base"] else []
    seeds = raw["seeds"]
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        _fail(path, "seeds", f"expected a non-empty list of distinct integers >= 0, got {seeds!r}")
    if ("cells" in raw) == ("grid" in raw):
        _fail(path, "cells/grid", "give exactly one of 'cells' (listed) or 'grid' (a product of coordinates)")
    exclude = raw.get("exclude") or []
    if "cells" in raw:
        if exclude:
            _fail(path, "exclude", "only for a grid; with listed cells, leave the cell out")
        if not isinstance(raw["cells"], dict) or not raw["cells"]:
            _fail(path, "cells", "expected a mapping {row label: overrides}")
        coords = [LISTED]
        cells = {str(label): {"coords": {LISTED: str(label)}, "overrides": _overrides(path, f"cells.{label}", ov)}
                 for label, ov in raw["cells"].items()}
    else:
        if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
            _fail(path, "exclude", "expected a list of mappings {coordinate: label}")
        exclude = [{str(k): str(v) for k, v in e.items()} for e in exclude]
        coords, cells = _grid_cells(path, raw["grid"], [])
        labels = {c: {cell["coords"][c] for cell in cells.values()} for c in coords}
        for i, ex in enumerate(exclude):
            for k, v in ex.items():
                if k not in coords:
                    _fail(path, f"exclude[{i}]", f"unknown coordinate {k!r}; coordinates: {coords}")
                if v not in labels[k]:
                    _fail(path, f"exclude[{i}].{k}", f"unknown label {v!r}; labels: {sorted(labels[k])}")
        coords, cells = _grid_cells(path, raw["grid"], exclude)
        if not cells:
            _fail(path, "exclude", "excludes every cell")
    spec = {
        "name": name, "description": str(raw.get("description") or "").strip(), "base": base, "seeds": seeds,
        "coords": coords,
        "cells": {label: c["overrides"] for label, c in cells.items()},
        "points": {label: c["coords"] for label, c in cells.items()},
        "labels": {c: list(dict.fromkeys(cell["coords"][c] for cell in cells.values())) for c in coords},
        "path": str(path),
    }
    _check_duplicates(path, "base", base)
    for label in spec["cells"]:
        _check_duplicates(path, f"cell {label!r}", spec["cells"][label])
    spec["table"] = check_table(path, raw["table"], spec)
    spec["plot"] = check_plot(path, raw.get("plot"), spec) if raw.get("plot") else None
    spec["has_stand_in"] = "stand_in" in raw
    return _stand_in(path, spec, raw.get("stand_in")) if stand_in else spec


def _stand_in(path: Path, spec: dict, block) -> dict:
    """The spec with real models swapped for CPU-sized ones (see load_experiment)."""
    if not isinstance(block, dict):
        _fail(path, "stand_in", "this experiment has no 'stand_in' block {models, overrides, seeds}")
    allowed = ["models", "default_model", "overrides", "seeds", "exclude", "suffix"]
    unknown = sorted(set(block) - set(allowed))
    if unknown:
        _fail(path, f"stand_in.{unknown[0]}", f"unknown key; allowed: {allowed}")
    models, default = dict(block.get("models") or {}), str(block.get("default_model", "tiny"))
    suffix = str(block.get("suffix", STAND_IN_SUFFIX.lstrip("_")))
    if not _NAME.match(suffix):
        _fail(path, "stand_in.suffix", f"{suffix!r}: letters, digits and underscores (results go under "
              "<name>_<suffix>)")

    def swap(overrides: list[str]) -> list[str]:
        return [f"model={models.get(o[6:], default)}" if o.startswith("model=") else o for o in overrides]

    seeds = block.get("seeds", spec["seeds"])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and x >= 0 for x in seeds):
        _fail(path, "stand_in.seeds", f"expected a non-empty list of integers >= 0, got {seeds!r}")
    extra = _overrides(path, "stand_in.overrides", block.get("overrides") or [])
    # stand_in.exclude: grid cells the CPU variant leaves out (e.g. {train: full}: LoRA rows only), as `exclude`
    exclude = block.get("exclude") or []
    if not isinstance(exclude, list) or not all(isinstance(e, dict) and e for e in exclude):
        _fail(path, "stand_in.exclude", "expected a list of mappings {coordinate: label}")
    for i, ex in enumerate(exclude):
        for k, v in ex.items():
            if k not in spec["labels"]:
                _fail(path, f"stand_in.exclude[{i}]", f"unknown coordinate {k!r}; coordinates: {spec['coords']}")
            if str(v) not in spec["labels"][k]:
                _fail(path, f"stand_in.exclude[{i}].{k}", f"unknown label {v!r}; labels: {spec['labels'][k]}")
    kept = [label for label in spec["cells"]
            if not any(all(spec["points"][label][k] == str(v) for k, v in ex.items()) for ex in exclude)]
    if not kept:
        _fail(path, "stand_in.exclude", "excludes every cell")
    points = {label: spec["points"][label] for label in kept}
    labels = {c: [lb for lb in spec["labels"][c] if any(p[c] == lb for p in points.values())] for c in spec["coords"]}
    shown = ", ".join(f"{k} → {v}" for k, v in models.items()) or f"all → {default}"
    # A stand-in override replaces the base's override of the same key (e.g. train=lora for a base train=full).
    replaced = {o.partition("=")[0] for o in extra}
    base = [o for o in swap(spec["base"]) if o.partition("=")[0] not in replaced] + extra
    return {**spec, "name": f"{spec['name']}_{suffix}", "seeds": seeds, "base": base,
            "cells": {label: swap(spec["cells"][label]) for label in kept}, "points": points, "labels": labels,
            "all_points": spec["points"],  # the grid before stand_in.exclude (the paper's numbers are keyed by it)
            "description": (f"**Stand-in run:** every model column is a CPU-sized model ({shown}; {' '.join(extra)}"
                            + (f"; without {', '.join(str(e) for e in exclude)}" if exclude else "")
                            + "). It checks the path from runs to this table on a CPU; its numbers say nothing "
                            "about the paper's models.\n\n" + spec["description"])}


def _check_duplicates(path, where: str, overrides: list[str]) -> None:
    """A key set twice in `base`, or twice by one cell (two coordinates), is a mistake; a cell may override a
    base key (Hydra applies overrides in order: the cell's comes last and wins)."""
    keys = [o.partition("=")[0].lstrip("+~") for o in overrides]
    for key in ("seed", "experiment"):
        if key in keys:
            _fail(path, where, f"'{key}=' is set by the spec (seeds, name), not by an override")
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
        _fail(path, where, f"key {dup[0]!r} is set twice")


def run_missing(path: str | Path) -> int:
    """Run the experiment's missing runs through the one grid engine, the Hydra sweeper (the same as
    `make sweep EXP=<name>`: complete cells skipped, one batch, a per-cell summary); its exit status."""
    import subprocess
    import sys

    cmd = [sys.executable, str(ROOT / "run.py"), "-m", f"hydra.sweeper.experiment_file={Path(path).resolve()}"]
    return subprocess.run(cmd, cwd=ROOT).returncode


def spec_files() -> list[Path]:
    return sorted(p for p in EXPERIMENTS.glob("*.yaml") if p != PAPER_NUMBERS)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", nargs="?", help="experiments/<name>.yaml")
    parser.add_argument("--table", action="store_true", help="only build its tables from existing records")
    parser.add_argument("--no-table", action="store_true", help="only run the missing runs")
    parser.add_argument("--tables", action="store_true", help="build the tables of every experiments/*.yaml "
                        "that has records (no run)")
    parser.add_argument("--list", action="store_true", help="print every run (label, seed, overrides)")
    parser.add_argument("--out", default=str(ROOT / "results" / "tables"), help="where tables go")
    args = parser.parse_args(argv)
    if args.tables:
        start = time.perf_counter()
        for path in spec_files():
            spec = load_experiment(path)
            tables.write_tables(spec, args.out, skip_empty=True)
            if spec["has_stand_in"]:
                tables.write_tables(load_experiment(path, stand_in=True), args.out, skip_empty=True)
        print(f"[xtf] tables in {time.perf_counter() - start:.1f} s")
        return
    if not args.spec:
        parser.error("give a spec file, or --tables")
    spec = load_experiment(args.spec)
    if args.list:
        for label, seed, overrides in expand(spec):
            print(f"{label}\tseed={seed}\t{' '.join(overrides)}")
        return
    status = 0 if args.table else run_missing(args.spec)  # the sweeper prints each failed cell and why
    if not args.no_table:
        tables.write_tables(spec, args.out)
    if status:
        raise SystemExit(status)


if __name__ == "__main__":
    main()
