"""Scoring at realistic dataset sizes: wall time and peak memory of one scoring job at 1k, 4k and 16k rows.

    make bench-scale [ARGS="--sizes 1000,4000,16000 --threads 1"]
    HF_HUB_OFFLINE=1 .venv/bin/python experiments/bench_scale.py [--model tiny] [--method xtf] [--no-write]

Each size is one fresh subprocess of this script (--one, internal) that does what a run's scoring stage does:
compose the config (model=--model, task=synth with task.options.n_train=size: generated rows, no download),
load the rows (data.select + data.tokenize_cached, a cache hit: the parent built the entry first) and the model,
then xtf.method_scores.compute_scores for the scores --method needs (xtf: the forward pass with RI, and TR) into an
empty score cache, so that every score is computed, written and read back as a first run does. torch threads are
pinned (--threads; OMP_NUM_THREADS too). Measured per child:
  score s     wall time of compute_scores (forward pass + TR + write + read back);
  ms/row      score s per row, and tok/s: tokens scored per second;
  cpu ms/row  the child's CPU time (time.process_time) over the same span, per row: what other jobs on a shared
              CPU change least (one thread: CPU time ≈ wall time on an idle core);
  pad %       padding's share of the positions the forward pass runs (batches are sorted by length, so more rows
              mean less padding: a cost per row that can only fall with the size);
  job s       the child's whole wall time (imports, rows, model, scoring);
  peak MiB    the child's peak RSS (getrusage ru_maxrss: everything, imports and rows included; the parent stays
              small and builds nothing itself, since Linux carries a parent's peak into a child it spawns);
  ready MiB   RSS once rows and model are loaded, before scoring; score Δ = peak - ready.
Goals (issue #24, item 6): time about linear in the rows (every size's ms/row within 25 % of the largest size's)
and peak RSS within ±25 % across the sizes ((max - min) / min <= 0.25). The 1-minute load average is read
before and after each child (other jobs on a shared CPU slow it). Table: results/tables/bench_scale.{md,json}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python experiments/bench_scale.py` from a checkout without the editable install
TABLES = ROOT / "results" / "tables"
LIBS = ("torch", "transformers", "numpy")


def compose(model: str, method: str, rows: int, cache_dir: str | None = None):
    from xtf.experiment import composer

    overrides = [f"model={model}", "task=synth", f"task.options.n_train={rows}", f"method={method}",
                 "wandb.mode=disabled", *([f"paths.cache_dir={cache_dir}"] if cache_dir else [])]
    with composer() as c:
        return c(overrides)


def load_rows(cfg):
    """(weights, tokenizer, rows, tokenisation stats): what the pipeline has in hand when it starts scoring."""
    from xtf import data, models

    weights = models.resolve_weights(cfg.model, cfg.paths.cache_dir)
    tok = models.load_tokenizer(weights)
    rows, stats = data.tokenize_cached(tok, data.select(cfg).train, cfg.data.max_len, cfg.data.truncation,
                                       cfg.model.chat_template, cfg.paths.cache_dir, split="train")
    return weights, tok, rows, stats


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mib() -> float | None:
    """This process image's own RSS high-water mark (VmHWM), a cross-check of ru_maxrss; None off Linux."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return None
    return int(line.split()[1]) / 1024


