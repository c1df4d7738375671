"""The sections of the run configuration (xtf.config.RunConfig): one frozen dataclass per top-level key (model,
task, data, method, train, eval and its sandbox, paths, wandb, dist, export), with each key's type, default and
meaning. Schema only: xtf.config builds and range-checks them, xtf.validate checks them against the tasks and
methods. Importable from xtf.config too (`from xtf.config import ModelConfig`).

A method's own sub-section (method.stm.*, method.ri.*, ...) lives in its module of xtf/methods, beside its rule
(STMConfig in xtf/methods/stm.py); MethodConfig below imports it from there. The method modules never import the
schema back (they read a MethodConfig by its attributes), so the schema sits above them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from xtf.methods.da import DAConfig
from xtf.methods.profit import ProFitConfig
from xtf.methods.sstoken import SSTokenConfig
from xtf.methods.stm import STMConfig
from xtf.methods.xtf import KNConfig, RIConfig, TRConfig

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
    # The field's other token-selection methods (xtf/methods: slm, sstoken, profit, dft, stm, da); ssToken's ρ is
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
    # > 0: each micro-batch runs as pieces of at most this many padded positions (rows × the piece's longest row;
    # rows sorted by length, a longer row alone), each piece's backward before the next's forward: activation
    # memory bounded by the budget, less padding, smaller working sets (2 CPU cores, one step of 8 SmolLM2 rows:
    # 9 s in pieces of 512, 17 s whole, 23 s with activation checkpointing: experiments/bench_steps.py). Every
    # piece's loss is divided by the whole micro-batch's denominator, so the step's loss and gradient are the same
    # to float tolerance: not in the run id (tests/test_micro_batch.py). Offline methods on one process only
    # (xtf.validate says why). 0: off.
    micro_batch_tokens: int = 0


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
    # Generation speed (xtf.batching.token_budget_batches; README "Evaluation speed"). batch_tokens > 0: batches
    # cut by a token budget (sequences x (longest prompt + max_new_tokens)) instead of batch_size prompts; greedy
    # outputs are the same either way, so it is never in a greedy task's run id. backend=vllm: lm-eval's vLLM model
    # (a CUDA GPU and `pip install vllm`; lm-eval tasks only), checked by xtf.backends.check_backend.
    batch_tokens: int = field(default=0, metadata=ID_OMIT_DEFAULT)
    backend: Literal["hf", "vllm"] = field(default="hf", metadata=ID_OMIT_DEFAULT)
    # The forward passes without generation (the methods' scoring, the answer NLL) in batches of at most this many
    # padded positions (rows sorted by length, xtf.scoring._batches) instead of eval.batch_size rows. On 2 CPU cores
    # XTF's scoring of 32 SmolLM2 rows was 1.3x as fast in batches of 512 positions as of 16 rows (less padding,
    # working sets that fit the cache; experiments/bench_steps.py). The same values to float rounding: never in the
    # run id. 0: off.
    forward_batch_tokens: int = field(default=0, metadata=ID_OMIT_DEFAULT)
    # false: the task's benchmark protocol (lm-eval, HumanEval, exact match) is not run; the measure is the reference
    # answers' NLL alone (needs eval.answer_nll and test rows with answers). The quickstart's choice: a 135M model
    # answers about 1 in 40 GSM8K questions, so 40 generations cannot separate two methods, and they took 45-55 s
    # of each run's 65-75 s evaluation (conf/preset/quickstart.yaml). In the run id when false.
    benchmark: bool = field(default=True, metadata=ID_OMIT_DEFAULT)


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
