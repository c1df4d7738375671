"""Resource planner: per cell of an experiment, the estimated GPU memory per device (weights, gradients, optimizer
state, activations, logits), whether it fits the cluster profile's GPUs, the training tokens and the GPU-hours.
Every number is an estimate from the architecture and the config, not a measurement; nothing is loaded.

    python -m xtf.plan experiments/table1.yaml                                  # the cluster=slurm profile
    python -m xtf.plan experiments/table1.yaml cluster.gpus_per_node=8 ++cluster.tasks_per_node=8
    make plan EXP=table1 ARGS="cluster.gpus_per_node=8 ++cluster.tasks_per_node=8"

Exits non-zero when a cell does not fit, naming the cell and what to change. The sweeper runs the same check
(`fit_problem`) before a SLURM submission (cluster.plan_check=false skips it).

The bytes per device are computed in xtf/plan_memory.py (pure functions of a shape and a setup); this module maps
configs onto them, counts tokens and GPU-hours, and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from typing import Optional

# The memory arithmetic, pure functions of a shape and a setup; the names stay importable from here.
from xtf.config import register_schema
from xtf.data import select
from xtf.distributed import Runtime, batch_split, check
from xtf.errors import ConfigError
from xtf.experiment import CONF, ROOT, load_experiment
from xtf.methods import get as method_spec
from xtf.methods import scores_needed
from xtf.plan_memory import GIB, Arch, Setup, layer_params, lora_params, memory, param_count  # noqa: F401
from xtf.validate import validate

THROUGHPUT = "experiments/throughput.json"
CHARS_PER_TOKEN = 4.0       # English BPE with 32k-152k vocabularies: ~3.5-4.5 characters per token (an estimate)
# Training rows of each task's train split, for when its files cannot be read here (an upper bound x max_len).
KNOWN_TRAIN_ROWS = {"gsm8k": 7473, "pubmedqa": 500, "medqa": 10178}


# The paper's models and the packaged CPU models, from each checkpoint's config.json (DeepSeek-R1-Distill-Qwen =
# Qwen2.5-Math-1.5B / Qwen2.5-7B / 14B shapes, untied). A fact of the published weights, not a run knob: kept here,
# out of ModelConfig, so that it never enters a run id. Keyed by model.name (model=llama3 is named llama31_8b).
ARCH: dict[str, Arch] = {
    "llama32_1b": Arch(16, 2048, 8192, 32, 8, 128256, tied=True, params=1_235_814_400),
    "llama32_3b": Arch(28, 3072, 8192, 24, 8, 128256, tied=True, params=3_212_749_824),
    "llama31_8b": Arch(32, 4096, 14336, 32, 8, 128256, tied=False, params=8_030_261_248),
    "mistral_7b": Arch(32, 4096, 14336, 32, 8, 32000, tied=False, params=7_241_732_096),
    "r1_qwen_1_5b": Arch(28, 1536, 8960, 12, 2, 151936, tied=False, qkv_bias=True, params=1_777_088_000),
    "r1_qwen_7b": Arch(28, 3584, 18944, 28, 4, 152064, tied=False, qkv_bias=True, params=7_615_616_512),
    "r1_qwen_14b": Arch(48, 5120, 13824, 40, 8, 152064, tied=False, qkv_bias=True, params=14_770_033_664),
    "smollm2_135m": Arch(30, 576, 1536, 9, 3, 49152, tied=True, params=134_515_008),
    "gemma3_270m": Arch(18, 640, 2048, 4, 1, 262144, tied=True, head_dim=256, params=268_098_176),
}


def arch_of(model) -> Optional[Arch]:
    """A ModelConfig's shape: the table above, or a tiny model's own config fields; None when unknown."""
    if model.name in ARCH:
        return ARCH[model.name]
    if model.tiny:
        return Arch(model.num_layers, model.hidden_size, model.intermediate_size, model.num_heads, model.num_heads,
                    model.vocab_size, tied=True)
    return None


# ------------------------------------------------------------------------------------ config → setup → verdict
def world_of(cluster: dict) -> tuple[int, int]:
    """(processes, GPUs allocated) of one job of the cluster profile: nodes x tasks_per_node processes (what
    submitit launches), nodes x gpus_per_node GPUs (what is billed)."""
    nodes = int(cluster.get("nodes") or 1)
    return nodes * int(cluster.get("tasks_per_node") or 1), nodes * int(cluster.get("gpus_per_node") or 1)


def setup_of(run, world: int, **changes) -> Setup:
    micro, _ = batch_split(run.train.batch_size, run.train.grad_accum, world)
    d = 4 if run.model.dtype == "float32" else 2
    mode = run.train.mode if run.method.finetune else "eval"
    mixed = (run.dist.mixed_precision or ("bf16" if run.model.dtype == "bfloat16" else None)) is not None
    s = Setup(mode=mode, strategy=run.dist.strategy, world=world, micro_batch=micro, seq_len=run.data.max_len,
              dtype_bytes=d, mixed=mixed, checkpointing=run.dist.activation_checkpointing,
              zero_stage=run.dist.zero_stage, offload=run.dist.fsdp_offload,
              eager=run.model.attn_implementation == "eager", lora_r=run.train.lora_r,
              lora_targets=tuple(run.model.lora_target_modules), loss_impl=run.train.loss_impl)
    if s.loss_impl == "chunked" and s.strategy in ("fsdp", "deepspeed"):
        s = dataclasses.replace(s, loss_impl="kept")  # as xtf.train does: sharded engines keep the head in forward
    return dataclasses.replace(s, **changes)


def fixes(run, cluster: dict, a: Arch, s: Setup, gpu_gib: float) -> list[str]:
    """Single changes that make the cell fit, as the overrides to set (estimates too)."""
    def fits(t: Setup) -> bool:
        return memory(a, t)["total"] <= gpu_gib * GIB

    gpus_node = int(cluster.get("gpus_per_node") or 1)
    nodes = int(cluster.get("nodes") or 1)
    out = []
    if s.mode == "full" and s.strategy in ("none", "ddp"):
        for w in sorted({s.world, nodes * gpus_node}):
            if fits(dataclasses.replace(s, strategy="fsdp", checkpointing=True, world=w,
                                        micro_batch=setup_of(run, w).micro_batch)):
                more = f" with cluster.tasks_per_node={gpus_node}" if w > s.world else ""
                out.append(f"use dist=fsdp{more} (shards weights, gradients and optimizer state over {w} GPUs)")
                break
    if not s.checkpointing and s.mode != "eval" and fits(dataclasses.replace(s, checkpointing=True)):
        out.append("set dist.activation_checkpointing=true")
    fitting = [m for m in range(s.micro_batch - 1, 0, -1) if fits(dataclasses.replace(s, micro_batch=m))]
    if fitting and s.mode != "eval":
        total = run.train.batch_size * run.train.grad_accum
        m = next((m for m in fitting if (total // s.world) % m == 0), 1)
        out.append(f"lower train.batch_size to {m} with train.grad_accum={total // m} (the same global batch)")
    sharded = s.strategy == "fsdp" or (s.strategy == "deepspeed" and s.zero_stage >= 1)
    if sharded and s.mode == "full":
        if s.world < nodes * gpus_node:
            out.append(f"use every GPU of the job: cluster.tasks_per_node={gpus_node}")
        for n in (2, 4, 8):
            w = s.world * n
            if fits(dataclasses.replace(s, world=w, micro_batch=setup_of(run, w).micro_batch)):
                per_node = min(w, max(gpus_node, 8))  # an 8-GPU node unless the profile says more
                out.append(f"use more GPUs: {w} processes (cluster.gpus_per_node={per_node} cluster.tasks_per_node="
                           f"{per_node}" + (f" cluster.nodes={math.ceil(w / per_node)})" if w > per_node else ")"))
                break
        if s.strategy == "fsdp" and not s.offload and fits(dataclasses.replace(s, offload=True)):
            out.append("set dist.fsdp_offload=true (slower)")
    return out


def refusal(run, world: int) -> Optional[str]:
    """What xtf.distributed.check would refuse at the start of the job on a GPU (LoRA with a sharded strategy, a
    global batch the world size does not divide, ...), or None. Whether the deepspeed package is installed is a
    question about the cluster's environment, not this machine's, so that refusal is not repeated here."""
    strategy = "ddp" if run.dist.strategy == "none" and world > 1 else run.dist.strategy
    try:
        check(run.dist, run.train, Runtime(world_size=world, strategy=strategy), on_gpu=True)
    except ConfigError as e:
        return None if "deepspeed package" in str(e) else str(e)
    return None


def verdict(run, cluster: dict, name: str = "") -> dict:
    """The memory plan of one cell: {arch, setup, memory (bytes), gpu_gib, fits, problem (None if it fits)}."""
    a = arch_of(run.model)
    gpu_gib = cluster.get("gpu_mem_gb")
    if a is None or not gpu_gib:
        why = (f"no architecture for model.name={run.model.name} in xtf/plan.py ARCH" if a is None else
               "the cluster profile has no cluster.gpu_mem_gb")
        return {"arch": a, "setup": None, "memory": None, "gpu_gib": gpu_gib, "fits": None, "problem": None,
                "unchecked": why}
    world, _ = world_of(cluster)
    refused = refusal(run, world)
    if refused:
        return {"arch": a, "setup": None, "memory": None, "gpu_gib": gpu_gib, "fits": False, "unchecked": refused,
                "problem": f"{name or run.model.name}: the run would refuse this setup: {refused}"}
    s = setup_of(run, world)
    mem = memory(a, s)
    fits = mem["total"] <= float(gpu_gib) * GIB
    problem = None
    if not fits:
        todo = fixes(run, cluster, a, s, float(gpu_gib)) or [
            "no single change fits: combine dist=fsdp, dist.activation_checkpointing=true, a smaller "
            "train.batch_size and more GPUs"]
        problem = (f"{name or run.model.name}: needs ~{mem['total'] / GIB:.1f} GiB per GPU, the profile has "
                   f"{gpu_gib} GiB (train={run.train.mode}, dist={s.strategy}, {world} process(es), micro-batch "
                   f"{s.micro_batch} x {s.seq_len}); to fit: " + "; or ".join(todo))
    return {"arch": a, "setup": s, "memory": mem, "gpu_gib": float(gpu_gib), "fits": fits, "problem": problem}


def fit_problem(cfg, name: str = "") -> Optional[str]:
    """For the sweeper: why a composed cell (a Hydra config with its `cluster` node) cannot fit, or None (it fits,
    it cannot be checked, the profile has no GPUs, or cluster.plan_check=false)."""
    from omegaconf import OmegaConf, open_dict, read_write

    cluster = OmegaConf.to_container(cfg.cluster, resolve=True) if "cluster" in cfg else {}
    if not cluster.get("plan_check", True) or not cluster.get("gpus_per_node"):
        return None
    if "hydra" in cfg:  # a sweep's job config: its hydra node resolves only inside a job
        cfg = cfg.copy()
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
    return verdict(validate(cfg), cluster, name)["problem"]


# ------------------------------------------------------------------------------------------ tokens and hours
def train_tokens(run, cache: dict) -> tuple[int, int, str]:
    """Training tokens of the cell per epoch (before method-specific changes), its rows, and where the count comes from:
    the rows the run would select (xtf.data.select) at ~CHARS_PER_TOKEN characters per token, each capped at
    data.max_len; else the task's known train size x data.max_len (an upper bound)."""
    key = (run.task.name, json.dumps(run.task.options, sort_keys=True), run.data, run.paths.data_dir)
    if key not in cache:
        try:
            rows = select(run).train
            n = sum(min(run.data.max_len, math.ceil(len(e["prompt"] + e["response"]) / CHARS_PER_TOKEN)) for e in rows)
            cache[key] = (n, len(rows), f"{len(rows)} rows read, ~{CHARS_PER_TOKEN:g} chars/token")
        except Exception as e:  # noqa: BLE001 - no data here (no files, offline Hub): fall back, and say so
            rows = KNOWN_TRAIN_ROWS.get(run.task.name)
            rows = min(rows, run.data.limit or rows) if rows else None
            cache[key] = ((rows or 0) * run.data.max_len, rows or 0,
                          f"upper bound {rows} rows x max_len" if rows else f"unknown ({type(e).__name__})")
    return cache[key]


