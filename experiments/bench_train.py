"""Training throughput and peak memory: this harness (normal, XTF-like mask) vs TRL's SFTTrainer vs plain HF Trainer.

    make bench-train [ARGS="--threads 2"]
    HF_HUB_OFFLINE=1 XTF_DATA_DIR=../shared/data .venv/bin/python experiments/bench_train.py \
        [--models tiny,smollm2_135m] [--modes lora,full] [--steps 8 --warmup 2] [--threads 2] [--batch-size 4]
    (TRL is the `bench` extra: `pip install -c constraints.txt -e '.[bench]'`; `make bench-train` installs it.)

For each model (`tiny`: the tiny pre-trained base, xtf.tiny; `smollm2_135m`: the packaged real LM, xtf.packaged)
x mode (train=lora | train=full), on the same tokenised rows (xtf.data.select + tokenize_cached with the model
config's chat template: the first steps x batch_size GSM8K training rows from XTF_DATA_DIR, else the synthetic
task), one epoch = `steps` optimizer steps of
  (a) xtf       xtf.train.finetune, method=normal: keep = every answer token;
  (b) xtf-50%   xtf.train.finetune with an XTF-like mask: a seeded random 50 % of the answer tokens (numpy
                default_rng(seed), one uniform draw per answer token) plus each row's last answer token (the EOS:
                structural tokens are never noise, DESIGN.md §5). Not real XTF scores: only the kept fraction
                matters for speed, and scoring is benchmarked by bench_scoring.py;
  (c) trl       TRL SFTTrainer, completion-only loss (completion_only_loss=True). It gets TRL's own processed
                prompt-completion form, {input_ids, completion_mask} (what its tokenisation of a prompt-completion
                dataset produces), built from the same rows, so that every configuration sees identical tokens;
  (c') trl-pf   the same with padding_free=True (rows flattened into one sequence, position_ids, no padding);
  (d) hf        plain HF Trainer: DataCollatorForSeq2Seq (labels = input ids with the prompt at -100), the
                model's own loss on full logits.
All with the model config's LR, scheduler, LoRA r/alpha/dropout/targets (PEFT) and max_len, one per-device batch
size per model (the config's; SmolLM2: 4, not 8, BATCH below), adamw_torch, float32 on CPU, gradient
checkpointing off (TRL's default is on; off here, as the harness runs), the same seed and data order, no
checkpoint inside the timed steps. The harness runs with whatever train.* defaults the composed config gives
(its loss, collator and batching are what is measured).

Each configuration runs in a fresh subprocess of this script (--one, internal) with torch.set_num_threads pinned
to --threads for all. Timing: a global torch optimizer post-step hook timestamps every optimizer step; the
first --warmup steps are dropped; a rate is the median over the remaining steps of (step tokens / step seconds),
steadier than the window mean (also in the JSON) when another job slows one step on a shared CPU. Tokens: a
forward pre-hook on the decoder counts, per step, the non-pad tokens it processes (attention_mask sum; every
position when there is no attention mask, padding-free) and every position (padding included). Two rates:
  tok/s          non-pad tokens processed per second;
  kc tok/s       kept + context tokens per second: per row, the tokens at positions 0..its last kept token (what a
                 loss on the kept tokens needs as input). For (b) this is the same count as for (a): masked
                 answer tokens are still context of later kept ones (the EOS is always kept). Computed from
                 the rows, as a share of the non-pad tokens processed (1.0 here: every row ends on a kept token).
Memory: peak RSS of the child (a 5 ms sampler thread plus ru_maxrss) and "train delta" = that peak minus the
RSS just before the trainer is built (model loaded, data tokenised, libraries imported). The table and its
figures go to results/tables/bench_train.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `python experiments/bench_train.py` from a checkout without the editable install
CONFIGS = {"xtf": "(a) xtf normal", "xtf_mask": "(b) xtf 50% mask", "trl": "(c) TRL SFT", "trl_pf": "(c') TRL SFT pf",
           "hf": "(d) HF Trainer"}
STEPS = {"tiny": (12, 2), "smollm2_135m": (5, 1)}  # (optimizer steps, warm-up steps) unless --steps/--warmup
# train.batch_size per model unless --batch-size (the same for every configuration of a model): SmolLM2's config
# says 8, which takes ~2 min a step on 2 busy cores; 4 keeps the whole benchmark near 12 min on 2 idle ones.
BATCH = {"smollm2_135m": 4}
LIBS = ("torch", "transformers", "peft", "accelerate", "datasets", "trl")
TABLES = ROOT / "results" / "tables"


# ------------------------------------------------------------------------------------------------ data
def compose(model: str, mode: str, n_rows: int, extra: tuple[str, ...] = ()):
    """The harness's validated RunConfig for this cell (task: GSM8K when its files are local, else synth)."""
    from xtf.experiment import composer

    data_dir = os.environ.get("XTF_DATA_DIR")
    task = "gsm8k" if data_dir and (Path(data_dir) / "gsm8k" / "train.jsonl").is_file() else "synth"
    overrides = [f"model={model}", f"train={mode}", f"task={task}", "method=normal", "train.epochs=1",
                 "train.grad_accum=1", f"data.limit={n_rows}", "wandb.mode=disabled", *extra]
    with composer() as c:
        return c(overrides)


