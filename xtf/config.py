"""Typed run configuration: the schema, and its strict builder.

Hydra composes YAML (conf/); `build_dataclass` turns the composed values into a frozen `RunConfig` of dataclasses
(the sections: xtf/config_sections.py), failing *before any work* on an unknown key, a wrong type or an
out-of-range value, and naming the key and the valid choices. Task-specific knobs live in the task module's own
`Options` dataclass (xtf/tasks/<name>.py), validated the same way. This module is the schema only and imports no
implementation; the checks against the tasks and methods are xtf.validate's:

    from xtf.validate import validate
    run_cfg = validate(hydra_cfg)
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from xtf.config_sections import (  # noqa: F401 - re-exported: `from xtf.config import ModelConfig` etc.
    ID_OMIT_DEFAULT,
    DataConfig,
    DistConfig,
    EvalConfig,
    ExportConfig,
    MethodConfig,
    ModelConfig,
    PathsConfig,
    SandboxConfig,
    TaskConfig,
    TrainConfig,
    WandbConfig,
)
from xtf.errors import ConfigError  # noqa: F401 - re-exported: callers catch it from here


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
    "eval.forward_batch_tokens": (lambda v: v >= 0, ">= 0 (0: batches of eval.batch_size rows)"),
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
TINY_MODES = (None, "pretrained", "random")
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


def options_dict(options: Any) -> dict:
    """dataclasses.asdict of a task's Options, without the ID_OMIT_DEFAULT fields that hold their default
    (Options(**options_dict(o)) == o)."""
    out = dataclasses.asdict(options)
    for f in dataclasses.fields(options):
        if f.metadata.get("id_omit_default") and out[f.name] == f.default:
            del out[f.name]
    return out


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
