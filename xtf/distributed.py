"""The distributed runtime: one run (one cell) spread over the processes of `torchrun` or of a multi-task SLURM
step, on the field's own engines — torch.distributed for the process group, HF Trainer / accelerate for DDP,
FSDP2 and DeepSpeed. XTF's own parts are small: which rank does what, and how work is shared out and merged.

    torchrun --nproc_per_node=2 run.py model=tiny task=synth dist=ddp       # 2 processes (gloo on CPU, nccl on GPU)
    python run.py -m cluster=slurm cluster.tasks_per_node=8 dist=fsdp ...   # srun tasks; env from SLURM (submitit)

Who does what (xtf/pipeline.py):
  * every rank: load data, load the model, score its share of the rows, mask, train (Trainer: DDP / FSDP /
    DeepSpeed), generate its share of the evaluation prompts;
  * rank 0 first, the others after it (`main_first`): artifacts every rank needs from the content-addressed
    cache (tiny bases, tokenised data, paraphrases): built once, read by the rest;
  * rank 0 only: the score cache write (one writer, atomic), records, predictions, reports, W&B, sandboxed code
    execution (HumanEval, on its CPU workers).
Work is shared only inside a `collective()` block, which every rank runs in lockstep: `share(items)` is this rank's
part (items[rank::world]), `merge(values)` all-gathers the parts back into one list, identical on every rank.
Outside such a block both are the identity, so code that runs on rank 0 alone never waits for the others.

World-size invariance: per-device batch x accumulation steps x world size == train.batch_size x train.grad_accum
(`batch_split`); the data order is the Trainer's seeded permutation, the same on every rank, and accelerate hands
consecutive per-device batches of it to consecutive ranks, so each optimiser step sees the same rows for any world
size. When the world size divides train.grad_accum the micro-batches themselves are unchanged (the same
per-micro-batch loss normalisation): the losses equal one process's up to float summation order.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import logging
import os
from typing import Any

import torch

from xtf.config import DistConfig
from xtf.errors import ConfigError
from xtf.models import pick_device
from xtf.ranks import STATE as _state  # the state of this process's run: shared with xtf.ranks
from xtf.ranks import Runtime, is_main, runtime  # noqa: F401 - re-exported: distributed.runtime() etc.

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- launch environment


def slurm_step_tasks(environ=os.environ) -> int:
    """Tasks of the SLURM step this process belongs to (srun / submitit with tasks_per_node or nodes > 1): the
    batch script itself has no step task count, so a plain `sbatch` of one process is never taken for a rank."""
    return int(environ.get("SLURM_STEP_NUM_TASKS") or 1)


def export_slurm_env() -> bool:
    """Set MASTER_ADDR/PORT, RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE from SLURM when this process is one task
    of a multi-task step (a submitit job with tasks_per_node or nodes > 1, or `srun` in an sbatch script) and no
    launcher set them. As submitit's TorchDistributedEnvironment does (which needs a submitit job): SLURM's
    variables read by submitit's SlurmJobEnvironment, the master on the first host, the port drawn from the job id
    (the same on every task, and on a requeued job). Returns whether it did."""
    if "RANK" in os.environ or slurm_step_tasks() <= 1 or "SLURM_PROCID" not in os.environ:
        return False
    import random

    from submitit.slurm.slurm import SlurmJobEnvironment

    job = SlurmJobEnvironment()
    world = slurm_step_tasks()
    env = {"MASTER_ADDR": os.environ.get("MASTER_ADDR") or job.hostnames[0],
           "MASTER_PORT": os.environ.get("MASTER_PORT") or str(random.Random(job.job_id).randint(20000, 60000)),
           "RANK": str(job.global_rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(job.local_rank),
           "LOCAL_WORLD_SIZE": str(world // max(int(os.environ.get("SLURM_STEP_NUM_NODES") or job.num_nodes), 1))}
    os.environ.update(env)
    log.info("torch.distributed from SLURM: rank %s of %d, master %s:%s", env["RANK"], world, env["MASTER_ADDR"],
             env["MASTER_PORT"])
    return True


def runtime_from_env(strategy: str, on_gpu: bool, environ=os.environ, launcher: str | None = None) -> Runtime:
    """The Runtime the environment describes (pure: reads `environ` only). `strategy=none` with more than one
    process is DDP: each rank then holds the whole model, which is what DDP is."""
    world = int(environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return Runtime(strategy=strategy)
    return Runtime(rank=int(environ["RANK"]), local_rank=int(environ.get("LOCAL_RANK", 0)), world_size=world,
                   local_world_size=int(environ.get("LOCAL_WORLD_SIZE", 1)),
                   strategy="ddp" if strategy == "none" else strategy, backend="nccl" if on_gpu else "gloo",
                   launcher=launcher or "torchrun")


def device(requested: str) -> torch.device:
    """This rank's device: cuda:LOCAL_RANK (modulo the visible GPUs, for sites that bind one GPU per task) when
    CUDA is used by a multi-process run; else as xtf.models.pick_device."""
    picked = pick_device(requested)
    rt = runtime()
    if picked.type == "cuda" and rt.world_size > 1 and picked.index is None:
        return torch.device("cuda", rt.local_rank % max(torch.cuda.device_count(), 1))
    return picked


def check(dist_cfg, train_cfg, rt: Runtime, on_gpu: bool) -> None:
    """Strategy choices that cannot work, refused before any work, naming the key and what to change."""
    if rt.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise ConfigError("dist.strategy=deepspeed needs the deepspeed package (pip install deepspeed, on a machine "
                          "with CUDA); or use dist.strategy=fsdp, which needs nothing beyond torch")
    if rt.strategy in ("fsdp", "deepspeed") and not on_gpu:  # accelerate would silently run DDP instead
        raise ConfigError(f"dist.strategy={rt.strategy} runs on GPUs only (accelerate applies FSDP and DeepSpeed to "
                          f"multi-GPU runs); on CPU use dist=ddp (gloo)")
    if rt.strategy in ("fsdp", "deepspeed") and train_cfg.mode == "lora":
        raise ConfigError(f"dist.strategy={rt.strategy} shards the full model for full fine-tuning; LoRA trains a "
                          f"few adapter weights: use dist=ddp with train=lora, or train=full with dist={rt.strategy}")
    if dist_cfg.mixed_precision == "fp16" and not on_gpu:
        raise ConfigError("dist.mixed_precision=fp16 needs a GPU; on CPU use null (float32) or bf16")
    if dist_cfg.fsdp_offload and rt.strategy != "fsdp":
        raise ConfigError(f"dist.fsdp_offload=true applies to dist.strategy=fsdp only (got {rt.strategy})")
    if train_cfg.micro_batch_tokens and rt.world_size > 1:  # each piece's backward would synchronise gradients
        raise ConfigError(f"train.micro_batch_tokens={train_cfg.micro_batch_tokens} runs on one process only (here "
                          f"{rt.world_size}, dist.strategy={rt.strategy}): set train.micro_batch_tokens=0, or lower "
                          f"train.batch_size and raise train.grad_accum for less memory per process")
    batch_split(train_cfg.batch_size, train_cfg.grad_accum, rt.world_size)


def start(dist_cfg, device_name: str, train_cfg) -> Runtime:
    """Join the run's process group (torchrun's or SLURM's environment; nothing to do for one process) and pin
    this rank's GPU. Idempotent. Fails before any work on a strategy that cannot run (`check`)."""
    from_slurm = export_slurm_env()
    on_gpu = device_name != "cpu" and (device_name.startswith("cuda") or torch.cuda.is_available())
    rt = runtime_from_env(dist_cfg.strategy, on_gpu, launcher="slurm" if from_slurm else None)
    check(dist_cfg, train_cfg, rt, on_gpu)
    _state.update(runtime=rt, dist=dist_cfg, train=train_cfg)
    if rt.world_size > 1 and not torch.distributed.is_initialized():
        if rt.backend == "nccl":
            torch.cuda.set_device(rt.local_rank % torch.cuda.device_count())
        torch.distributed.init_process_group(rt.backend, timeout=datetime.timedelta(minutes=dist_cfg.timeout_min))
        _state["owns_group"] = True
        log.info("rank %d of %d (%s, %s)", rt.rank, rt.world_size, rt.backend, rt.strategy)
    return rt