def setup(cfg):
    """(weights folder, tokenizer, rows): the first data.limit training rows, tokenised as the pipeline does."""
    from xtf import data, models

    weights = models.resolve_weights(cfg.model, cfg.paths.cache_dir)
    tok = models.load_tokenizer(weights)
    examples = data.select(cfg).train
    rows, _ = data.tokenize_cached(tok, examples, cfg.data.max_len, cfg.data.truncation, cfg.model.chat_template,
                                   cfg.paths.cache_dir, split="train")
    return weights, tok, rows


def keep_masks(rows: list[dict], config: str, seed: int) -> list[np.ndarray]:
    """(a)/(c)/(d): every answer token; (b): a seeded random 50 % of them plus each row's last answer token."""
    rng = np.random.default_rng(seed)
    keeps = []
    for r in rows:
        answer = np.asarray(r["response_mask"], dtype=bool)
        keep = answer.copy()
        if config == "xtf_mask":
            keep &= rng.random(len(answer)) < 0.5
            keep[np.flatnonzero(answer)[-1]] = True
        keeps.append(keep)
    return keeps


def count_tokens(rows: list[dict], keeps: list[np.ndarray]) -> dict:
    """Token counts of the data: all, answer, kept, and kept + context (positions 0..last kept, per row)."""
    return {"rows": len(rows), "tokens": sum(len(r["input_ids"]) for r in rows),
            "answer": int(sum(sum(r["response_mask"]) for r in rows)), "kept": int(sum(k.sum() for k in keeps)),
            "kept_context": int(sum(int(np.flatnonzero(k)[-1]) + 1 for k in keeps if k.any()))}