def flops(run, a: Arch, s: Setup, tokens: int, rows: int) -> dict[str, float]:
    """Model FLOPs of the cell: training 6P per token (full: forward 2P + backward 4P) or 4P (LoRA: the backward
    through frozen weights computes activation gradients only), +2P with activation checkpointing (a second
    forward); scoring forwards 2P per training token (a base pass for the base model's scores, another for a
    reference model's); a reference model's LoRA fine-tune on method.reference_warmup rows (TC, SLM); DA's
    paraphrases as 2P per generated token. Attention's s^2 FLOPs are left out (small at 512 tokens)."""
    p = a.params or param_count(a)
    if s.mode == "eval":
        return {"train": 0.0, "scoring": 0.0}
    m = run.method
    spec = method_spec(m.name)
    rows_factor = spec.rows_factor(m)  # DF drops samples, DA adds paraphrases (the method's registry entry)
    per_token = (6 if s.mode == "full" else 4) * p + (2 * p if s.checkpointing else 0)
    train = tokens * rows_factor * run.train.epochs * m.epochs_factor * per_token
    needs = scores_needed(m)
    passes = int(any(n != "ref_nll" for n in needs)) + int("ref_nll" in needs)
    scoring = passes * 2 * p * tokens
    if "ref_nll" in needs:
        scoring += min(1.0, m.reference_warmup / max(rows, 1)) * tokens * 4 * p  # one LoRA epoch
    scoring += spec.generated_per_token(m) * tokens * 2 * p  # DA's paraphrases
    return {"train": train, "scoring": scoring}


