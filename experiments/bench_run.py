"""The quickstart (`make run`'s two runs) on a quiet CPU and on a busy one: wall time per stage and peak RSS.

    make bench-run [ARGS="data.limit=8 data.eval_limit=4"]       # run overrides: a reduced size, e.g. to check it
    .venv/bin/python experiments/bench_run.py [--busy 2] [--repeats 3] [--no-write] [OVERRIDE ...]
    .venv/bin/python experiments/bench_run.py --fresh-clone      # `make install` + `make run` in a fresh clone

Per condition — "quiet" (--repeats times: the spread the table states), then "busy" (--busy processes spinning
`while True: pass`, started and ended by this script) — it runs `run.py preset=quickstart method=normal`, then
`method=xtf`, each as its own process with its own results, outputs and cache folders under a temporary work folder
(so each repeat and the busy condition score again instead of reading earlier scores); the GGUF model is converted
once, before both, into a shared folder that every condition's cache links to. The environment is passed through
unchanged (OMP_NUM_THREADS, if set, decides the threads: xtf.threads). Measured per run:
  wall s     the process's wall time (imports, config, the run's stages, its summary);
  stages     the record's `timings` (seconds per stage: load_model, score, finetune, evaluate, ...);
  peak MiB   the process's peak RSS (os.wait4's ru_maxrss: the run alone, not this script);
  threads    the record's `threads` entry: torch's CPU threads and why (xtf.threads).
Goals (issue #28): both runs <= 5 min quiet (the median of the repeats), <= 2.5x that busy, peak RSS <= 3 GiB for
every run. The quiet repeats' range is the table's stated spread.
--fresh-clone: `git clone` of this checkout's HEAD into a temporary folder (with ../shared linked beside it, as CI
has it), then `make install`, the one-time GGUF conversion (which `make run` would do first) and `make run` (W&B
disabled, as in the table's runs) there, each timed; `make run`'s time is set against the quiet spread, and the
result is added to the table.
Table: results/tables/bench_run.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python experiments/bench_run.py` from a checkout without the editable install
TABLES = ROOT / "results" / "tables"
METHODS = ("normal", "xtf")
GOAL_MIB = 3 * 1024
GOAL_QUIET_S = 5 * 60  # issue #28: `make run` (both runs) within 5 min on a quiet CPU ...
GOAL_RATIO = 2.5       # ... and within 2.5x that with two busy loops beside it
STAGES = ("load_data", "tokenize", "load_model", "score", "mask", "finetune", "evaluate", "explain")


def prepare_model(cache_dir: Path, overrides: list[str]) -> None:
    """Child: the quickstart model converted into `cache_dir` (xtf.models.resolve_weights), once for every run."""
    from xtf.experiment import composer
    from xtf.models import resolve_weights

    with composer() as c:
        cfg = c(["preset=quickstart", f"paths.cache_dir={cache_dir}",
                 *[o for o in overrides if o.startswith(("model", "+model", "++model"))]])
    resolve_weights(cfg.model, cfg.paths.cache_dir)


def one_run(method: str, folder: Path, shared_models: Path, overrides: list[str]) -> dict:
    """One quickstart run in its own process (module doc): its wall time, peak RSS, stage timings and threads."""
    cache = folder / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / "gguf_model").exists():
        (cache / "gguf_model").symlink_to(shared_models / "gguf_model", target_is_directory=True)
    results_dir = folder / f"results-{method}"
    cmd = [sys.executable, str(ROOT / "run.py"), "preset=quickstart", f"method={method}", "wandb.mode=disabled",
           f"paths.results_dir={results_dir}", f"paths.outputs_dir={folder / f'outputs-{method}'}",
           f"paths.cache_dir={cache}", *overrides]
    start = time.perf_counter()
    with open(folder / f"{method}.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench-run: `{' '.join(cmd)}` failed (exit {os.waitstatus_to_exitcode(status)}); its output: "
                 f"{folder / f'{method}.log'}")
    (path,) = results_dir.rglob("results.json")
    record = json.loads(path.read_text())
    return {"method": method, "wall_s": wall, "peak_mib": usage.ru_maxrss / 1024,  # Linux: KiB
            "timings": record.get("timings", {}), "peak_rss_mib": record.get("peak_rss_mib", {}),
            "threads": record.get("threads"), "malloc": record.get("malloc")}


def condition(name: str, busy: int, work: Path, shared_models: Path, overrides: list[str],
              repeat: int = 1) -> list[dict]:
    """Both runs, with `busy` spinning processes alongside (ended here, each by its own handle); each repeat in its
    own folders (its own cache: XTF scores again)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0)  # let them be scheduled: the runs' thread choice sees them
        load_before = os.getloadavg()[0]
        out = [{**one_run(m, work / f"{name}-{repeat}", shared_models, overrides), "condition": name,
                "repeat": repeat, "busy": busy, "load_before": load_before, "load_after": os.getloadavg()[0]}
               for m in METHODS]
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    for r in out:
        print(f"[bench-run] {name} #{repeat} {r['method']}: wall {r['wall_s']:.1f} s, "
              f"peak RSS {r['peak_mib']:.0f} MiB, threads {(r['threads'] or {}).get('torch')}, "
              f"stages {r['timings']}", flush=True)
    return out