# ------------------------------------------------------------------------------------------------ meters
class Meter:
    """Per optimizer step: end time, non-pad tokens and positions the decoder processed; and the RSS peak."""

    def __init__(self, decoder: torch.nn.Module):
        import psutil
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.proc, self.times, self.nonpad, self.positions = psutil.Process(), [], [], []
        self._nonpad = self._positions = 0
        self.rss_before = self.proc.memory_info().rss
        self.maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        self.rss_peak, self._stop = self.rss_before, threading.Event()
        self._hooks = [decoder.register_forward_pre_hook(self._forward, with_kwargs=True),
                       register_optimizer_step_post_hook(self._step)]
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _forward(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        ids = ids if ids is not None else kwargs["inputs_embeds"][..., 0]
        mask = kwargs.get("attention_mask")
        self._positions += ids.numel()
        self._nonpad += int(mask.sum()) if isinstance(mask, torch.Tensor) and mask.dim() == 2 else ids.numel()

    def _step(self, optimizer, args, kwargs):
        self.times.append(time.perf_counter())
        self.nonpad.append(self._nonpad)
        self.positions.append(self._positions)
        self._nonpad = self._positions = 0

    def _sample(self):
        while not self._stop.wait(0.005):
            self.rss_peak = max(self.rss_peak, self.proc.memory_info().rss)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for h in self._hooks:
            h.remove()
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        if maxrss > self.maxrss_before:  # a spike between two samples, above every earlier peak
            self.rss_peak = max(self.rss_peak, maxrss)


# ------------------------------------------------------------------------------------------------ runners
def trainer_kwargs(cfg, out: str) -> dict:
    """TrainingArguments shared by (c) and (d), matching what xtf.train.finetune passes in one process."""
    t = cfg.train
    return dict(output_dir=out, num_train_epochs=1, per_device_train_batch_size=t.batch_size,
                gradient_accumulation_steps=1, learning_rate=t.lr, weight_decay=t.weight_decay,
                warmup_steps=t.warmup_ratio, lr_scheduler_type=t.lr_scheduler, max_grad_norm=t.max_grad_norm,
                logging_steps=t.logging_steps, seed=cfg.seed, data_seed=cfg.seed, optim="adamw_torch", use_cpu=True,
                report_to=[], save_strategy="no", dataloader_num_workers=0, bf16=False, fp16=False,
                activation_checkpointing=False, disable_tqdm=True)


def lora_config(cfg):
    from peft import LoraConfig

    t = cfg.train
    return LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout,
                      target_modules=list(cfg.model.lora_target_modules), task_type="CAUSAL_LM")


def train_one(config: str, cfg, model, tok, rows: list[dict], keeps: list[np.ndarray], out: str) -> None:
    """One configuration's training (the timed part; the Meter is already installed)."""
    if config in ("xtf", "xtf_mask"):
        from xtf.train import finetune

        finetune(model, tok, rows, keeps, cfg.train, cfg.model, 1, cfg.seed, Path(out))
    elif config in ("trl", "trl_pf"):
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        ds = Dataset.from_dict({"input_ids": [list(r["input_ids"]) for r in rows],
                                "completion_mask": [[int(m) for m in r["response_mask"]] for r in rows]})
        pf = config == "trl_pf"
        # padding_free without packing refuses max_length (it cannot truncate): the rows are already cut to max_len.
        args = SFTConfig(**trainer_kwargs(cfg, out), completion_only_loss=True, padding_free=pf, packing=False,
                         max_length=None if pf else cfg.data.max_len)
        SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok,
                   peft_config=lora_config(cfg) if cfg.train.mode == "lora" else None).train()
    elif config == "hf":
        from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

        if cfg.train.mode == "lora":
            from peft import get_peft_model

            model = get_peft_model(model, lora_config(cfg))
        ds = [{"input_ids": list(r["input_ids"]), "attention_mask": [1] * len(r["input_ids"]),
               "labels": [t if m else -100 for t, m in zip(r["input_ids"], r["response_mask"])]} for r in rows]
        tok.padding_side = "right"
        collator = DataCollatorForSeq2Seq(tok, padding=True, label_pad_token_id=-100, return_tensors="pt")
        Trainer(model=model, args=TrainingArguments(**trainer_kwargs(cfg, out), remove_unused_columns=False),
                train_dataset=ds, data_collator=collator).train()
    else:
        raise ValueError(f"unknown configuration {config!r}; choose from {sorted(CONFIGS)}")