def finish(clean: bool = True) -> None:
    """Leave the process group this module joined; `clean`: every rank got here (a barrier first)."""
    if _state["owns_group"] and torch.distributed.is_initialized():
        if clean:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    _state.update(runtime=Runtime(), dist=None, train=None, collective=False, owns_group=False)


def describe() -> dict:
    """The provenance of how a run was spread (not in the run id: the results do not depend on it)."""
    rt = runtime()
    split = None
    cfg = _state.get("train")
    if cfg is not None:
        split = dict(zip(("per_device_batch", "grad_accum"), batch_split(cfg.batch_size, cfg.grad_accum,
                                                                         rt.world_size)))
    return {"world_size": rt.world_size, "local_world_size": rt.local_world_size, "strategy": rt.strategy,
            "backend": rt.backend, "launcher": rt.launcher, **(split or {})}


# -------------------------------------------------------------------------------------- sharing work between ranks
def _active() -> bool:
    return _state["collective"] and runtime().world_size > 1


@contextlib.contextmanager
def collective():
    """Every rank runs this block in lockstep: `share` / `merge` inside it split work between the ranks."""
    previous = _state["collective"]
    _state["collective"] = True
    try:
        yield
    finally:
        _state["collective"] = previous


@contextlib.contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. builds a cache entry); the others wait, then run it (and read that entry).
    No sharing inside: rank 0 runs it alone."""
    previous = _state["collective"]
    _state["collective"] = False
    try:
        if runtime().world_size > 1 and not is_main():
            barrier()
        yield
        if runtime().world_size > 1 and is_main():
            barrier()
    finally:
        _state["collective"] = previous


def share(items: list) -> list:
    """This rank's part of `items` (every world_size-th, from its rank) inside `collective()`, else all of them."""
    if not _active():
        return items
    rt = runtime()
    return items[rt.rank::rt.world_size]


