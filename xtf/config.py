"""Typed, validated run configuration.

Hydra composes YAML (conf/); `validate(cfg)` turns the composed DictConfig into a frozen `RunConfig` of
dataclasses, failing *before any work* on an unknown key, a wrong type or an out-of-range value, and naming
the key and the valid choices. Task-specific knobs live in the task module's own `Options`
dataclass (xtf/tasks/<name>.py), validated the same way.

    from xtf.config import validate
    run_cfg = validate(hydra_cfg)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from xtf.errors import ConfigError  # noqa: F401 - re-exported: callers catch it from here

# Field metadata of a key added after runs existed: at its default it is left out of run ids (xtf.results), so
# runs that do not use it keep their ids. Task options marked so are also left out of the validated config
# (`options_dict`: of data memo keys and records too).
ID_OMIT_DEFAULT = {"id_omit_default": True}


@dataclass(frozen=True)
class ModelConfig:
    name: str                                  # short name, e.g. llama3, tiny
    hub_id: Optional[str] = None               # Hugging Face id of the real weights (None for built tiny models)
    path: Optional[str] = None                 # local weights: a HF model folder, or a .gguf file; overrides hub_id
    package: Optional[str] = None              # a pip package that ships the weights as GGUF (xtf/packaged.py)
    gguf_file: Optional[str] = None            # the .gguf file inside `package` (or inside the `path` folder)
    family: Literal["llama", "qwen2", "mistral", "gemma3"] = "llama"
    tiny: Optional[str] = None                 # "pretrained" (cached CPU pre-training) | "random" | None (real weights)
    chat_template: bool = False                # render prompts with the tokenizer's chat template
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"  # forced to float32 on CPU
    attn_implementation: str = "sdpa"
    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    # Tiny-model architecture (ignored for real weights).
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    vocab_size: int = 2048
    pretrain_steps: int = 300


@dataclass(frozen=True)
class TaskConfig:
    name: str
    options: dict = field(default_factory=dict)  # validated against xtf.tasks.<name>.Options


@dataclass(frozen=True)
class DataConfig:
    limit: Optional[int] = None        # first N training examples in source order (None = all)
    eval_limit: Optional[int] = None   # first N test examples (None = all)
    dev_size: int = 0                  # examples carved from *training* data for threshold selection
    max_len: int = 512                 # tokens per example (prompt + answer)
    truncation: Literal["right", "drop", "error"] = "right"  # right: cut the answer's tail; drop: drop the example;
                                       # error: fail naming the example (task=sft's default)
    on_bad_row: Literal["error", "skip"] = "error"  # malformed source rows: fail naming file:line, or skip+count
    # Your own data (task=sft only; xtf/tasks/sft_files.py lists the formats): a file, a save_to_disk folder or
    # hub:<id>. Never in the run id: the rows read are, by content (xtf.results.content_identity).
    train_file: Optional[str] = field(default=None, metadata=ID_OMIT_DEFAULT)
    eval_file: Optional[str] = field(default=None, metadata=ID_OMIT_DEFAULT)


@dataclass(frozen=True)
class RIConfig:
    """Reasoning importance: attention a token receives from later tokens (DESIGN.md §5)."""
    definition: Literal["received", "official"] = "received"  # official: the released code's first-layer row mean
    layers: tuple[int, ...] = ()       # layer indices averaged (negative counts from the end); () = every layer
    k: float = 1.5                     # Tukey fence: noisy if RI < Q1 - k·IQR over the sample's answer tokens
    scale: Literal["raw", "log"] = "raw"  # the scale the fence is computed on (xtf.rules.ri_scaled): on raw RI
                                       # the fence falls below 0 and never fires; log makes it reachable
    query_chunk: int = 64              # queries per chunk when reducing attention (bounds peak memory; 64 fits
                                       # CPU caches: measured faster than 256 or 1024 in make bench-scoring)


@dataclass(frozen=True)
class KNConfig:
    """Knowledge novelty: PCP = P(gold token | prefix) under the base model."""
    threshold: float = 0.95            # noisy if PCP > threshold (the model already knows the token)


@dataclass(frozen=True)
class TRConfig:
    """Task relevance: cosine(context-free hidden state of the token, domain vector of the expert words)."""
    classes: int = 5                   # Multi-Otsu classes over the answer-token scores
    drop: Literal["second_lowest", "lowest", "two_lowest"] = "second_lowest"  # which cluster(s) are noise
    # The released code (xtf_official): "released" scorer = each token run ALONE (no special tokens), one score
    # per decoded stripped text, the first token seen with that text wins; "released" threshold = Multi-Otsu
    # over every token occurrence (prompt + answer) at skimage's bin centres, the class picked by the
    # cumulative-proportion test against `weight` (xtf.rules.tr_released_threshold).
    scorer: Literal["bos", "released"] = "bos"   # bos: [bos, token] per unique token id
    threshold: Literal["otsu", "released"] = "otsu"
    weight: float = 1.0                # the released TR score weight (only for threshold=released)


@dataclass(frozen=True)
class SSTokenConfig:
    """ssToken (xtf/sstoken.py): per sample keep the top ⌈keep_ratio·n⌉ by gamma·minmax(REL) + (1-gamma)·attention."""
    gamma: float = 0.5                 # weight of the normalised REL (the code's --ratio); 1 - gamma: attention
    warmup: float = 0.2                # attention alone (gamma = 0) while steps done / total < warmup
    history: Literal["base", "ema"] = "base"  # REL = NLL_history - NLL_current; base: cached base NLL
    ema_alpha: float = 0.99            # history=ema: θ_his ← α·θ_his + (1-α)·θ each optimiser step
    layer: int = -1                    # the layer whose attention to the prompt is the semantic score


@dataclass(frozen=True)
class ProFitConfig:
    """ProFit (online): p = P(gold token | prefix) under the model being trained."""
    threshold: float = 0.1
    direction: Literal["keep_higher", "keep_lower"] = "keep_higher"  # keep_higher: train on p >= threshold


@dataclass(frozen=True)
class STMConfig:
    """STM (offline): per-token perplexity exp(NLL) under the base model."""
    threshold: float = 2.5
    direction: Literal["mask_higher", "mask_lower"] = "mask_higher"  # mask_higher: no loss where exp(nll) > threshold


@dataclass(frozen=True)
class DAConfig:
    """DA (xtf/augment.py): answer-preserving paraphrases of each training answer, added to the training set."""
    generator: Optional[str] = None    # a conf/model name; None: the base model itself
    n: int = 1                         # paraphrases generated per example
    temperature: float = 0.0           # 0: greedy (then n must be 1)
    max_new_tokens: int = 256


@dataclass(frozen=True)
class MethodConfig:
    name: str
    finetune: bool = True              # False: evaluate the base model (the paper's "CA")
    epochs_factor: int = 1             # normal_x2 trains for 2x the epochs
    # XTF: noise = union of the enabled attributes' noisy sets (any subset: the paper's Table 2 ablation).
    attributes: tuple[str, ...] = ("ri", "kn", "tr")
    ri: RIConfig = RIConfig()
    kn: KNConfig = KNConfig()
    tr: TRConfig = TRConfig()
    cap: Optional[Literal["script", "main"]] = None  # xtf_official: the released per-attribute caps with their
                                       # own off-by-one rules (xtf.rules.cap_*_released), percentages [ri, kn, tr]
                                       # of XTF_script.py ("script": .1/.1/.1) or main.py/README ("main":
                                       # .05/.1/.05); None: no cap (the paper)
    exempt_special: bool = True        # special tokens (EOS, end-of-turn, ...) are never noise for any attribute
    # The task's answer format (xtf.tasks.common protected spans: GSM8K's "#### N" line, MedQA's letter, PubMedQA's
    # closing sentence, the EOS) is never masked by any token-level method. A method key, as exempt_special: the
    # rows and scores are the same either way, only what a method may mask changes. Added after runs existed: in
    # the run id only when false (xtf_official: the released code has no such protection).
    protect_answer: bool = field(default=True, metadata=ID_OMIT_DEFAULT)
    # "released" (conf/method/xtf_official.yaml): the run claims the released XTF code's protocol; validate checks
    # every key the released scripts fix (xtf.official.RELEASED) and warns naming each that differs; the summary
    # says whether the run is the released computation. Added after runs existed: in the run id only when set.
    protocol: Optional[Literal["released"]] = field(default=None, metadata=ID_OMIT_DEFAULT)
    # TC (token cleaning) and SLM (Rho-1): a reference model = the base fine-tuned on a warm-up subset.
    keep_ratio: float = 0.6            # fraction of answer tokens kept: the highest (base loss - reference loss)
    scope: Literal["global", "sample"] = "global"  # TC: top-k over the whole set, or within each sample
    reference_warmup: int = 200        # warm-up subset size (first N training examples) for the reference model
    rounds: int = 1                    # TC self-evolving: R > 1 parts, each scored by a reference evolved on the last
    evolve: Literal["chain", "score_only"] = "chain"  # rounds > 1. chain (TC's code): parts of ⌊N/R⌋ rows,
                                       # part 0 the warm-up (all answer tokens), each later part ranked within
                                       # itself, the reference fine-tuned part by part, the chain's last model IS
                                       # the result; score_only: the chain only scores, all parts are ranked
                                       # together and the base is then fine-tuned on every row (this harness's v1)
    reference_lora_r: int = 64         # TC's reference model: LoRA r 64, alpha 16, dropout 0.1, lr 1e-4, 3 % warm-up
    # TC's bash_src/finetune.sh passes --lora_alpha 16 with r 64 (this harness used 2r = 128 before, 8x the LoRA
    # scaling). Added after runs existed: in the run id only when changed (the reference cache is keyed by its
    # full training config, so the new default trains a new reference).
    reference_lora_alpha: int = field(default=16, metadata=ID_OMIT_DEFAULT)
    reference_lora_dropout: float = 0.1
    reference_lr: float = 1e-4
    reference_warmup_ratio: float = 0.03
    # DF: sample-level filtering.
    drop_ratio: float = 0.1            # fraction of samples dropped: those with the highest mean answer loss
    # random: the control that separates denoising from "less data".
    match: Optional[str] = "xtf"       # mask, per sample, as many tokens as this method does; None: use `ratio`
    ratio: float = 0.3                 # fraction of answer tokens masked when match is None
    # The field's other token-selection methods (xtf/online.py, xtf/sstoken.py, xtf/augment.py); ssToken's ρ is
    # keep_ratio above. DFT has no knob: each token's loss is weighted by its detached probability.
    sstoken: SSTokenConfig = field(default=SSTokenConfig(), metadata=ID_OMIT_DEFAULT)
    profit: ProFitConfig = field(default=ProFitConfig(), metadata=ID_OMIT_DEFAULT)
    stm: STMConfig = field(default=STMConfig(), metadata=ID_OMIT_DEFAULT)
    da: DAConfig = field(default=DAConfig(), metadata=ID_OMIT_DEFAULT)


@dataclass(frozen=True)
class TrainConfig:
    name: str                          # lora | full
    mode: Literal["lora", "full"] = "lora"
    epochs: float = 1.0
    lr: float = 1e-4
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.0
    warmup_ratio: float = 0.0
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    loss_norm: Literal["kept", "answer"] = "kept"  # kept: mean over kept tokens (HF); answer: over all answer tokens
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    save_steps: int = 50               # checkpoint every N optimiser steps (resume point)
    save_total_limit: int = 2
    keep_checkpoints: bool = False     # False: delete checkpoints once the run is complete (results.json written)
    logging_steps: int = 5
    # How the loss is computed (xtf.lm_loss): chunked (default) | kept | full (the reference, [B, L, V] logits).
    # The same loss to float tolerance, so not in the run id (recorded under training.loss_impl).
    loss_impl: Literal["chunked", "kept", "full"] = "chunked"
    # packing: rows concatenated into one sequence per micro-batch, no padding (xtf.train.Collator): the same
    # micro-batches and loss, so not in the run id. group_by_length: micro-batches of similar-length rows (HF's
    # LengthGroupedSampler, seeded): less padding, another data order, so in the run id when on.
    packing: bool = False
    group_by_length: bool = field(default=False, metadata=ID_OMIT_DEFAULT)


@dataclass(frozen=True)
class SandboxConfig:
    """Limits for each model-written program (HumanEval): run under bubblewrap, never in the harness process."""
    timeout_s: float = 10.0            # wall clock per program (killed after)
    cpu_s: int = 10                    # RLIMIT_CPU, seconds of CPU time
    memory_mb: int = 1024              # MB, per process (RLIMIT_AS) and for the whole sandbox (xtf.sandbox_limits)
    max_processes: int = 32            # per sandbox (RLIMIT_NPROC in its user namespace, cgroup/watchdog): fork bombs
    max_output_kb: int = 256           # stdout/stderr kept per program (RLIMIT_FSIZE for scratch files too)
    parallel: int = 0                  # programs run at once; 0 = the number of CPU cores


@dataclass(frozen=True)
class EvalConfig:
    batch_size: int = 16
    max_new_tokens: int = 64
    enabled: bool = True
    answer_nll: bool = True            # also report the mean NLL of the reference answers (a continuous measure)
    split: Literal["test", "dev"] = "test"  # dev: the split carved from training data (data.dev_size), for
                                            # choosing thresholds; test is reported once, with the chosen values
    # HumanEval (task=code): n samples per problem for the unbiased pass@k, plus one greedy sample for pass@1.
    n_samples: int = 10
    temperature: float = 0.8
    top_p: float = 0.95
    pass_k: tuple[int, ...] = (1, 5, 10)
    code_protocol: Literal["sampled", "released_beam"] = "sampled"  # released_beam: the released XTF code's
                                            # beam-search pass@k (n beams, any-of-k), for comparison only
    sandbox: SandboxConfig = SandboxConfig()
    # Runs model-written code directly on this machine when bubblewrap is missing. Dangerous; off by default.
    UNSAFE_allow_unsandboxed_code: bool = False
    # Generation speed (xtf.evaluate.token_budget_batches; README "Evaluation speed"). batch_tokens > 0: batches
    # cut by a token budget (sequences x (longest prompt + max_new_tokens)) instead of batch_size prompts; greedy
    # outputs are the same either way, so it is never in a greedy task's run id. backend=vllm: lm-eval's vLLM model
    # (a CUDA GPU and `pip install vllm`; lm-eval tasks only), checked by xtf.lmeval.check_backend.
    batch_tokens: int = field(default=0, metadata=ID_OMIT_DEFAULT)
    backend: Literal["hf", "vllm"] = field(default="hf", metadata=ID_OMIT_DEFAULT)


@dataclass(frozen=True)
class PathsConfig:
    data_dir: Optional[str] = None     # local benchmark files (XTF_DATA_DIR); None → the Hub
    hub_mirror: Optional[str] = None   # a local folder laid out like the Hub (testing / air-gapped clusters)
    results_dir: str = "results"
    outputs_dir: str = "outputs"       # checkpoints, predictions of heavy runs
    cache_dir: str = ".cache/xtf"      # content-addressed artifacts (tiny bases, tokenised data, scores)


@dataclass(frozen=True)
class WandbConfig:
    mode: Literal["offline", "online", "disabled"] = "offline"
    project: str = "xtf"
    entity: Optional[str] = None


@dataclass(frozen=True)
class DistConfig:
    """How a run is spread over processes (xtf/distributed.py; conf/dist/). Launcher-like, as `cluster` is: never
    in the run id (the world size and the strategy used are recorded in the record's provenance). The global
    batch (train.batch_size x train.grad_accum), the LR schedule and the data order are the same for any world
    size; only the split into per-device batch x accumulation steps changes."""
    # none: one process, or DDP when launched with WORLD_SIZE > 1 (torchrun, srun): every rank holds the whole
    # model. ddp: data parallel (LoRA). fsdp: FSDP2 through accelerate (full fine-tuning of 7-14B models).
    # deepspeed: ZeRO through accelerate (needs the deepspeed package).
    strategy: Literal["none", "ddp", "fsdp", "deepspeed"] = "none"
    activation_checkpointing: bool = False  # recompute activations in backward (FSDP's own under fsdp)
    mixed_precision: Optional[Literal["bf16", "fp16"]] = None  # None: bf16 on GPU when model.dtype=bfloat16
    fsdp_offload: bool = False         # fsdp: parameters, gradients and optimizer state in CPU memory
    zero_stage: int = 3                # deepspeed: ZeRO stage (1, 2 or 3)
    timeout_min: int = 120             # collectives (and ranks waiting for rank 0 to fill a cache) fail after this


@dataclass(frozen=True)
class ExportConfig:
    """The run's decision as a dataset other trainers load (xtf/export.py: `datasets` folder + Parquet + a dataset
    card), written after the record. Launcher-like, as `dist` is: never in the run id (it changes no result)."""
    enabled: bool = False
    dir: Optional[str] = None          # None: <run folder>/export


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig
    task: TaskConfig
    method: MethodConfig
    train: TrainConfig
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    paths: PathsConfig = PathsConfig()
    wandb: WandbConfig = WandbConfig()
    dist: DistConfig = DistConfig()    # launcher-like: not in the run id (xtf.results)
    export: ExportConfig = ExportConfig()  # launcher-like: not in the run id
    # score → mask → record (→ export): no fine-tuning, no evaluation (eval.enabled is set false). In the run id only
    # when true, so a score-only record never answers for a fine-tuned one and earlier runs keep their ids.
    score_only: bool = field(default=False, metadata=ID_OMIT_DEFAULT)
    experiment: str = "default"
    seed: int = 0
    force: bool = False                # rerun even if results.json is complete
    device: str = "auto"               # auto | cpu | cuda


# HF schedulers that need no extra arguments (cosine_with_min_lr, warmup_stable_decay, ... need
# lr_scheduler_kwargs, reduce_lr_on_plateau an evaluation metric during training; xtf passes neither).
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                 "inverse_sqrt")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")      # a folder name: no "/", no "..", not hidden
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
_NON_EMPTY = (lambda v: v.strip() != "", "a non-empty path")

# Range checks: key → (predicate, human description). Types and Literal choices are checked generically; every
# float must be finite (no inf / nan), which `_check_type` enforces for all keys.
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.limit": (lambda v: v is None or v > 0, "a positive integer or null"),
    "data.eval_limit": (lambda v: v is None or v > 0, "a positive integer or null"),
    "data.dev_size": (lambda v: v >= 0, ">= 0"),
    "data.max_len": (lambda v: v >= 8, ">= 8"),
    "method.epochs_factor": (lambda v: v >= 1, ">= 1"),
    "method.ri.k": (lambda v: v >= 0, ">= 0"),
    "method.ri.query_chunk": (lambda v: v >= 1, ">= 1"),
    "method.kn.threshold": (lambda v: 0 < v < 1, "in (0, 1)"),
    "method.tr.classes": (lambda v: 2 <= v <= 5, "in [2, 5] (Multi-Otsu search time explodes beyond 5)"),
    "method.tr.weight": (lambda v: v > 0, "> 0"),
    "method.reference_lora_r": (lambda v: v >= 1, ">= 1"),
    "method.reference_lora_alpha": (lambda v: v > 0, "> 0"),
    "method.reference_lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "method.reference_lr": (lambda v: 0 < v < 1, "in (0, 1)"),
    "method.reference_warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "method.keep_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "method.reference_warmup": (lambda v: v >= 1, ">= 1"),
    "method.rounds": (lambda v: v >= 1, ">= 1"),
    "method.drop_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "method.ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "method.sstoken.gamma": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "method.sstoken.warmup": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "method.sstoken.ema_alpha": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "method.profit.threshold": (lambda v: 0 < v < 1, "in (0, 1)"),
    "method.stm.threshold": (lambda v: v >= 1, ">= 1 (a perplexity)"),
    "method.da.n": (lambda v: v >= 1, ">= 1"),
    "method.da.temperature": (lambda v: v >= 0, ">= 0"),
    "method.da.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "train.epochs": (lambda v: v > 0, "> 0"),
    "train.lr": (lambda v: 0 < v < 1, "in (0, 1)"),
    "train.batch_size": (lambda v: v >= 1, ">= 1"),
    "train.grad_accum": (lambda v: v >= 1, ">= 1"),
    "train.warmup_ratio": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.lora_r": (lambda v: v >= 1, ">= 1"),
    "train.lora_dropout": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "train.save_steps": (lambda v: v >= 1, ">= 1"),
    "train.save_total_limit": (lambda v: v >= 1, ">= 1 (resuming needs a checkpoint)"),
    "train.logging_steps": (lambda v: v >= 1, ">= 1"),
    "train.lora_alpha": (lambda v: v > 0, "> 0"),
    "train.weight_decay": (lambda v: v >= 0, ">= 0"),
    "train.max_grad_norm": (lambda v: v >= 0, ">= 0 (0 turns clipping off)"),
    "train.lr_scheduler": (lambda v: v in LR_SCHEDULERS, f"one of {list(LR_SCHEDULERS)}"),
    "eval.batch_size": (lambda v: v >= 1, ">= 1"),
    "dist.zero_stage": (lambda v: v in (1, 2, 3), "1, 2 or 3"),
    "dist.timeout_min": (lambda v: v >= 1, ">= 1"),
    "eval.max_new_tokens": (lambda v: v >= 1, ">= 1"),
    "eval.batch_tokens": (lambda v: v >= 0, ">= 0 (0: batches of eval.batch_size prompts)"),
    "eval.n_samples": (lambda v: v >= 1, ">= 1"),
    "eval.temperature": (lambda v: v >= 0, ">= 0"),
    "eval.top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "eval.pass_k": (lambda v: len(v) > 0 and all(k >= 1 for k in v), "a non-empty list of integers >= 1"),
    "eval.sandbox.timeout_s": (lambda v: v > 0, "> 0"),
    "eval.sandbox.cpu_s": (lambda v: v >= 1, ">= 1"),
    "eval.sandbox.memory_mb": (lambda v: v >= 64, ">= 64"),
    "eval.sandbox.max_processes": (lambda v: v >= 1, ">= 1"),
    "eval.sandbox.max_output_kb": (lambda v: v >= 1, ">= 1"),
    "eval.sandbox.parallel": (lambda v: v >= 0, ">= 0"),
    "model.pretrain_steps": (lambda v: v >= 0, ">= 0"),
    "model.hidden_size": (lambda v: v >= 1, ">= 1"),
    "model.num_layers": (lambda v: v >= 1, ">= 1"),
    "model.num_heads": (lambda v: v >= 1, ">= 1"),
    "model.intermediate_size": (lambda v: v >= 1, ">= 1"),
    "model.vocab_size": (lambda v: v >= 300, ">= 300 (the byte alphabet and the special tokens)"),
    "paths.results_dir": _NON_EMPTY,
    "paths.outputs_dir": _NON_EMPTY,
    "paths.cache_dir": _NON_EMPTY,
    "seed": (lambda v: 0 <= v < 2**32, "in [0, 2**32) (numpy and CUDA seeds are 32-bit)"),
    "device": (lambda v: _DEVICE.fullmatch(v) is not None, "auto, cpu, mps, cuda or cuda:<index>"),
    "experiment": (lambda v: _SAFE_NAME.fullmatch(v) is not None,
                   "a folder name under paths.results_dir: letters, digits, '_', '.', '-', not starting with '.' "
                   "(no '/', no '..', not absolute)"),
}
_TINY_MODES = (None, "pretrained", "random")
XTF_ATTRIBUTES = ("ri", "kn", "tr")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return `value` coerced to `tp` (int→float, list→tuple) or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, key)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not allowed; choose one of {list(choices)}")
        return value
    if origin is tuple:
        item = typing.get_args(tp)[0]
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, item) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{key} must be a list of {item.__name__}, got {value!r}")
        return tuple(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if tp is float and isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number")
    if tp in (int, float, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{key}={value!r} must be of type {tp.__name__}")
        return value
    return value


def build_dataclass(cls: type, values: dict, prefix: str) -> Any:
    """Strictly build dataclass `cls` from a plain dict: unknown keys, missing keys, bad types and out-of-range
    values raise ConfigError naming `prefix.key` (with close matches for typos). Nested dataclasses recurse."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(key, fields, n=3)
        hint = f" Did you mean {close}?" if close else ""
        raise ConfigError(f"unknown key '{prefix}{key}'.{hint} Valid keys: {sorted(fields)}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"missing required key '{key}'")
            continue
        tp = hints[name]
        value = values[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping, got {value!r}")
            kwargs[name] = build_dataclass(tp, value, f"{key}.")
            continue
        value = _check_type(value, tp, key)
        check = _RANGES.get(key)
        if check and value is not None and not check[0](value):
            raise ConfigError(f"{key}={value!r} is out of range; must be {check[1]}")
        kwargs[name] = value
    return cls(**kwargs)


def _absolute(path: Optional[str]) -> Optional[str]:
    return None if path in (None, "") else str(Path(os.path.expanduser(path)).resolve())


def validate(cfg: Any) -> RunConfig:
    """Composed Hydra config (DictConfig or dict) → RunConfig. Also validates the task's
    `options` against its own dataclass and makes every path absolute (runs may start in any cwd)."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    raw = {k: v for k, v in raw.items() if k not in ("hydra", "cluster")}  # launcher-only groups
    run = build_dataclass(RunConfig, raw, "")
    if run.model.tiny not in _TINY_MODES:
        raise ConfigError(f"model.tiny={run.model.tiny!r} is not allowed; choose one of {list(_TINY_MODES)}")
    if run.model.tiny is None and not (run.model.hub_id or run.model.path or run.model.package):
        raise ConfigError(f"model '{run.model.name}' needs model.hub_id, model.path or model.package (or model.tiny)")
    if run.model.package and not run.model.gguf_file:
        raise ConfigError(f"model.package={run.model.package!r} needs model.gguf_file: the .gguf file it ships")
    if run.model.hidden_size % run.model.num_heads:
        raise ConfigError("model.hidden_size must be divisible by model.num_heads")
    if run.model.tiny:  # the layer count is known now; for real weights see check_model_fit (before scoring)
        check_ri_layers(run.method.ri.layers, run.model.num_layers, "model.num_layers")
    if run.paths.data_dir not in (None, "") and not Path(os.path.expanduser(run.paths.data_dir)).is_dir():
        raise ConfigError(f"paths.data_dir={run.paths.data_dir} does not exist (or is not a folder); point it "
                          f"(XTF_DATA_DIR) at the local benchmark files, or set it to null to use the Hugging Face "
                          f"Hub")

    from xtf import masking, tasks

    if run.task.name not in tasks.TASKS:
        raise ConfigError(f"task.name={run.task.name!r} is unknown; choose one of {sorted(tasks.TASKS)}")
    task_module = tasks.TASKS[run.task.name]
    task_options = build_dataclass(task_module.Options, run.task.options, "task.options.")
    if hasattr(task_module, "check_options"):
        task_module.check_options(task_options)
    run = _check_data_files(run, task_module)
    if "tr" in masking.scores_needed(run.method) and not tasks.expert_words(task_module, task_options):
        raise ConfigError(f"method={run.method.name} reads task relevance (TR), which needs your domain's words: set "
                          f"task.options.expert_words=[word,...] (e.g. [dose,mg,patient]), or leave TR out: "
                          f"method.attributes=[ri,kn]")
    evaluation = getattr(task_module, "EVALUATION", "exact_match")
    if run.eval.split == "dev" and run.data.dev_size == 0:
        raise ConfigError("eval.split=dev evaluates on the split carved from the training data; set data.dev_size > 0")
    if evaluation == "pass_at_k":
        if run.eval.split == "dev":
            raise ConfigError(f"eval.split=dev is not available for task={run.task.name}: its training data has no "
                              f"executable tests; evaluate on the test split (HumanEval)")
        if run.eval.enabled and max(run.eval.pass_k) > run.eval.n_samples:
            raise ConfigError(f"eval.pass_k={list(run.eval.pass_k)} needs eval.n_samples >= {max(run.eval.pass_k)} "
                              f"(pass@k is estimated from n samples per problem); got eval.n_samples="
                              f"{run.eval.n_samples}")
        if run.eval.enabled and run.eval.code_protocol == "sampled" and run.eval.temperature == 0:
            raise ConfigError("eval.temperature=0 makes the n samples identical, so pass@k>1 means nothing; use a "
                              "temperature > 0 (default 0.8); the greedy pass@1 is reported anyway")
    if run.eval.enabled and run.eval.backend != "hf":
        from xtf.lmeval import check_backend

        check_backend(run.eval.backend, evaluation, run.task.name, run.device)
    if run.method.name not in masking.METHODS:
        raise ConfigError(f"method.name={run.method.name!r} is unknown; choose one of {sorted(masking.METHODS)}")
    if run.method.finetune != (run.method.name != "none"):
        # A record says which method made it: method=xtf without fine-tuning would be the base model filed as xtf.
        raise ConfigError(f"method.finetune={str(run.method.finetune).lower()} is not allowed with "
                          f"method={run.method.name}: only method=none evaluates the base model without "
                          f"fine-tuning (use method=none); to score and mask without fine-tuning use "
                          f"score_only=true (with export.enabled=true for the filtered dataset)")
    run = _check_score_only_and_export(run)
    bad = [a for a in run.method.attributes if a not in XTF_ATTRIBUTES]
    if bad or not run.method.attributes or len(set(run.method.attributes)) != len(run.method.attributes):
        raise ConfigError(f"method.attributes={list(run.method.attributes)} must be a non-empty subset of "
                          f"{list(XTF_ATTRIBUTES)} without repeats")
    if run.method.name == "oracle" and not any(
            v > 0 for k, v in dataclasses.asdict(task_options).items() if k.endswith("_rate")):
        raise ConfigError("method=oracle masks the injected noise, so it needs a task with ground truth: task=synth "
                          "with task.options.filler_rate / distractor_rate / corruption_rate > 0, or task=gsm8k "
                          "with a task.options.noise_<kind>_rate > 0 (filler, offtopic, corruption, duplicate, leak)")
    if run.method.da.n > 1 and run.method.da.temperature == 0:
        raise ConfigError("method.da.n > 1 needs method.da.temperature > 0: greedy paraphrases would be identical")
    if run.method.match is not None and run.method.match not in masking.METHODS:
        raise ConfigError(f"method.match={run.method.match!r} is unknown; choose one of {sorted(masking.METHODS)}")
    from xtf import online

    if run.train.packing and run.method.name in online.ONLINE:
        raise ConfigError(f"train.packing=true is not supported with method={run.method.name}: an online method "
                          f"selects per row of a padded batch (xtf.online); use train.packing=false, or "
                          f"train.group_by_length=true for less padding")
    paths = PathsConfig(**{f.name: _absolute(getattr(run.paths, f.name)) for f in dataclasses.fields(PathsConfig)})
    from xtf import official

    official.warn_deviations(dataclasses.asdict(run), dataclasses.asdict(task_options))  # method.protocol=released
    return dataclasses.replace(
        run,
        task=dataclasses.replace(run.task, options=options_dict(task_options)),
        paths=paths,
    )


def _check_score_only_and_export(run: RunConfig) -> RunConfig:
    """score_only and export against the method; a score-only run evaluates nothing (eval.enabled false, so no test
    split is needed) and its export folder is absolute. An online method (xtf.online) may score only: its export
    holds the scores it selects by, and its card says that the selection itself happens during training."""
    if run.score_only and not run.method.finetune:
        raise ConfigError(f"score_only=true with method={run.method.name}: this method evaluates the base model and "
                          f"scores nothing; choose a method that masks (e.g. method=xtf)")
    if run.export.dir not in (None, "") and not run.export.enabled:
        raise ConfigError(f"export.dir={run.export.dir} is set but export.enabled=false, so nothing would be written "
                          f"there; add export.enabled=true (or drop export.dir)")
    return dataclasses.replace(run, eval=dataclasses.replace(run.eval, enabled=run.eval.enabled and not run.score_only),
                               export=dataclasses.replace(run.export, dir=_absolute(run.export.dir)))


def _check_data_files(run: RunConfig, task_module) -> RunConfig:
    """data.train_file / data.eval_file: read by a task that declares READS_DATA_FILES (task=sft), refused for the
    others (an override that nothing reads is an error); checked readable and made absolute (hub:<id> kept)."""
    files = {k: getattr(run.data, k) for k in ("train_file", "eval_file") if getattr(run.data, k)}
    if not getattr(task_module, "READS_DATA_FILES", False):
        if files:
            key = next(iter(files))
            raise ConfigError(f"data.{key} is read only by task=sft (your own data); task={run.task.name} reads "
                              f"its own files (paths.data_dir)")
        return run
    local = {k: v if v.startswith("hub:") else _absolute(v) for k, v in files.items()}
    run = dataclasses.replace(run, data=dataclasses.replace(run.data, **local))
    task_module.check_data(run.data)
    return run


def check_ri_layers(layers: tuple[int, ...], n_layers: int, source: str) -> None:
    """method.ri.layers must index existing layers (negative counts from the end): [100] on a 4-layer model was
    silently taken modulo 4."""
    bad = [i for i in layers if not -n_layers <= i < n_layers]
    if bad:
        raise ConfigError(f"method.ri.layers={list(layers)} has {bad}, outside the model's {n_layers} layers "
                          f"({source}); allowed: {-n_layers} .. {n_layers - 1}")


def check_model_fit(run: RunConfig, weights: str) -> None:
    """Checks that need the model's own config (real weights: config.json of the resolved folder); run before
    the model is loaded or anything is scored."""
    config_file = Path(weights) / "config.json"
    if run.model.tiny or not run.method.ri.layers or not config_file.is_file():
        return  # tiny models were checked in validate; a Hub id is checked by the model load itself
    model_config = json.loads(config_file.read_text())
    text = model_config.get("text_config") or model_config  # multimodal configs nest the language model's
    n_layers = text.get("num_hidden_layers") or model_config.get("num_hidden_layers")
    if isinstance(n_layers, int):
        check_ri_layers(run.method.ri.layers, n_layers, f"num_hidden_layers in {config_file}")



def options_dict(options: Any) -> dict:
    """dataclasses.asdict of a task's Options, without the ID_OMIT_DEFAULT fields that hold their default
    (Options(**options_dict(o)) == o)."""
    out = dataclasses.asdict(options)
    for f in dataclasses.fields(options):
        if f.metadata.get("id_omit_default") and out[f.name] == f.default:
            del out[f.name]
    return out


def task_options(run: RunConfig) -> Any:
    """The task's validated Options dataclass."""
    from xtf import tasks

    return tasks.TASKS[run.task.name].Options(**run.task.options)


def schema_defaults(cls: type = RunConfig) -> dict:
    """Every key of the schema with its default ("???" where required), as plain YAML-able values."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            value = schema_defaults(hints[f.name]) if dataclasses.is_dataclass(hints[f.name]) else "???"
        if dataclasses.is_dataclass(value):
            value = schema_defaults(type(value))
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def register_schema() -> None:
    """Register `xtf_schema` (all keys with their defaults) with Hydra, first in conf/config.yaml's defaults,
    so that every schema key can be overridden on the command line without a `+`. Call before composing."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="xtf_schema", node=schema_defaults())
