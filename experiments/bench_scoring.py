"""Scoring throughput: XTF's batched scorers vs a bare forward pass vs the released code's per-example loop.

    make bench-scoring ARGS="--rows 300"
    HF_HUB_OFFLINE=1 XTF_DATA_DIR=../shared/data .venv/bin/python experiments/bench_scoring.py [--device cuda]
    (--threads 1 on a shared CPU: oversubscribed torch threads make small forwards several times slower)

On the tiny pre-trained base (ModelConfig(name="tiny", tiny="pretrained", pretrain_steps=300), built once into
XTF_CACHE_DIR or .cache/xtf, ~2 min) and the first --rows GSM8K training rows (XTF_DATA_DIR or ../shared/data;
tiny tokenizer, max_len 512), measures tokens/s (every token of every row) of
  (a) bare      a batched forward pass batched as forward_scores batches (sorted by length, right padding,
                --batch-size), `model(input_ids, attention_mask)` with logits, under no_grad;
  (b) xtf       all three attributes: forward_scores(ri_definition="received", every layer) → KN (PCP) and RI,
                plus tr_scores (one batched pass over the unique token ids) with the GSM8K expert words;
  (c) released  the released XTF code's algorithm (EonHao/XTF XTF_script.py at bd83b19, DatasetEditor), on the
                first --rows-official rows, one example at a time in float32 on a model loaded with
                attn_implementation="eager": get_attention_score (output_attentions=True: every layer's L×L
                attention returned; RI = the first layer's mean over heads, then over keys); get_ppl_score
                (a forward with output_hidden_states=True, then one float32 softmax over the whole vocabulary
                PER POSITION in a Python loop, PCP = the gold token's probability); TR as get_score does it:
                every token of every row decoded alone (skip_special_tokens, stripped) as the key of a cache
                shared by the whole run — a key already seen costs nothing (its first token's score wins),
                a new one costs a forward of the token ALONE (no BOS) — against the domain vector (the mean
                state of the expert words, each run alone without special tokens). Gradients are off, as
                in the script (torch.no_grad).
Each variant runs in a fresh subprocess of this script (--variant, internal), so its peak memory is its own:
ru_maxrss of that child on CPU (setup included, the "setup" column), torch.cuda.max_memory_allocated on CUDA.
Times are the median of --repeats runs after one warm-up batch. Checks, on the first --check-rows rows: PCP of
(b) against (c); and xtf_official's scorers (xtf.scoring.released_forward_scores, released_tr_scores) against (c)
for RI and TR. (b)'s own RI ("received") and TR ([bos, token]) are different definitions by design.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xtf.config import DataConfig, ModelConfig, PathsConfig

ROOT = Path(__file__).resolve().parents[1]
MODEL = ModelConfig(name="tiny", tiny="pretrained", pretrain_steps=300)
NAMES = {"a": "(a) bare forward", "b": "(b) xtf KN+RI+TR", "c": "(c) released code"}


def setup(rows: int):
    """(weights folder, tokenizer, tokenised rows); exits with a message when the GSM8K files are absent."""
    from xtf.data import tokenize
    from xtf.models import load_tokenizer
    from xtf.tasks import gsm8k
    from xtf.tiny import build_tiny

    data_dir = Path(os.environ.get("XTF_DATA_DIR", ROOT.parent / "shared" / "data")).resolve()
    if not (data_dir / "gsm8k" / "train.jsonl").is_file():
        sys.exit(f"bench_scoring: {data_dir}/gsm8k/train.jsonl not found; set XTF_DATA_DIR to the folder that "
                 f"holds gsm8k/train.jsonl (the real GSM8K files)")
    weights = str(build_tiny(MODEL, os.environ.get("XTF_CACHE_DIR", str(ROOT / ".cache" / "xtf"))))
    tok = load_tokenizer(weights)
    examples = gsm8k.load(gsm8k.Options(), DataConfig(), PathsConfig(data_dir=str(data_dir))).splits["train"]
    out, _ = tokenize(tok, examples[:rows], max_len=512, truncation="right", chat_template=MODEL.chat_template)
    return weights, tok, out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device):
    """(median seconds, every run's seconds, the last run's output)."""
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, out


@torch.no_grad()
def bare_forward(model, rows: list[dict], pad_id: int, batch_size: int) -> None:
    from xtf.scoring import _batches

    device = next(model.parameters()).device
    for idx in _batches(rows, batch_size):
        lengths = torch.tensor([len(rows[i]["input_ids"]) for i in idx], device=device)
        width = int(lengths.max())
        ids = torch.tensor([rows[i]["input_ids"] + [pad_id] * (width - len(rows[i]["input_ids"])) for i in idx],
                           device=device)
        attn = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
        model(input_ids=ids, attention_mask=attn).logits  # noqa: B018 - the logits are part of the cost


@torch.no_grad()
def released_loop(model, tok, rows: list[dict], expert_words: tuple[str, ...]) -> dict:
    """Variant (c), the released algorithm (module docstring); `model` is fp32 with eager attention."""
    device = next(model.parameters()).device

    def word_vector(word: str) -> torch.Tensor:                                    # ScoreR.get_word_vector
        inputs = tok(word, return_tensors="pt", add_special_tokens=False).to(device)
        return torch.mean(model(**inputs, output_hidden_states=True).hidden_states[-1][0], dim=0)

    domain = torch.mean(torch.stack([word_vector(w) for w in expert_words]), dim=0)
    out = {"kn": [], "ri": [], "tr": []}
    cache: dict[str, dict] = {}
    for row in rows:
        ids = torch.tensor([row["input_ids"]], device=device)
        attentions = model(input_ids=ids, output_attentions=True).attentions      # every layer [1, H, L, L]
        ri = torch.mean(torch.mean(attentions[0], dim=1).squeeze(0), dim=1)
        out["ri"].append(ri.cpu().numpy())
        logits = model(input_ids=ids, output_hidden_states=True).logits
        probs = [0.0]
        for i in range(ids.size(1) - 1):                                           # one softmax per position
            probs.append(F.softmax(logits[0, i, :], dim=-1)[ids[0, i + 1]].item())
        out["kn"].append(np.array(probs, dtype=np.float32))
        for t in row["input_ids"]:                                                 # get_score's TR loop
            key = tok.decode([t], skip_special_tokens=True).strip()
            if key in cache:
                cache[key]["frequency"] += 1
                continue
            hidden = model(input_ids=torch.tensor([[t]], device=device), output_hidden_states=True).hidden_states
            cos = F.cosine_similarity(hidden[-1].squeeze(0).squeeze(0)[None], domain[None], dim=1).item()
            cache[key] = {"rel_score": cos, "frequency": 1}
    for row in rows:                                                               # get_rel_score
        out["tr"].append(np.array([cache[tok.decode([t], skip_special_tokens=True).strip()]["rel_score"]
                                   for t in row["input_ids"]], dtype=np.float32))
    return out


def run_variant(args) -> None:
    """Child process: measure one variant, write <out>/<variant>.json (+ .npz with the check rows' scores)."""
    import dataclasses

    from xtf.models import load_model, pick_device
    from xtf.scoring import forward_scores, released_forward_scores, released_tr_scores, tr_scores
    from xtf.tasks.gsm8k import EXPERT_WORDS

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    weights, tok, rows = setup(args.rows)
    if args.variant == "c":
        rows = rows[: args.rows_official]
        cfg = dataclasses.replace(MODEL, attn_implementation="eager", dtype="float32")
    else:
        cfg = MODEL
    model = load_model(cfg, weights, device).eval()
    setup_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    pad, bs, reps = tok.pad_token_id, args.batch_size, args.repeats
    extra, check = {}, {}
    if args.variant == "a":
        bare_forward(model, rows[:bs], pad, bs)                                       # warm-up batch
        seconds, times, _ = timed(lambda: bare_forward(model, rows, pad, bs), reps, device)
    elif args.variant == "b":
        parts = {"forward_scores": [], "tr_scores": []}

        def xtf_all(subset):
            t0 = time.perf_counter()
            fwd = forward_scores(model, subset, pad, bs, "received", ())
            sync(device)
            t1 = time.perf_counter()
            tr = tr_scores(model, tok, subset, EXPERT_WORDS)
            parts["forward_scores"].append(t1 - t0)
            parts["tr_scores"].append(time.perf_counter() - t1)
            return {**fwd, **tr}

        xtf_all(rows[:bs])                                                            # warm-up batch
        parts = {k: [] for k in parts}
        seconds, times, out = timed(lambda: xtf_all(rows), reps, device)
        extra = {k: statistics.median(v) for k, v in parts.items()}
        extra["forward_scores_without_ri"] = timed(lambda: forward_scores(model, rows, pad, bs, None), reps, device)[0]
        same = rows[: args.rows_official]
        extra["same_rows_seconds"] = timed(lambda: xtf_all(same), reps, device)[0]
        extra["same_rows_tokens"] = sum(len(r["input_ids"]) for r in same)
        k = args.check_rows
        check = {"kn": out["kn"][:k], "ri_official": released_forward_scores(model, rows[:k])["ri"],
                 "tr_released": released_tr_scores(model, tok, rows[: args.rows_official], EXPERT_WORDS)["tr"][:k]}
    else:
        released_loop(model, tok, rows[:1], EXPERT_WORDS)                             # warm-up example
        seconds, times, out = timed(lambda: released_loop(model, tok, rows, EXPERT_WORDS), args.repeats_official,
                                    device)
        k = args.check_rows
        check = {"kn": out["kn"][:k], "tr_released": out["tr"][:k], "ri_official": out["ri"][:k]}
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    tokens = sum(len(r["input_ids"]) for r in rows)
    result = {"variant": args.variant, "rows": len(rows), "tokens": tokens, "seconds": seconds, "times": times,
              "tokens_per_s": tokens / seconds, "peak_mib": peak, "setup_mib": setup_mib, "device": str(device),
              "dtype": str(next(model.parameters()).dtype), "torch_threads": torch.get_num_threads(), **extra}
    out_dir = Path(args.out)
    (out_dir / f"{args.variant}.json").write_text(json.dumps(result))
    if check:
        np.savez(out_dir / f"{args.variant}.npz", **{f"{n}_{i}": a for n, arrs in check.items()
                                                      for i, a in enumerate(arrs)})


def agreement(out_dir: Path, k: int, fp32: bool) -> list[dict]:
    """Max |(b) - (c)| per score over the first k rows (position 0 excluded: nothing predicts it)."""
    b, c = np.load(out_dir / "b.npz"), np.load(out_dir / "c.npz")
    tol = 1e-4 if fp32 else 2e-2  # (b) runs in the configured dtype (bfloat16) on CUDA, (c) in float32
    out = []
    for name in ("kn", "tr_released", "ri_official"):
        diff = max(float(np.nanmax(np.abs(b[f"{name}_{i}"][1:] - c[f"{name}_{i}"][1:]))) for i in range(k))
        out.append({"score": name, "max_abs_diff": diff, "tol": tol, "ok": diff <= tol})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=300, help="GSM8K training rows for (a) and (b)")
    p.add_argument("--rows-official", type=int, default=60, help="first rows used by the slow variant (c)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of (a) and (b); the median is reported")
    p.add_argument("--repeats-official", type=int, default=2, help="timed runs of (c)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per variant (0: torch's default)")
    p.add_argument("--check-rows", type=int, default=3, help="rows on which (b) and (c) must agree")
    p.add_argument("--json", help="write the figures to this file")
    p.add_argument("--variant", choices=sorted(NAMES), help=argparse.SUPPRESS)  # internal: one child
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.rows_official = min(args.rows_official, args.rows)
    args.check_rows = min(args.check_rows, args.rows_official)
    if args.variant:
        return run_variant(args)

    _, _, rows = setup(args.rows)  # builds the tiny base once (and fails early without data), before the children
    print(f"{len(rows)} GSM8K rows, {sum(len(r['input_ids']) for r in rows)} tokens; (c) on the first "
          f"{args.rows_official}", flush=True)
    passed = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
              ("rows", "rows_official", "batch_size", "device", "repeats", "repeats_official", "check_rows",
               "threads")]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        res = {}
        for v in NAMES:
            print(f"running {NAMES[v]} in a fresh process ...", flush=True)
            subprocess.run([sys.executable, __file__, f"--variant={v}", f"--out={tmp}", *passed], env=env, check=True)
            res[v] = json.loads((Path(tmp) / f"{v}.json").read_text())
        checks = agreement(Path(tmp), args.check_rows, res["b"]["dtype"] == "torch.float32")

    a, b, c = res["a"], res["b"], res["c"]
    mem = "CUDA max allocated" if a["device"].startswith("cuda") else "process RSS peak"
    print(f"\ndevice {a['device']} ({b['dtype']} for (a)/(b), float32 for (c)), torch threads {a['torch_threads']}, "
          f"median of {args.repeats} runs ((c): {args.repeats_official})")
    print(f"{'variant':<22}{'rows':>6}{'tokens':>9}{'seconds':>10}{'tokens/s':>11}{'peak MiB':>10}{'setup MiB':>11}")
    for v, r in res.items():
        print(f"{NAMES[v]:<22}{r['rows']:>6}{r['tokens']:>9}{r['seconds']:>10.2f}{r['tokens_per_s']:>11.0f}"
              f"{r['peak_mib']:>10.0f}{r['setup_mib']:>11.0f}")
    print(f"peak MiB = {mem} of the variant's own process; setup MiB = RSS peak after loading data and model")
    print(f"(b) split: forward_scores {b['forward_scores']:.2f}s (without RI: {b['forward_scores_without_ri']:.2f}s)"
          f", tr_scores {b['tr_scores']:.2f}s")
    cost = b["seconds"] / a["seconds"]
    speedup = (c["seconds"] / c["tokens"]) / (b["seconds"] / b["tokens"])
    same = c["seconds"] / b["same_rows_seconds"]
    print(f"(b)/(a) cost = time_b/time_a = {cost:.2f} (goal <= 1.5): {'met' if cost <= 1.5 else 'NOT met'}")
    print(f"(b) speed-up over (c) = time_c/time_b per token = {speedup:.1f} (goal >= 10): "
          f"{'met' if speedup >= 10 else 'NOT met'}; on the same {c['rows']} rows: {same:.1f}")
    for ch in checks:
        print(f"check (b) vs (c) on {args.check_rows} rows: {ch['score']:<12} max |diff| {ch['max_abs_diff']:.2e} "
              f"(tol {ch['tol']:.0e}): {'ok' if ch['ok'] else 'MISMATCH'}")
    print("(b)'s RI ('received') and TR ([bos, token]) are not (c)'s definitions; ri_official / tr_released above are "
          "xtf_official's scorers (released_forward_scores, released_tr_scores) against (c)")
    if args.json:
        figures = {"variants": res, "cost_b_over_a": cost, "cost_goal_met": cost <= 1.5, "speedup_b_over_c": speedup,
                   "speedup_goal_met": speedup >= 10, "speedup_same_rows": same, "checks": checks}
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