def measure(config: str, model_name: str, mode: str, steps: int, warmup: int, threads: int,
            extra: tuple[str, ...] = ()) -> dict:
    """Run one configuration in this process and return its figures (the child's whole job)."""
    from xtf import models

    if threads:
        torch.set_num_threads(threads)
    probe = compose(model_name, mode, 1, extra)
    cfg = compose(model_name, mode, steps * probe.train.batch_size, extra)
    weights, tok, rows = setup(cfg)
    keeps = keep_masks(rows, config, cfg.seed)
    counts = count_tokens(rows, keeps)
    model = models.load_model(cfg.model, weights, torch.device("cpu"))
    if config in ("trl", "trl_pf"):
        import trl  # noqa: F401 - imported before the baseline RSS, as the harness's modules already are
    meter = Meter(model.get_decoder())
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        try:
            train_one(config, cfg, model, tok, rows, keeps, out)
        finally:
            meter.close()
        total_s = time.perf_counter() - start
    load = os.getloadavg()[0]  # 1-min load average at the end: other jobs on the CPU skew the rates
    n = len(meter.times)
    if n <= warmup:
        raise RuntimeError(f"{config}: {n} optimizer steps, not more than --warmup={warmup}")
    window_s = meter.times[-1] - meter.times[warmup - 1] if warmup else meter.times[-1] - start
    nonpad, positions = sum(meter.nonpad[warmup:]), sum(meter.positions[warmup:])
    kc_share = counts["kept_context"] / max(sum(meter.nonpad), 1)  # kept + context per non-pad token processed
    step_s = np.diff([start, *meter.times])
    # The median over timed steps of each step's rate: one step slowed by another job on a shared CPU moves it
    # less than the window mean (both are in the JSON).
    rate = float(np.median(np.asarray(meter.nonpad[warmup:]) / step_s[warmup:]))
    return {"config": config, "model": model_name, "mode": mode, "task": cfg.task.name, "steps": n,
            "timed_steps": n - warmup, "batch_size": cfg.train.batch_size, "max_len": cfg.data.max_len,
            "lr": cfg.train.lr, "seconds": window_s, "total_seconds": total_s, "s_per_step": window_s / (n - warmup),
            "nonpad_tokens": nonpad, "nonpad_all_steps": sum(meter.nonpad), "positions": positions,
            "tokens_per_s": rate, "tokens_per_s_window": nonpad / window_s,
            "step_seconds": step_s.tolist(), "step_nonpad": meter.nonpad,
            "kc_tokens": kc_share * nonpad, "kc_tokens_per_s": rate * kc_share,
            "padding_share": 1 - nonpad / max(positions, 1),
            "peak_mib": meter.rss_peak / 2**20, "rss_before_mib": meter.rss_before / 2**20,
            "delta_mib": (meter.rss_peak - meter.rss_before) / 2**20, "torch_threads": torch.get_num_threads(),
            "data": counts, "kept_fraction": counts["kept"] / counts["answer"], "load_avg_1min": load}


# ------------------------------------------------------------------------------------------------ report
def ratios(res: list[dict]) -> list[dict]:
    """Add kc tok/s and train-delta ratios against (d) hf and (c) trl of the same model x mode."""
    base = {(r["model"], r["mode"], r["config"]): r for r in res}
    for r in res:
        d, c = base.get((r["model"], r["mode"], "hf")), base.get((r["model"], r["mode"], "trl"))
        r["speed_vs_hf"] = r["kc_tokens_per_s"] / d["kc_tokens_per_s"] if d else None
        r["speed_vs_trl"] = r["kc_tokens_per_s"] / c["kc_tokens_per_s"] if c else None
        r["delta_vs_trl"] = r["delta_mib"] / c["delta_mib"] if c and c["delta_mib"] > 0 else None
    return res


def goals(res: list[dict]) -> list[dict]:
    """The issue's criterion per model x mode: (b) faster (kc tok/s) and lower peak memory than every TRL row."""
    out = []
    for model, mode in dict.fromkeys((r["model"], r["mode"]) for r in res):
        cell = {r["config"]: r for r in res if (r["model"], r["mode"]) == (model, mode)}
        b, trls = cell.get("xtf_mask"), [cell[k] for k in ("trl", "trl_pf") if k in cell]
        if not b or not trls:
            continue
        faster = all(b["kc_tokens_per_s"] > t["kc_tokens_per_s"] for t in trls)
        leaner = all(b["peak_mib"] < t["peak_mib"] and b["delta_mib"] < t["delta_mib"] for t in trls)
        out.append({"model": model, "mode": mode, "faster_than_trl": faster, "less_memory_than_trl": leaner,
                    "met": faster and leaner})
    return out


def fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(res: list[dict]) -> list[str]:
    head = ["model", "mode", "configuration", "steps", "s/step", "tok/s", "kc tok/s", "x (d)", "x (c)", "pad %",
            "peak MiB", "train Δ MiB", "Δ x (c)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in res:
        cells = [r["model"], r["mode"], CONFIGS[r["config"]], str(r["timed_steps"]), f"{r['s_per_step']:.3f}",
                 f"{r['tokens_per_s']:.0f}", f"{r['kc_tokens_per_s']:.0f}", fmt(r["speed_vs_hf"], ".2f"),
                 fmt(r["speed_vs_trl"], ".2f"), f"{100 * r['padding_share']:.0f}", f"{r['peak_mib']:.0f}",
                 f"{r['delta_mib']:.0f}", fmt(r["delta_vs_trl"], ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else ""
    from xtf.results import library_versions

    versions = library_versions(LIBS)
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "python": sys.version.split()[0],
            "libraries": versions}


def write(res: list[dict], info: dict) -> None:
    from xtf.cache import atomic_write_text

    lines = ["# Training speed: this harness vs TRL SFTTrainer vs HF Trainer", "",
             f"`{info['command']}` — {info['date']}, git {info['git']['sha']} (dirty: {info['git']['dirty']}), "
             f"wall {info['wall_s']:.0f} s", "",
             f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, {info['machine']['platform']}; "
             f"torch threads {info['threads']} in every configuration; float32 on CPU; batch size and "
             f"max_len per model in the JSON (`batch_size`, `max_len`).  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in info["machine"]["libraries"].items()) + ".", "",
             *table(res), "", *info["notes"], ""]
    for g in info["goals"]:
        lines.append(f"- {g['model']} {g['mode']}: (b) faster than TRL: {g['faster_than_trl']}; "
                     f"less memory than TRL: {g['less_memory_than_trl']}")
    TABLES.mkdir(parents=True, exist_ok=True)
    atomic_write_text(TABLES / "bench_train.md", "\n".join(lines) + "\n")
    atomic_write_text(TABLES / "bench_train.json", json.dumps({**info, "results": res}, indent=1) + "\n")


NOTES = [
    "steps: timed optimizer steps (after the warm-up ones); s/step: their mean; tok/s: non-pad tokens processed "
    "per second (median over the timed steps); "
    "kc tok/s: kept + context tokens per second (per row, positions 0..its last kept token; (b) counts the same "
    "input tokens as (a)); x (d), x (c): kc tok/s over that of (d) HF Trainer, (c) TRL SFT; pad %: padding share "
    "of the positions processed; peak MiB: the configuration's own process RSS peak; train Δ: peak minus the RSS "
    "just before the trainer is built; Δ x (c): train Δ over (c)'s.",
    "(b) keeps a seeded random 50 % of the answer tokens plus each row's EOS (not real XTF scores); (c') is TRL's "
    "padding_free=True; TRL gets the same token ids as {input_ids, completion_mask}.",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="tiny,smollm2_135m")
    p.add_argument("--modes", default="lora,full")
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"a subset of {','.join(CONFIGS)}")
    p.add_argument("--steps", type=int, help=f"optimizer steps per configuration (default per model: {STEPS})")
    p.add_argument("--warmup", type=int, help="steps left out of the timing (default per model, see --steps)")
    p.add_argument("--batch-size", type=int, default=0, help=f"train.batch_size for every model and configuration "
                   f"(0: the model config's, except {BATCH})")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every configuration (1 is steadier on a "
                   "CPU other jobs share; 0: torch's default)")
    p.add_argument("--no-write", action="store_true", help="print only; leave results/tables/ alone")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: config:model:mode:out.json, one child
    args = p.parse_args()
    if args.one:
        config, model, mode, out = args.one.split(":", 3)
        steps, warmup = args.steps or STEPS.get(model, (8, 2))[0], args.warmup
        warmup = STEPS.get(model, (8, 2))[1] if warmup is None else warmup
        batch = args.batch_size or BATCH.get(model)
        extra = (f"train.batch_size={batch}",) if batch else ()
        Path(out).write_text(json.dumps(measure(config, model, mode, steps, warmup, args.threads, extra)))
        return

    from xtf.results import git_state

    t0 = time.perf_counter()
    configs = [c for c in args.configs.split(",") if c]
    if {"trl", "trl_pf"} & set(configs):
        try:
            metadata.version("trl")
        except metadata.PackageNotFoundError:
            sys.exit("bench_train: TRL is not installed; `make bench-train` installs it (the `bench` extra: "
                     "pip install -c constraints.txt -e '.[bench]'), or pass --configs xtf,xtf_mask,hf")
    for model in args.models.split(","):  # build the tiny base / convert the GGUF and tokenise once, up front
        cfg = compose(model, "lora", 1)
        print(f"{model}: weights {setup(cfg)[0]}", flush=True)
    passed = [f"--threads={args.threads}", f"--batch-size={args.batch_size}"] + \
        ([f"--steps={args.steps}"] if args.steps else []) + \
        ([f"--warmup={args.warmup}"] if args.warmup is not None else [])
    env = {**os.environ, "TQDM_DISABLE": "1", "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"}
    res = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            for mode in args.modes.split(","):
                for config in configs:
                    out = Path(tmp) / f"{model}-{mode}-{config}.json"
                    print(f"{model} {mode}: {CONFIGS[config]} in a fresh process ...", flush=True)
                    child = subprocess.run([sys.executable, __file__, f"--one={config}:{model}:{mode}:{out}",
                                            *passed], env=env, capture_output=True, text=True)
                    if child.returncode:  # the child's own log only when it fails: the table stays readable
                        sys.exit(f"bench_train: {model} {mode} {config} failed:\n{child.stdout[-3000:]}"
                                 f"{child.stderr[-6000:]}")
                    res.append(json.loads(out.read_text()))
    res = ratios(res)
    info = {"command": " ".join(["python", "experiments/bench_train.py", *sys.argv[1:]]),
            "date": time.strftime("%Y-%m-%d %H:%M"), "git": git_state(ROOT), "machine": machine(),
            "threads": args.threads, "wall_s": time.perf_counter() - t0, "notes": NOTES, "goals": goals(res)}
    busy = [f"{r['model']} {r['mode']} {r['config']} ({r['load_avg_1min']:.1f})" for r in res
            if r["load_avg_1min"] > max(args.threads, 1) + 1]
    if busy:  # this process's own load is ~threads; more means another job shared the CPU
        info["notes"] = [*NOTES, "WARNING: other jobs shared the CPU (1-min load average > threads + 1) during: "
                         + ", ".join(busy) + "; their rates are not comparable: rerun on an idle machine."]
    print()
    print("\n".join(table(res)))
    print("\n" + "\n".join(info["notes"]))
    for g in info["goals"]:
        print(f"{g['model']} {g['mode']}: (b) xtf 50% mask vs TRL SFT (both rows): faster {g['faster_than_trl']}, "
              f"less memory {g['less_memory_than_trl']}: {'met' if g['met'] else 'NOT met'}")
    print(f"wall {info['wall_s']:.0f} s; torch threads {args.threads}")
    if not args.no_write:
        write(res, info)
        print(f"wrote {TABLES / 'bench_train.md'} and .json")


if __name__ == "__main__":
    main()