def measure(size: int, args) -> dict:
    """Child: one scoring job of `size` rows (module doc)."""
    import torch

    from xtf import method_scores, methods, models, scoring, tasks

    t0 = time.perf_counter()
    torch.set_num_threads(args.threads)
    cfg = compose(args.model, args.method, size)
    weights, tok, rows, stats = load_rows(cfg)
    model = models.load_model(cfg.model, weights, models.pick_device("cpu")).eval()
    ready = rss_mib()
    with tempfile.TemporaryDirectory() as scores_cache:  # empty: every score group is computed now
        import dataclasses

        run_cfg = dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, cache_dir=scores_cache))
        start, cpu = time.perf_counter(), time.process_time()
        scores, info = method_scores.compute_scores(methods.scores_needed(cfg.method), run_cfg, model, tok, rows,
                                                    weights, stats["cache_key"], tasks.TASKS["synth"].EXPERT_WORDS,
                                                    Path(scores_cache) / "outputs")
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    tokens = sum(len(r["input_ids"]) for r in rows)
    positions = sum(len(idx) * max(len(rows[i]["input_ids"]) for i in idx)
                    for idx in scoring._batches(rows, cfg.eval.batch_size))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"rows": len(rows), "tokens": tokens, "score_s": seconds, "ms_per_row": 1000 * seconds / len(rows),
            "cpu_ms_per_row": 1000 * cpu / len(rows),
            "tokens_per_s": tokens / seconds,
            "padding_share": 1 - tokens / positions, "job_s": time.perf_counter() - t0,
            "peak_mib": peak, "vmhwm_mib": hwm_mib(), "ready_mib": ready, "score_delta_mib": peak - ready,
            "scores_mib": sum(sum(a.nbytes for a in v) for v in scores.values()) / 2**20,
            "computed": info["computed"], "torch_threads": torch.get_num_threads(),
            "batch_size": cfg.eval.batch_size}


def goals(res: list[dict]) -> dict:
    def deviation(key: str) -> float:  # the largest relative distance of a size's per-row time from the largest's
        return max(abs(r[key] / res[-1][key] - 1) for r in res)

    peaks = [r["peak_mib"] for r in res]
    time_dev, cpu_dev = deviation("ms_per_row"), deviation("cpu_ms_per_row")
    rss_spread = (max(peaks) - min(peaks)) / min(peaks)
    # score s ≈ fixed + per_row · rows (least squares): the time is linear when every size lies near this line.
    per_row, fixed = np.polyfit([r["rows"] for r in res], [r["score_s"] for r in res], 1) if len(res) > 1 else (0, 0)
    residual = max(abs(fixed + per_row * r["rows"] - r["score_s"]) / r["score_s"] for r in res)
    return {"ms_per_row_max_deviation": time_dev, "cpu_ms_per_row_max_deviation": cpu_dev,
            "time_linear": time_dev <= 0.25, "fit_fixed_s": fixed, "fit_ms_per_row": 1000 * per_row,
            "fit_max_residual": residual, "peak_rss_spread": rss_spread, "rss_flat": rss_spread <= 0.25}


COLUMNS = ("rows", "tokens", "score s", "ms/row", "cpu ms/row", "tok/s", "pad %", "job s", "peak MiB", "ready MiB",
           "score Δ MiB", "scores MiB", "load before / after")