def load_throughput(root) -> dict:
    return json.loads((root / THROUGHPUT).read_text())


def gpu_hours(run, fl: dict, s: Setup, cluster: dict, table: dict, tokens: int) -> tuple[float, str]:
    """GPU-hours of one seed of the cell (GPUs allocated x wall time) and the basis: a measured tokens/s for this
    model, GPU and mode when the table has one, else the assumed MFU of the GPU's peak."""
    gpu = str(cluster.get("gpu_type") or "h100")
    if gpu not in table["gpus"]:
        raise ValueError(f"cluster.gpu_type={gpu} is not in {THROUGHPUT}; known: {sorted(table['gpus'])}")
    world, allocated = world_of(cluster)
    peak = table["gpus"][gpu]["peak_bf16_tflops"] * 1e12
    mfu = table["assumed_mfu"]
    measured = [e for e in table["measured"] if (e["model"], e["gpu"], e["mode"]) == (run.model.name, gpu, s.mode)]
    if measured:
        train_s = tokens * run.train.epochs * run.method.epochs_factor / (measured[0]["tokens_per_s_per_gpu"] * world)
        basis = "measured"
    else:
        train_s = fl["train"] / (world * peak * mfu.get(s.mode, mfu["full"])) if s.mode != "eval" else 0.0
        basis = "assumed MFU"
    wall = train_s + fl["scoring"] / (world * peak * mfu["forward"])
    return wall / 3600 * allocated, basis


