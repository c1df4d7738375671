"""Experiments as data: a YAML file names shared overrides, the cells (one table row each), the seeds and the
table's columns; this module runs the grid (skipping complete runs, so a relaunch runs only missing cells) and
builds the table (mean ± std over seeds) and a plot from the local records only.

    python -m xtf.experiment experiments/noise_benchmark.yaml           # run missing cells, then the table
    python -m xtf.experiment experiments/noise_benchmark.yaml --table   # the table from existing records only
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def load_experiment(path: str | Path) -> dict:
    """The experiment spec, checked: name, base (list of overrides), seeds, cells {label: [overrides]}, columns."""
    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    for key in ("name", "base", "seeds", "cells", "columns"):
        if key not in spec:
            raise ValueError(f"{path}: missing key '{key}'")
    if not isinstance(spec["cells"], dict) or not spec["cells"]:
        raise ValueError(f"{path}: 'cells' must map a row label to a list of overrides")
    return spec


def cell_overrides(spec: dict, label: str, seed: int) -> list[str]:
    return [*spec["base"], *spec["cells"][label], f"seed={seed}", f"experiment={spec['name']}"]


def expand(spec: dict) -> list[tuple[str, int, list[str]]]:
    """Every run of the experiment: (cell label, seed, Hydra overrides), in table order. The one place that
    turns a spec into runs (the in-process grid, the Hydra sweeper and the tables all use it)."""
    return [(label, seed, cell_overrides(spec, label, seed)) for label in spec["cells"] for seed in spec["seeds"]]


def compose_cell(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from xtf.config import register_schema, validate

    register_schema()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return validate(compose(config_name="config", overrides=overrides))


def run_grid(spec: dict) -> list[tuple[str, int, str | None]]:
    """Run every (cell, seed) in this process; one failing cell never stops the others. Returns failures."""
    from xtf.pipeline import run

    failures = []
    for label in spec["cells"]:
        for seed in spec["seeds"]:
            try:
                run(compose_cell(cell_overrides(spec, label, seed)))
            except Exception as e:  # noqa: BLE001 - reported at the end, the grid goes on
                failures.append((label, seed, f"{type(e).__name__}: {e}"))
                print(f"[xtf] cell {label} seed {seed} FAILED: {type(e).__name__}: {e}")
    return failures


def collect(spec: dict) -> dict[str, list[dict]]:
    """Complete records per cell label (missing runs are simply absent)."""
    from xtf.results import load_record, run_dir

    out: dict[str, list[dict]] = {}
    for label in spec["cells"]:
        for seed in spec["seeds"]:
            record = load_record(run_dir(compose_cell(cell_overrides(spec, label, seed))))
            if record:
                out.setdefault(label, []).append(record)
    return out


def metric(record: dict, path: str):
    """A value from a record by dotted path (e.g. "metrics.accuracy", "detection.filler.mask.f1"); None if absent."""
    value = record
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, (int, float)) else None


def summarise(values: list) -> tuple[float, float, int] | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return float(np.mean(vals)), float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, len(vals)


def table_markdown(spec: dict, records: dict[str, list[dict]]) -> str:
    """Rows = cells, columns = spec columns, "mean ± std (n)"; a missing cell shows "—", never 0."""
    cols = spec["columns"]
    lines = ["| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for label in spec["cells"]:
        cells = []
        for path in cols.values():
            s = summarise([metric(r, path) for r in records.get(label, [])])
            cells.append("—" if s is None else f"{s[0]:.3f} ± {s[1]:.3f} ({s[2]})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(spec: dict, records: dict[str, list[dict]], column: str, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, means, stds = [], [], []
    for label in spec["cells"]:
        s = summarise([metric(r, spec["columns"][column]) for r in records.get(label, [])])
        if s:
            labels.append(label)
            means.append(s[0])
            stds.append(s[1])
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(labels)), 3.6))
    ax.bar(labels, means, yerr=stds, color="#78909c", capsize=3)
    ax.set_ylabel(column)
    ax.set_title(f"{spec['name']}: {column} (mean ± std over seeds)")
    plt.setp(ax.get_xticklabels(), rotation=40, ha="right", rotation_mode="anchor")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write_tables(spec: dict, out_dir: Path | None = None) -> Path:
    out_dir = Path(out_dir or ROOT / "results" / "tables")
    out_dir.mkdir(parents=True, exist_ok=True)
    records = collect(spec)
    md = table_markdown(spec, records)
    header = f"# {spec['name']}\n\n{spec.get('description', '').strip()}\n\n"
    (out_dir / f"{spec['name']}.md").write_text(header + md)
    (out_dir / f"{spec['name']}.json").write_text(json.dumps(
        {label: [r["run_id"] for r in rs] for label, rs in records.items()}, indent=1))
    if records and spec.get("plot"):
        plot(spec, records, spec["plot"], out_dir / f"{spec['name']}.png")
    print(md)
    return out_dir / f"{spec['name']}.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec")
    parser.add_argument("--table", action="store_true", help="only build the table from existing records")
    args = parser.parse_args(argv)
    spec = load_experiment(args.spec)
    failures = [] if args.table else run_grid(spec)
    path = write_tables(spec)
    print(f"[xtf] table: {path}")
    for label, seed, why in failures:
        print(f"[xtf] FAILED cell {label} seed {seed}: {why}")
    if failures:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
