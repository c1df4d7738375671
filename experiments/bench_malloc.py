"""Peak RSS and step time of LoRA training steps under glibc's default malloc and under xtf.malloc's fixed mmap
threshold, side by side on one machine (the measurement behind xtf.malloc).

    .venv/bin/python experiments/bench_malloc.py [--rows 8] [--tokens 300] [--steps 2] [--thresholds 0 1048576]

Each setting runs in its own process (glibc's state is per process): the quickstart model (SmolLM2-135M, packaged,
converted once into .cache/xtf), LoRA on every linear layer, activation checkpointing, xtf's chunked loss, one
torch thread, random token ids. Threshold 0 means glibc's defaults. Prints one line per setting and the load
average; no file is written (timings on a shared CPU are a ratio measured side by side, not a constant).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def child(rows: int, tokens: int, steps: int, threshold: int) -> dict:
    from xtf import malloc
    if threshold:
        malloc.configure(threshold)
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from xtf.experiment import composer
    from xtf.lm_loss import linear_cross_entropy
    from xtf.models import resolve_weights

    torch.set_num_threads(1)
    torch.manual_seed(0)
    with composer() as c:
        cfg = c(["preset=quickstart"])
    model = AutoModelForCausalLM.from_pretrained(resolve_weights(cfg.model, cfg.paths.cache_dir), dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=list(cfg.model.lora_target_modules),
                                             task_type="CAUSAL_LM"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.enable_input_require_grads()
    model.train()
    ids = torch.randint(0, model.config.vocab_size, (rows, tokens))
    head = model.get_output_embeddings().weight
    start = time.perf_counter()
    for _ in range(steps):
        hidden = model.base_model.model.model(input_ids=ids).last_hidden_state
        targets = ids[:, 1:].reshape(-1)
        linear_cross_entropy(hidden[:, :-1].reshape(-1, hidden.shape[-1]), head, targets,
                             torch.ones(targets.shape)).backward()  # the training loss of xtf.train (chunked)
    return {"threshold": threshold or "glibc default", "malloc": malloc.describe()["reason"],
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
            "s_per_step": round((time.perf_counter() - start) / steps, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--thresholds", type=int, nargs="+", default=[0, 1 << 20])
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        print(json.dumps(child(a.rows, a.tokens, a.steps, a.child)))
        return
    print(f"load average before: {os.getloadavg()}")
    for th in a.thresholds:
        out = subprocess.run([sys.executable, __file__, "--rows", str(a.rows), "--tokens", str(a.tokens), "--steps",
                              str(a.steps), "--child", str(th)], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