# -------------------------------------------------------------------------------------------------- the table
def plan_experiment(spec_path: str, overrides: list[str], stand_in: bool = False) -> tuple[list[dict], dict]:
    """One row per cell of the spec (seeds share a plan): its verdict, tokens and GPU-hours per seed."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    spec = load_experiment(spec_path, stand_in=stand_in)
    table, cache, rows, cluster = load_throughput(ROOT), {}, [], {}
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for label in spec["cells"]:
            cfg = compose(config_name="config", overrides=[*spec["base"], *spec["cells"][label], *overrides])
            cluster = OmegaConf.to_container(cfg.cluster, resolve=True)
            run = validate(cfg)
            v = verdict(run, cluster, label)
            row = {"label": label, "run": run, **v, "tokens": None, "gpu_hours": None, "basis": ""}
            if v["setup"] is not None:
                row["tokens"], n_rows, row["token_source"] = train_tokens(run, cache)
                fl = flops(run, v["arch"], v["setup"], row["tokens"], n_rows)
                row["gpu_hours"], row["basis"] = gpu_hours(run, fl, v["setup"], cluster, table, row["tokens"])
            rows.append(row)
    return rows, {"spec": spec, "cluster": cluster, "throughput": table}


def render(rows: list[dict], info: dict) -> str:
    c, spec = info["cluster"], info["spec"]
    world, allocated = world_of(c)
    gpu = str(c.get("gpu_type") or "h100")
    lines = [f"[xtf] plan of {spec['name']} ({len(rows)} cells x {len(spec['seeds'])} seeds) on "
             f"cluster={c.get('name')}: {allocated} GPU(s) per job ({gpu}, {c.get('gpu_mem_gb')} GiB each), "
             f"{world} process(es)",
             "[xtf] every number is an ESTIMATE (xtf/plan.py); memory in GiB per GPU; tokens per epoch; GPU-hours "
             "per seed, training + scoring (evaluation not counted)"]
    width = max(len(r["label"]) for r in rows)
    cols = ("weights", "grads", "optimizer", "activations", "logits", "overhead", "total")
    head = f"{'cell':<{width}}  {'mode':<4} {'dist':<9} {'W':>2} {'mb':>2}  " + " ".join(
        f"{k[:7]:>7}" for k in cols) + f"  {'fits':<4} {'tokens':>9} {'GPU-h':>7}"
    lines += [head, "-" * len(head)]
    for r in rows:
        s, m = r["setup"], r["memory"]
        if s is None:
            lines.append(f"{r['label']:<{width}}  {'REFUSED' if r['fits'] is False else 'not checked'}: "
                         f"{r['unchecked']}")
            continue
        lines.append(f"{r['label']:<{width}}  {s.mode:<4} {s.strategy:<9} {s.world:>2} {s.micro_batch:>2}  "
                     + " ".join(f"{m[k] / GIB:7.1f}" for k in cols)
                     + f"  {'yes' if r['fits'] else 'NO':<4} {r['tokens']:>9,} {r['gpu_hours']:7.1f}")
    done = [r for r in rows if r["gpu_hours"] is not None]
    total = sum(r["gpu_hours"] for r in done) * len(spec["seeds"])
    sources = sorted({f"{r['run'].task.name}: {r['token_source']}" for r in done})
    bases = sorted({r["basis"] for r in done})
    mfu = info["throughput"]["assumed_mfu"]
    lines += ["-" * len(head),
              f"[xtf] total: ~{total:,.0f} GPU-hours for {len(done)} cells x {len(spec['seeds'])} seeds (an estimate)",
              f"[xtf] tokens: {'; '.join(sources)}",
              f"[xtf] hours from: {', '.join(bases)}" + (
                  f" (full {mfu['full']}, LoRA {mfu['lora']}, forward {mfu['forward']} of the peak: "
                  f"{mfu['source'].split(':')[0]}; {THROUGHPUT})" if "assumed MFU" in bases else "")]
    unfit = [r for r in rows if r["fits"] is False]
    if unfit:
        lines.append(f"[xtf] {len(unfit)} cell(s) do not fit:")
        lines += [f"[xtf]   {r['problem']}" for r in unfit]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", help="experiments/<name>.yaml")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every cell (default cluster=slurm)")
    parser.add_argument("--stand-in", action="store_true", help="the spec's tiny-model variant")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if not any(o.split("=")[0].lstrip("+~") == "cluster" for o in overrides):
        overrides.insert(0, "cluster=slurm")
    rows, info = plan_experiment(args.spec, overrides, args.stand_in)
    print(render(rows, info))
    if any(r["fits"] is False for r in rows):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
