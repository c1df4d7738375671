"""The three speed-ups behind the quickstart's time, side by side in one process on the quickstart model (SmolLM2-135M,
packaged, converted once into .cache/xtf) and its real GSM8K rows:

  training   one optimiser step's forward + backward over 8 rows (LoRA on every linear layer, xtf's chunked loss):
             the whole padded micro-batch, the same with activation checkpointing, and train.micro_batch_tokens=512
             (pieces of <= 512 padded positions, xtf.train.micro_batch_pieces);
  generation 16 test prompts, greedy, 96 new tokens each (no stop): one `generate` call with DynamicCache, and
             xtf.generation.generate_in_rounds (its growing KV cache; no row ends early here, so this isolates the
             cache: the rounds' gain from ended rows depends on the model's answers).
  scoring    XTF's forward pass (NLL, KN and RI on every layer, xtf.scoring.forward_scores) over 32 training rows:
             batches of eval.batch_size=16 rows, and eval.forward_batch_tokens=512 (batches of <= 512 padded
             positions); prints the largest difference between the two's scores.

    .venv/bin/python experiments/bench_steps.py [--threads 2] [--reps 2]

Prints seconds per repetition and the ratios; the load average before and after (timings on a shared CPU are a
ratio measured side by side, not a constant). No file is written.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _setup(threads: int):
    from xtf import malloc

    malloc.configure()  # as a run does (xtf.cli)
    import torch

    from xtf import data, models
    from xtf.experiment import composer

    torch.set_num_threads(threads)
    with composer() as c:
        cfg = c(["preset=quickstart"])
    used = data.select(cfg)
    weights = models.resolve_weights(cfg.model, cfg.paths.cache_dir)
    tok = models.load_tokenizer(weights)
    rows, _ = data.tokenize(tok, used.train[:8], cfg.data.max_len, cfg.data.truncation, cfg.model.chat_template)
    model = models.load_model(cfg.model, weights, torch.device("cpu"))
    return cfg, used, tok, rows, model


def training(cfg, tok, rows, model, reps: int) -> dict[str, list[float]]:
    import numpy as np
    import torch
    from peft import LoraConfig, get_peft_model

    from xtf.train import Collator, loss_denominator, make_labels, micro_batch_pieces, step_loss

    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=list(cfg.model.lora_target_modules),
                                             task_type="CAUSAL_LM"))
    model.enable_input_require_grads()
    model.train()
    batch = Collator(tok.pad_token_id)([{"input_ids": list(r["input_ids"]), "response_mask": list(r["response_mask"]),
                                         "labels": make_labels(r["input_ids"], np.array(r["response_mask"], bool))}
                                        for r in rows])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    labels, answer = batch["labels"], batch["response_mask"]

    def whole(ckpt: bool) -> None:
        (model.gradient_checkpointing_enable if ckpt else model.gradient_checkpointing_disable)()
        step_loss(model, inputs, labels, answer, "kept").backward()

    def pieces() -> None:
        model.gradient_checkpointing_disable()
        denominator = loss_denominator(labels, answer, "kept")
        for idx, n in micro_batch_pieces(inputs["attention_mask"], 512):
            step_loss(model, {k: v[idx, :n] for k, v in inputs.items()}, labels[idx, :n], answer[idx, :n], "kept",
                      denominator=denominator).backward()

    runs = {"whole batch": lambda: whole(False), "whole, activation checkpointing": lambda: whole(True),
            "micro_batch_tokens=512": pieces}
    return _timed(runs, reps, torch)


def generation(used, tok, model, reps: int) -> dict[str, list[float]]:
    import torch
    from transformers import DynamicCache

    from xtf.data import prompt_ids
    from xtf.generation import generate_in_rounds

    model.eval()
    enc = [prompt_ids(tok, e["prompt"], True) for e in used.eval[:16]]
    width, pad = max(map(len, enc)), tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    attn = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    out = {}

    def one_call() -> None:
        out["one call"] = model.generate(input_ids=ids, attention_mask=attn, past_key_values=DynamicCache(),
                                         max_new_tokens=96, min_new_tokens=96, do_sample=False, pad_token_id=pad)

    def rounds() -> None:
        out["rounds"] = generate_in_rounds(model, ids, attn, 96, pad, None, min_new_tokens=16)  # 6 rounds of 16

    with torch.no_grad():
        times = _timed({"generate, one call": one_call, "generate_in_rounds": rounds}, reps, torch)
    print(f"  same tokens: {torch.equal(out['one call'], out['rounds'])}")
    return times


def scoring(cfg, used, tok, model, reps: int) -> dict[str, list[float]]:
    import numpy as np
    import torch

    from xtf import data
    from xtf.scoring import forward_scores

    model.eval()
    rows, _ = data.tokenize(tok, used.train[:32], cfg.data.max_len, cfg.data.truncation, cfg.model.chat_template)
    ri, out = cfg.method.ri, {}

    def run(name: str, batch_tokens: int) -> None:
        out[name] = forward_scores(model, rows, tok.pad_token_id, 16, ri.definition, tuple(ri.layers), ri.query_chunk,
                                   batch_tokens=batch_tokens)

    times = _timed({"16 rows a batch": lambda: run("rows", 0),
                    "forward_batch_tokens=512": lambda: run("tokens", 512)}, reps, torch)
    # RI is NaN where no later query exists (each row's last token): the same places in both, compared elsewhere.
    pairs = {k: list(zip(out["rows"][k], out["tokens"][k])) for k in out["rows"]}
    diff = {k: max(float(np.nanmax(np.abs(a - b))) for a, b in p) for k, p in pairs.items()}
    same_nan = all(np.array_equal(np.isnan(a), np.isnan(b)) for p in pairs.values() for a, b in p)
    print("  largest difference: " + ", ".join(f"{k} {v:.1e}" for k, v in diff.items())
          + f"; NaN in the same places: {same_nan}")
    return times


def _timed(runs: dict, reps: int, torch) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(reps):  # interleaved: a load change hits every variant alike
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    first = next(iter(times))
    for name, t in times.items():
        print(f"  {name:34s} {' '.join(f'{x:6.1f}' for x in t)} s   x{sum(times[first]) / sum(t):.2f} vs {first}")
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=2)
    a = ap.parse_args()
    print(f"load average before: {os.getloadavg()}; torch threads {a.threads}")
    cfg, used, tok, rows, model = _setup(a.threads)
    print("generation (16 prompts, 96 new tokens):")
    generation(used, tok, model, a.reps)
    print("scoring (XTF's forward pass over 32 rows):")
    scoring(cfg, used, tok, model, a.reps)
    print(f"training (one step of {len(rows)} rows):")
    training(cfg, tok, rows, model, a.reps)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