COLUMNS = ("condition", "method", "wall s", "peak MiB", "torch threads", *STAGES, "load before / after")


def totals(res: list[dict]) -> dict[tuple[str, int], float]:
    """Both runs' wall seconds per (condition, repeat)."""
    out: dict[tuple[str, int], float] = {}
    for r in res:
        key = (r["condition"], r.get("repeat", 1))
        out[key] = out.get(key, 0.0) + r["wall_s"]
    return out


# Student's t, 97.5 % quantile, by degrees of freedom (1..10); beyond: 2.0 (t(0.975, 60) = 2.00, larger for fewer).
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def prediction_interval(values: list[float]) -> tuple[float, float] | None:
    """The 95 % prediction interval for one more value from the same conditions as `values` (normal errors):
    mean ± t(0.975, n-1) · sd · sqrt(1 + 1/n); None for fewer than 2 values. The stated spread: a fourth run falls
    inside the range of three only half the time ((n-1)/(n+1)), so the range is no bound for a run at another time."""
    n = len(values)
    if n < 2:
        return None
    t = T975[n - 2] if n - 1 <= len(T975) else 2.0
    half = t * statistics.stdev(values) * (1 + 1 / n) ** 0.5
    mean = statistics.fmean(values)
    return mean - half, mean + half


def summary(res: list[dict], fresh: dict | None) -> list[str]:
    """The goal lines under the table: quiet median and spread, busy ratio, peak RSS, the fresh clone's check."""
    total = totals(res)
    quiet = sorted(t for (c, _), t in total.items() if c == "quiet")
    busy = [t for (c, _), t in total.items() if c == "busy"]
    worst = max(r["peak_mib"] for r in res)
    lines = [f"- {c} #{k}: both runs together {t:.0f} s ({t / 60:.1f} min)" for (c, k), t in total.items()]
    if quiet:
        median, spread = statistics.median(quiet), prediction_interval(quiet)
        lines.append(f"- quiet, both runs: median {median:.0f} s ({median / 60:.1f} min) of {len(quiet)} repeat(s), "
                     f"range {quiet[0]:.0f}–{quiet[-1]:.0f} s; " + (
                         f"stated spread {spread[0]:.0f}–{spread[1]:.0f} s (95 % prediction interval for one more "
                         f"quiet run: mean ± t(0.975, {len(quiet) - 1}) · sd · √(1 + 1/{len(quiet)}))" if spread
                         else "no stated spread (one repeat: --repeats 3 gives one)"))
        lines.append(f"- both runs <= {GOAL_QUIET_S} s on the quiet CPU (median): "
                     f"{'met' if median <= GOAL_QUIET_S else 'NOT met'}")
        if busy:
            ratio = statistics.median(busy) / median
            lines.append(f"- busy / quiet median <= {GOAL_RATIO}: "
                         f"{'met' if ratio <= GOAL_RATIO else 'NOT met'} ({ratio:.2f}x)")
    lines.append(f"- peak RSS <= {GOAL_MIB} MiB in every run: {'met' if worst <= GOAL_MIB else 'NOT met'} "
                 f"(largest {worst:.0f} MiB)")
    if fresh:
        spread = prediction_interval(quiet)
        inside = spread is not None and spread[0] <= fresh["runs_s"] <= spread[1]
        lines.append(f"- fresh clone ({fresh['date']}, git {fresh['git'][:12]}, "
                     f"load before {fresh['load_before']:.2f}): `make install` {fresh['install_s']:.0f} s, the "
                     f"one-time GGUF conversion {fresh['convert_s']:.0f} s, `make run` {fresh['runs_s']:.0f} s: "
                     f"{'within' if inside else 'OUTSIDE'} the stated quiet spread")
    return lines


