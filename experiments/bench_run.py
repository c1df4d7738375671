"""The quickstart (`make run`'s two runs) on a quiet CPU and on a busy one: wall time per stage and peak RSS.

    make bench-run [ARGS="data.limit=8 data.eval_limit=4"]       # run overrides: a reduced size, e.g. to check it
    .venv/bin/python experiments/bench_run.py [--busy 2] [--no-write] [OVERRIDE ...]

Per condition — "quiet", then "busy" (--busy processes spinning `while True: pass`, started and ended by this
script) — it runs `run.py preset=quickstart method=normal`, then `method=xtf`, each as its own process with its own
results, outputs and cache folders under a temporary work folder (so the busy condition scores again instead of
reading the quiet one's scores); the GGUF model is converted once, before both, into a shared folder that every
condition's cache links to. The environment is passed through unchanged (OMP_NUM_THREADS, if set, decides the
threads: xtf.threads). Measured per run:
  wall s     the process's wall time (imports, config, the run's stages, its summary);
  stages     the record's `timings` (seconds per stage: load_model, score, finetune, evaluate, ...);
  peak MiB   the process's peak RSS (os.wait4's ru_maxrss: the run alone, not this script);
  threads    the record's `threads` entry: torch's CPU threads and why (xtf.threads).
Goals (issue #28): both runs <= 5 min quiet, <= 2.5x that busy, peak RSS <= 3 GiB for every run.
Table: results/tables/bench_run.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
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


def condition(name: str, busy: int, work: Path, shared_models: Path, overrides: list[str]) -> list[dict]:
    """Both runs, with `busy` spinning processes alongside (ended here, each by its own handle)."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        time.sleep(1.0 if busy else 0)  # let them be scheduled: the runs' thread choice sees them
        load_before = os.getloadavg()[0]
        out = [{**one_run(m, work / name, shared_models, overrides), "condition": name, "busy": busy,
                "load_before": load_before, "load_after": os.getloadavg()[0]} for m in METHODS]
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    for r in out:
        print(f"[bench-run] {name} {r['method']}: wall {r['wall_s']:.1f} s, peak RSS {r['peak_mib']:.0f} MiB, "
              f"threads {(r['threads'] or {}).get('torch')}, stages {r['timings']}", flush=True)
    return out


COLUMNS = ("condition", "method", "wall s", "peak MiB", "torch threads", *STAGES, "load before / after")


def write(res: list[dict], info: dict, no_write: bool) -> list[str]:
    from xtf.cache import atomic_write_text

    lines = ["# The quickstart on a quiet and on a busy CPU: wall time per stage and peak RSS", "",
             f"`{info['command']}` — {info['date']}, git {info['git'].get('sha')} "
             f"(dirty: {info['git'].get('dirty')}); {info['cores']} cores; busy: {info['busy']} spinning processes; "
             f"overrides: {' '.join(info['overrides']) or '(none)'}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in res:
        cells = [r["condition"], r["method"], f"{r['wall_s']:.1f}", f"{r['peak_mib']:.0f}",
                 (r["threads"] or {}).get("torch", "?"),
                 *(f"{r['timings'][s]:.1f}" if s in r["timings"] else "–" for s in STAGES),
                 f"{r['load_before']:.2f} / {r['load_after']:.2f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    worst = max(r["peak_mib"] for r in res)
    conditions = dict.fromkeys(r["condition"] for r in res)
    total = {c: sum(r["wall_s"] for r in res if r["condition"] == c) for c in conditions}
    lines += ["", "Stages: seconds from each record's `timings`; wall s: the whole process; peak MiB: its peak RSS "
              "(ru_maxrss); torch threads: the record's `threads` (reasons in bench_run.json).", ""]
    lines += [f"- {c}: both runs together {t:.0f} s ({t / 60:.1f} min)" for c, t in total.items()]
    if "quiet" in total:
        lines.append(f"- both runs <= {GOAL_QUIET_S} s on the quiet CPU: "
                     f"{'met' if total['quiet'] <= GOAL_QUIET_S else 'NOT met'}")
    if {"quiet", "busy"} <= set(total):
        ratio = total["busy"] / total["quiet"]
        lines.append(f"- busy / quiet <= {GOAL_RATIO}: {'met' if ratio <= GOAL_RATIO else 'NOT met'} ({ratio:.2f}x)")
    lines.append(f"- peak RSS <= {GOAL_MIB} MiB in every run: {'met' if worst <= GOAL_MIB else 'NOT met'} "
                 f"(largest {worst:.0f} MiB)")
    if not no_write:
        TABLES.mkdir(parents=True, exist_ok=True)
        atomic_write_text(TABLES / "bench_run.md", "\n".join(lines) + "\n")
        atomic_write_text(TABLES / "bench_run.json", json.dumps({**info, "results": res}, indent=1) + "\n")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("overrides", nargs="*", help="run overrides for every run, e.g. data.limit=8 data.eval_limit=4")
    p.add_argument("--busy", type=int, default=2, help="spinning processes in the busy condition")
    p.add_argument("--no-write", action="store_true", help="print only; leave results/tables/ alone")
    p.add_argument("--prepare", help=argparse.SUPPRESS)  # internal: convert the model into this cache folder
    args = p.parse_args()
    if args.prepare:
        return prepare_model(Path(args.prepare), args.overrides)
    from xtf.results import git_state

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xtf-bench-run-") as tmp:
        work = Path(tmp)
        shared = work / "models"
        subprocess.run([sys.executable, __file__, "--prepare", str(shared), *args.overrides], cwd=ROOT, check=True)
        res = [r for name, busy in (("quiet", 0), ("busy", args.busy))
               for r in condition(name, busy, work, shared, args.overrides)]
    info = {"command": "make bench-run" + (f" ARGS=\"{' '.join(args.overrides)}\"" if args.overrides else ""),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "git": git_state(ROOT),
            "cores": len(os.sched_getaffinity(0)), "busy": args.busy, "overrides": args.overrides,
            "wall_s": time.perf_counter() - start}
    print("\n".join(write(res, info, args.no_write)))


if __name__ == "__main__":
    main()
