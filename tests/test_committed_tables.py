"""Every committed table (results/tables/) says "Rebuild: `make tables`": this checks that it can be.

- A committed table whose run records are committed (results/<name>/<run>/results.json and predictions.jsonl,
  the files `make tables` reads; .gitignore keeps the rest of a run local) is rebuilt from a copy of exactly those
  files in a temporary folder, and its Markdown, LaTeX and JSON must come out byte for byte as committed (its PNG:
  rebuilt without error).
- A committed table whose records are not committed yet is named in KNOWN_MISSING with the reason: the list is
  checked to be exact, so it shrinks when records are committed and no table is silently left unchecked.
- Without any record (a fresh clone before any record was committed), `make tables` says "no complete run yet"
  for every table, writes nothing and exits 0.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from conftest import ROOT

from xtf.experiment import load_experiment, main, spec_files
from xtf.tables import write_tables

TABLES = ROOT / "results" / "tables"
_RERUN = "records not on this machine; rerun `make sweep EXP={exp}{flag}` and commit its records (.gitignore)"
# Committed tables whose run records are not committed yet: name → why (shrinks as records are committed).
KNOWN_MISSING = {
    "all_methods": _RERUN.format(exp="all_methods", flag=""),
    "code_passk_tiny": _RERUN.format(exp="code_passk", flag=" STAND_IN=1"),
    "noise_benchmark_real": _RERUN.format(exp="noise_benchmark_real", flag=""),
    "table1_smollm2": _RERUN.format(exp="table1", flag=" STAND_IN=1"),
    "table2_smollm2": _RERUN.format(exp="table2", flag=" STAND_IN=1"),
    "threshold_sweep_real": _RERUN.format(exp="threshold_sweep_real", flag=""),
}
# Tables in results/tables/ that `make tables` does not build (benchmark scripts write them, each saying how).
NOT_FROM_RECORDS = {"bench_scale": "experiments/bench_scale.py (make bench-scale)",
                    "bench_train": "experiments/bench_train.py (make bench-train)",
                    "bench_run": "experiments/bench_run.py (make bench-run)"}


def _specs() -> dict[str, dict]:
    """Every table `make tables` builds: each experiments/*.yaml and its stand-in variant, by table name."""
    out = {}
    for path in spec_files():
        spec = load_experiment(path)
        out[spec["name"]] = spec
        if spec["has_stand_in"]:
            stand_in = load_experiment(path, stand_in=True)
            out[stand_in["name"]] = stand_in
    return out


SPECS = _specs()
COMMITTED = sorted(p.stem for p in TABLES.glob("*.md"))


def committed_records(name: str) -> list[str]:
    """The record files of experiment `name` in git (relative to the checkout): what a fresh clone has."""
    try:
        listed = subprocess.run(["git", "ls-files", "--", f"results/{name}/*/results.json",
                                 f"results/{name}/*/predictions.jsonl"], cwd=ROOT, capture_output=True,
                                text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (e.g. an unpacked archive): what is here
        listed = [str(p.relative_to(ROOT)) for pattern in ("*/results.json", "*/predictions.jsonl")
                  for p in (ROOT / "results" / name).glob(pattern)]
    return sorted(listed)


def test_every_committed_table_is_built_by_make_tables_or_said_otherwise():
    unknown = [n for n in COMMITTED if n not in SPECS and n not in NOT_FROM_RECORDS]
    assert not unknown, f"results/tables/{unknown[0]}.md is built by no experiments/*.yaml: add it to NOT_FROM_RECORDS"
    for name in NOT_FROM_RECORDS:
        if name in COMMITTED:
            assert "Rebuild: `make tables`" not in (TABLES / f"{name}.md").read_text()


def test_known_missing_lists_exactly_the_committed_tables_without_committed_records():
    without = {n for n in COMMITTED if n in SPECS and not any(f.endswith("results.json") for f in committed_records(n))}
    assert not set(KNOWN_MISSING) - without, (f"records of {sorted(set(KNOWN_MISSING) - without)} are committed now: "
                                              f"remove them from KNOWN_MISSING (their rebuild is then checked)")
    assert not without - set(KNOWN_MISSING), (f"{sorted(without - set(KNOWN_MISSING))}: committed table(s) without "
                                              f"committed records; commit the records or list them in KNOWN_MISSING")
    assert "Rebuild: `make tables`" in "".join((TABLES / f"{n}.md").read_text() for n in KNOWN_MISSING)


@pytest.mark.parametrize("name", [n for n in COMMITTED if n in SPECS and n not in KNOWN_MISSING])
def test_a_committed_table_is_rebuilt_byte_for_byte_from_its_committed_records(tmp_path, monkeypatch, capsys, name):
    files = committed_records(name)
    assert files, f"{name}: no committed record; list it in KNOWN_MISSING"
    assert not [f for f in files if not f.endswith(("/results.json", "/predictions.jsonl"))]
    for f in files:  # exactly what a fresh clone has: the committed record files, nothing else of the runs
        (tmp_path / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / f, tmp_path / f)
    monkeypatch.setenv("XTF_RESULTS_DIR", str(tmp_path / "results"))   # conf/paths/default.yaml: results_dir
    out = tmp_path / "tables"
    assert write_tables(SPECS[name], out, skip_empty=True) is not None
    assert "no complete run yet" not in capsys.readouterr().out
    for ext in ("md", "tex", "json"):
        assert (out / f"{name}.{ext}").read_bytes() == (TABLES / f"{name}.{ext}").read_bytes(), \
            f"results/tables/{name}.{ext} differs from its rebuild from the committed records"
    if SPECS[name]["plot"]:
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_records_make_tables_says_so_per_table_writes_nothing_and_succeeds(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XTF_RESULTS_DIR", str(tmp_path / "results"))   # a fresh clone's results/, no record in it
    out = tmp_path / "tables"
    main(["--tables", "--out", str(out)])   # `make tables`; returning (no SystemExit) is its exit status 0
    printed = capsys.readouterr().out
    for name in SPECS:
        assert f"[xtf] {name}: no complete run yet, table not built" in printed
    assert not out.exists() or not any(out.iterdir())