def write(res: list[dict], info: dict, no_write: bool) -> list[str]:
    from xtf.cache import atomic_write_text

    lines = ["# The quickstart on a quiet and on a busy CPU: wall time per stage and peak RSS", "",
             f"`{info['command']}` — {info['date']}, git {info['git'].get('sha')} "
             f"(dirty: {info['git'].get('dirty')}); {info['cores']} cores; busy: {info['busy']} spinning processes; "
             f"overrides: {' '.join(info['overrides']) or '(none)'}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in res:
        cells = [f"{r['condition']} #{r.get('repeat', 1)}", r["method"], f"{r['wall_s']:.1f}", f"{r['peak_mib']:.0f}",
                 (r["threads"] or {}).get("torch", "?"),
                 *(f"{r['timings'][s]:.1f}" if s in r["timings"] else "–" for s in STAGES),
                 f"{r['load_before']:.2f} / {r['load_after']:.2f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", "Stages: seconds from each record's `timings`; wall s: the whole process; peak MiB: its peak RSS "
              "(ru_maxrss); torch threads: the record's `threads` (reasons in bench_run.json).", ""]
    lines += summary(res, info.get("fresh_clone"))
    if not no_write:
        TABLES.mkdir(parents=True, exist_ok=True)
        atomic_write_text(TABLES / "bench_run.md", "\n".join(lines) + "\n")
        atomic_write_text(TABLES / "bench_run.json", json.dumps({**info, "results": res}, indent=1) + "\n")
    return lines


def fresh_clone(no_write: bool) -> None:
    """`make install`, the one-time model conversion and `make run` in a fresh clone of HEAD (module doc), each timed;
    the result goes into the table. Logs: outputs/bench-run-fresh-clone/."""
    from xtf.results import git_state

    table = TABLES / "bench_run.json"
    if not table.is_file():
        sys.exit(f"bench-run --fresh-clone: {table} is missing; run `make bench-run` first (it states the spread)")
    saved = json.loads(table.read_text())
    logs = ROOT / "outputs" / "bench-run-fresh-clone"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="xtf-fresh-clone-") as tmp:
        clone = Path(tmp) / "xtf"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        shared = ROOT.parent / "shared"
        if shared.is_dir():
            (Path(tmp) / "shared").symlink_to(shared, target_is_directory=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XTF_", "VIRTUAL_ENV", "MAKE"))}
        load_before = os.getloadavg()[0]
        cache = clone / ".cache" / "xtf"  # the clone's default paths.cache_dir
        steps = {"install": ["make", "install"],
                 # the conversion `make run` does on first use, timed on its own (the table's runs exclude it)
                 "convert": [".venv/bin/python", "experiments/bench_run.py", "--prepare", str(cache)],
                 # W&B disabled, as in the table's runs
                 "run": ["make", "run", "ARGS=wandb.mode=disabled"]}
        seconds = {}
        for name, cmd in steps.items():
            start = time.perf_counter()
            with open(logs / f"{name}.log", "w") as log:
                done = subprocess.run(cmd, cwd=clone, env=env, stdout=log, stderr=subprocess.STDOUT)
            seconds[name] = time.perf_counter() - start
            if done.returncode:
                sys.exit(f"bench-run --fresh-clone: `{' '.join(cmd)}` failed (exit {done.returncode}); its output: "
                         f"{logs / f'{name}.log'}")
        fresh = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "git": git_state(clone).get("sha"),
                 "load_before": load_before, "install_s": seconds["install"], "convert_s": seconds["convert"],
                 "runs_s": seconds["run"]}
    info = {k: v for k, v in saved.items() if k != "results"}
    print("\n".join(write(saved["results"], {**info, "fresh_clone": fresh}, no_write)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="run overrides for every run, e.g. data.limit=8 data.eval_limit=4")
    p.add_argument("--busy", type=int, default=2, help="spinning processes in the busy condition")
    p.add_argument("--repeats", type=int, default=3, help="times the quiet condition runs (its range: the spread)")
    p.add_argument("--fresh-clone", action="store_true", help="time `make install` + `make run` in a fresh clone")
    p.add_argument("--no-write", action="store_true", help="print only; leave results/tables/ alone")
    p.add_argument("--prepare", help=argparse.SUPPRESS)  # internal: convert the model into this cache folder
    args = p.parse_args()
    if args.prepare:
        return prepare_model(Path(args.prepare), args.overrides)
    if args.fresh_clone:
        return fresh_clone(args.no_write)
    from xtf.results import git_state

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xtf-bench-run-") as tmp:
        work = Path(tmp)
        shared = work / "models"
        subprocess.run([sys.executable, __file__, "--prepare", str(shared), *args.overrides], cwd=ROOT, check=True)
        res = [r for k in range(1, args.repeats + 1) for r in condition("quiet", 0, work, shared, args.overrides, k)]
        res += condition("busy", args.busy, work, shared, args.overrides) if args.busy else []
    info = {"command": "make bench-run" + (f" ARGS=\"{' '.join(args.overrides)}\"" if args.overrides else ""),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "git": git_state(ROOT),
            "cores": len(os.sched_getaffinity(0)), "busy": args.busy, "repeats": args.repeats,
            "overrides": args.overrides, "wall_s": time.perf_counter() - start}
    print("\n".join(write(res, info, args.no_write)))


if __name__ == "__main__":
    main()