def merge(values: list) -> list:
    """Inside `collective()`: `values` holds this rank's results at their positions and None elsewhere; returns
    the full list (every position from the rank that computed it), the same on every rank. Else `values`."""
    if not _active():
        return values
    parts: list = [None] * runtime().world_size
    torch.distributed.all_gather_object(parts, values)
    merged = [next((p[i] for p in parts if p[i] is not None), None) for i in range(len(values))]
    if any(v is None for v in merged):
        raise RuntimeError(f"merge: {sum(v is None for v in merged)} of {len(values)} positions were computed by "
                           f"no rank")
    return merged


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (the identity in one process)."""
    if runtime().world_size <= 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of `values` over the ranks (counters such as tokens processed); the identity in one process."""
    if runtime().world_size <= 1 or not torch.distributed.is_initialized():
        return values
    total = torch.tensor(values, dtype=torch.float64)
    torch.distributed.all_reduce(total)
    return total.tolist()


def barrier() -> None:
    if runtime().world_size > 1:
        torch.distributed.barrier()


def lm_eval_data_parallel(lm):
    """Inside `collective()`: put lm-eval's in-memory HFLM (which takes an already loaded model for one process)
    into lm-eval's own data-parallel mode: each rank runs its share of the documents' requests, lm-eval pads the
    shares to equal length and gathers samples and metrics on rank 0 (`evaluator.evaluate` returns None on the
    other ranks). HFLM gathers through accelerate, which this run did not set up: torch.distributed here."""
    if not _active():
        return lm
    rt = runtime()

    def all_gather(tensor: torch.Tensor) -> torch.Tensor:  # accelerate's gather: 0-d → [world], else concatenated
        parts = [torch.zeros_like(tensor) for _ in range(rt.world_size)]
        torch.distributed.all_gather(parts, tensor.contiguous())
        return torch.stack(parts) if tensor.dim() == 0 else torch.cat(parts)

    lm._rank, lm._world_size = rt.rank, rt.world_size
    lm.all_gather, lm.barrier = all_gather, barrier  # instance attributes: lm-eval calls lm.all_gather(t)
    return lm