def write(res: list[dict], info: dict) -> list[str]:
    from xtf.cache import atomic_write_text

    g = info["goals"]
    lines = ["# Scoring at scale: wall time and peak RSS per dataset size", "",
             f"`{info['command']}` — {info['date']}, git {info['git']['sha']} (dirty: {info['git']['dirty']}), "
             f"wall {info['wall_s']:.0f} s", "",
             f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, {info['machine']['platform']}; "
             f"torch threads {info['threads']}; model={info['model']} (float32, CPU), method={info['method']} "
             f"(forward pass with RI + TR), task=synth rows, eval.batch_size {res[0]['batch_size']}.  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in info["machine"]["libraries"].items()) + ".", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in res:
        cells = [r["rows"], r["tokens"], f"{r['score_s']:.1f}", f"{r['ms_per_row']:.2f}", f"{r['cpu_ms_per_row']:.2f}",
                 f"{r['tokens_per_s']:.0f}", f"{100 * r['padding_share']:.1f}", f"{r['job_s']:.1f}",
                 f"{r['peak_mib']:.0f}", f"{r['ready_mib']:.0f}", f"{r['score_delta_mib']:.0f}",
                 f"{r['scores_mib']:.1f}", f"{r['load_before']:.2f} / {r['load_after']:.2f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    lines += ["", *NOTES, "",
              f"- time about linear: ms/row within {100 * g['ms_per_row_max_deviation']:.0f} % of the largest "
              f"size's (goal <= 25 %): {'met' if g['time_linear'] else 'NOT met'}; CPU time per row: within "
              f"{100 * g['cpu_ms_per_row_max_deviation']:.0f} %; least-squares fit: score s = "
              f"{g['fit_fixed_s']:.2f} s + {g['fit_ms_per_row']:.2f} ms x rows, within "
              f"{100 * g['fit_max_residual']:.0f} % of every size's time",
              f"- peak RSS spread (max - min) / min = {100 * g['peak_rss_spread']:.1f} % (goal <= 25 %): "
              f"{'met' if g['rss_flat'] else 'NOT met'}"]
    if not info["no_write"]:
        TABLES.mkdir(parents=True, exist_ok=True)
        atomic_write_text(TABLES / "bench_scale.md", "\n".join(lines) + "\n")
        atomic_write_text(TABLES / "bench_scale.json", json.dumps({**info, "results": res}, indent=1) + "\n")
    return lines


NOTES = [
    "score s: wall time of xtf.method_scores.compute_scores into an empty score cache (forward pass, TR, write, read "
    "back); ms/row, tok/s: per row, tokens per second of it; cpu ms/row: the child's CPU time over the same span, "
    "per row; pad %: padding's share of the positions the forward pass runs; job s: the child's whole wall time; "
    "peak MiB: the child's peak RSS (ru_maxrss: imports, rows and model included); ready MiB: RSS before scoring; "
    "score Δ: peak minus ready; scores MiB: the float32 scores themselves; load: 1-minute load average before / "
    "after the child (the machine's other jobs included).",
]


def machine() -> dict:
    from xtf.results import library_versions

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "libraries": library_versions(LIBS)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,4000,16000", help="rows per scoring job, ascending")
    p.add_argument("--model", default="tiny", help="a conf/model config (tiny: the tiny pre-trained base)")
    p.add_argument("--method", default="xtf", help="a conf/method config: which scores are computed")
    p.add_argument("--threads", type=int, default=1, help="torch threads (and OMP_NUM_THREADS) in every child")
    p.add_argument("--no-write", action="store_true", help="print only; leave results/tables/ alone")
    p.add_argument("--one", type=int, help=argparse.SUPPRESS)   # internal: one child, this many rows
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)  # internal: build the caches
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.prepare:
        for size in [int(s) for s in args.sizes.split(",")]:
            _, _, rows, _ = load_rows(compose(args.model, args.method, size))
            print(f"{size} rows ready ({sum(len(r['input_ids']) for r in rows)} tokens)", flush=True)
        return
    if args.one:
        Path(args.out).write_text(json.dumps(measure(args.one, args)))
        return

    t0 = time.perf_counter()
    sizes = [int(s) for s in args.sizes.split(",")]
    env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    common = [f"--threads={args.threads}", f"--model={args.model}", f"--method={args.method}"]
    # The tiny base and each size's tokenised rows are built once, by a process of their own: the children only
    # read the cache, and this process (whose peak each child would inherit) imports no torch before they end.
    subprocess.run([sys.executable, __file__, "--prepare", f"--sizes={args.sizes}", *common], env=env, check=True)
    res = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            out = Path(tmp) / f"{size}.json"
            load_before = os.getloadavg()[0]
            print(f"scoring {size} rows in a fresh process ...", flush=True)
            subprocess.run([sys.executable, __file__, f"--one={size}", f"--out={out}", *common], env=env, check=True)
            res.append({**json.loads(out.read_text()), "load_before": load_before, "load_after": os.getloadavg()[0]})
    from xtf.results import git_state

    info = {"command": "python experiments/bench_scale.py " + " ".join(sys.argv[1:]),
            "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), "git": git_state(ROOT),
            "wall_s": time.perf_counter() - t0, "machine": machine(), "threads": args.threads, "model": args.model,
            "method": args.method, "no_write": args.no_write, "goals": goals(res)}
    print("\n".join(write(res, info)))


if __name__ == "__main__":
    main()