# ----------------------------------------------------------------------------------------------------- training
def batch_split(batch_size: int, grad_accum: int, world_size: int) -> tuple[int, int]:
    """(per-device batch, accumulation steps) such that per_device x accum x world_size == batch_size x
    grad_accum (the global batch). The micro-batch stays `batch_size` when world_size divides grad_accum (same
    micro-batches, same per-micro-batch loss normalisation as one process); else it is the largest divisor of
    the per-rank share that is <= batch_size."""
    total = batch_size * grad_accum
    if total % world_size:
        raise ConfigError(f"the global batch train.batch_size x train.grad_accum = {batch_size} x {grad_accum} = "
                          f"{total} is not divisible by the world size {world_size} (processes): make the global "
                          f"batch a multiple of {world_size}, or launch a number of processes that divides {total}")
    if grad_accum % world_size == 0:
        return batch_size, grad_accum // world_size
    per_rank = total // world_size
    per_device = next(p for p in range(min(batch_size, per_rank), 0, -1) if per_rank % p == 0)
    return per_device, per_rank // per_device


def trainer_kwargs(train_cfg, model_cfg, model, on_gpu: bool) -> dict:
    """The TrainingArguments of this run's distribution: per-device batch and accumulation (`batch_split`), DDP's
    backend, FSDP2 (accelerate) or DeepSpeed ZeRO (accelerate) with activation checkpointing and mixed precision.
    In one process with the default `dist` this is exactly what xtf.train passed before distribution existed:
    train.batch_size, train.grad_accum, bf16 on GPU when model.dtype=bfloat16."""
    dist_cfg = _state["dist"] or DistConfig()
    rt = runtime()
    _state["train"] = train_cfg
    per_device, accum = batch_split(train_cfg.batch_size, train_cfg.grad_accum, rt.world_size)
    precision = dist_cfg.mixed_precision or ("bf16" if on_gpu and model_cfg.dtype == "bfloat16" else None)
    kwargs: dict[str, Any] = {"per_device_train_batch_size": per_device, "gradient_accumulation_steps": accum,
                              "bf16": precision == "bf16", "fp16": precision == "fp16"}
    if rt.world_size > 1:
        # Every trainable weight takes part in each forward (LoRA adapters, or all weights): no unused-parameter
        # search (it costs a graph traversal per step and cannot be combined with activation checkpointing).
        kwargs.update(ddp_backend=rt.backend, ddp_timeout=dist_cfg.timeout_min * 60, ddp_find_unused_parameters=False)
    if rt.strategy == "fsdp":
        kwargs.update(fsdp=True, fsdp_config={
            "version": 2,
            "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # one FSDP unit per decoder layer
            "transformer_layer_cls_to_wrap": sorted(getattr(model, "_no_split_modules", None) or []),
            "reshard_after_forward": True,                 # full shard (ZeRO-3-like)
            "activation_checkpointing": dist_cfg.activation_checkpointing,
            "cpu_offload": dist_cfg.fsdp_offload,
            "state_dict_type": "FULL_STATE_DICT",           # checkpoints readable by one process as well
        })
    elif rt.strategy == "deepspeed":
        kwargs.update(deepspeed=deepspeed_config(dist_cfg.zero_stage),
                      activation_checkpointing=dist_cfg.activation_checkpointing)
    elif dist_cfg.activation_checkpointing:  # transformers 5's names (gradient_checkpointing* warn: gone in v6)
        kwargs.update(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": False})
    return kwargs


def deepspeed_config(stage: int) -> dict:
    """A ZeRO config whose batch, clipping and precision fields HF fills from TrainingArguments ("auto")."""
    return {"zero_optimization": {"stage": stage, "overlap_comm": True, "contiguous_gradients": True,
                                  **({"stage3_gather_16bit_weights_on_model_save": True} if stage == 3 else {})},
            "train_micro_batch_size_per_gpu": "auto", "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto", "gradient_clipping": "auto",
            "bf16": {"enabled": "auto"}, "fp16": {"enabled": "auto"}}


def gathered_model(model, dev: torch.device):
    """A plain copy of an FSDP2-sharded model (parameters as DTensors) with every weight, on every rank, for
    evaluation; any other model is returned as it is."""
    from torch.distributed.tensor import DTensor

    if not any(isinstance(p, DTensor) for p in model.parameters()):
        return model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoModelForCausalLM

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))  # collective
    dtype = next(iter(state.values())).dtype
    plain = AutoModelForCausalLM.from_config(model.config, dtype=dtype,
                                             attn_implementation=model.config._attn_implementation)
    plain.load_state_dict(state)
    return plain.to(dev).eval()
