"""Overrides that the chosen configuration never reads are refused, naming the key and why, before any work.

    python run.py model=tiny model.path=/w            # ConfigError: model.path=/w is not read: model=tiny builds ...
    python run.py method=normal method.ri.k=1         # ConfigError: method.ri.k=1 is not read by method=normal ...
    python run.py method=none train.lr=1e-3           # ConfigError: train.lr=1e-3 is not read: method=none ...

Without this, such a run validates, computes something else than asked, and its record (config and run id) claims
the override. Only keys written on the command line are judged (run.py, `xtf`, each job of a -m sweep): a config
file of the chosen groups may carry keys its run does not read (method=random holds XTF's settings for `match`),
and an experiment's shared overrides (its `base`, `stand_in.overrides`) apply to the cells that read them
(experiments/table2.yaml: method.reference_warmup for the TC and SLM cells); a cell's own overrides are checked by
tests/test_experiment.py.
A key read under some settings is judged under the run's own (method.ri.* is read by XTF only when "ri" is in
method.attributes). The method keys come from the method registry (xtf.methods.method_keys).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Optional

from xtf import methods, tasks
from xtf.config import RunConfig
from xtf.errors import ConfigError

Rule = Callable[[RunConfig], Optional[str]]  # the reason the keys are not read under this config, or None

_TINY_ARCH = ("hidden_size", "num_layers", "num_heads", "intermediate_size", "vocab_size", "pretrain_steps")
_EVAL_GENERATION = ("max_new_tokens", "answer_nll", "batch_tokens", "backend")
_EVAL_CODE = ("n_samples", "temperature", "top_p", "pass_k", "code_protocol", "sandbox")


def _tiny_builds(r: RunConfig) -> str | None:
    return (f"model={r.model.name} builds its weights (model.tiny={r.model.tiny}); load weights with a real model "
            "config instead (e.g. model=smollm2_135m model.path=...)") if r.model.tiny else None


def _real_weights(r: RunConfig) -> str | None:
    return None if r.model.tiny else f"they shape the built tiny models only; model={r.model.name} loads weights"


def _path_wins(r: RunConfig) -> str | None:
    return f"model.path={r.model.path} is loaded instead" if r.model.path and not r.model.tiny else None


def _no_training(r: RunConfig) -> str | None:
    if "ref_nll" in methods.scores_needed(r.method):
        return None  # the reference model (TC, SLM) is trained with the train settings, even under score_only
    if r.score_only:
        return "score_only=true fine-tunes nothing"
    if not r.method.finetune:
        return f"method={r.method.name} evaluates the base model (method.finetune=false)"
    return None


def _full_training(r: RunConfig) -> str | None:
    return "train.mode=full trains every weight, no LoRA adapter" if r.train.mode == "full" else None


def _no_evaluation(r: RunConfig) -> str | None:
    if r.score_only:
        return "score_only=true evaluates nothing"
    return None if r.eval.enabled else "eval.enabled=false"


def _not_code(r: RunConfig) -> str | None:
    evaluation = getattr(tasks.TASKS.get(r.task.name), "EVALUATION", None)
    return None if evaluation == "pass_at_k" else (
        f"they set HumanEval's sampling and sandbox (task=code); task={r.task.name} is evaluated by {evaluation}")


def _not_strategy(strategy: str) -> Rule:
    return lambda r: None if r.dist.strategy == strategy else f"it applies to dist.strategy={strategy} only"


# (keys, rule): a key is judged by every rule whose keys hold it or a section above it.
RULES: list[tuple[tuple[str, ...], Rule]] = [
    (("model.path", "model.hub_id", "model.package", "model.gguf_file"), _tiny_builds),
    (("model.hub_id",), _path_wins),
    (tuple(f"model.{k}" for k in _TINY_ARCH), _real_weights),
    (("train",), _no_training),
    (("train.lora_r", "train.lora_alpha", "train.lora_dropout"), _full_training),
    (tuple(f"eval.{k}" for k in _EVAL_GENERATION + _EVAL_CODE), _no_evaluation),
    (tuple(f"eval.{k}" for k in _EVAL_CODE), _not_code),
    (("dist.zero_stage",), _not_strategy("deepspeed")),
    (("dist.fsdp_offload",), _not_strategy("fsdp")),
    (("export.dir",), lambda r: None if r.export.enabled else "export.enabled=false"),
    (("wandb.project", "wandb.entity"), lambda r: "wandb.mode=disabled" if r.wandb.mode == "disabled" else None),
]


def _under(key: str, prefix: str) -> bool:
    return key == prefix or key.startswith(prefix + ".")


def unread_reason(key: str, run: RunConfig) -> str | None:
    """Why `key` (dotted, e.g. "method.ri.k") is not read by `run`, or None when it is (or is not judged here)."""
    if _under(key, "method") and key != "method":
        field = key.split(".")[1]
        read = methods.method_keys(run.method)
        if field not in read:
            return (f"it is not read by method={run.method.name} (which reads method.{{{', '.join(sorted(read))}}})"
                    if read else f"method={run.method.name} reads no method setting")
        return None
    for keys, rule in RULES:
        if any(_under(key, k) for k in keys):
            reason = rule(run)
            if reason:
                return reason
    return None


def written_keys(overrides: list[str]) -> list[tuple[str, str]]:
    """(key, override text) of every key=value override (also +key / ++key), in order; group choices
    (method=xtf), deletions (~key) and hydra.* are not keys a run reads."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    out, parser = [], OverridesParser.create()
    for text in overrides:
        try:
            (o,) = parser.parse_overrides([text])
        except HydraException:
            continue  # not an override (Hydra has parsed the command line already: nothing is lost)
        key = o.key_or_group
        if o.type.name in ("CHANGE", "ADD", "FORCE_ADD") and o.package is None and "." in key \
                and not key.startswith("hydra"):
            out.append((key, text))
    return out


def _plain(argv: list[str]) -> list[str]:
    """The overrides of a command line: its options (-m, --cfg job, -cn x) left out."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a.startswith("-"):
            skip = a in ("-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "-c", "--cfg",
                         "-p", "--package")
        else:
            out.append(a)
    return out


def check_overrides_read(run: RunConfig, overrides: list[str], command_line: list[str] | None = None) -> None:
    """Raise ConfigError naming every override of `overrides` (the job's) that `run` does not read, and why; with
    `command_line` (sys.argv[1:]), only the keys written there are judged (a sweep's value `k=1,2` arrives as k=1)."""
    judged = None if command_line is None else {key for key, _ in written_keys(_plain(command_line))}
    problems = [f"{text}: {reason}" for key, text in written_keys(overrides)
                if (judged is None or key in judged) and (reason := unread_reason(key, run))]
    if problems:
        raise ConfigError("overrides this run would not read (its record would claim them): "
                          + "; ".join(problems) + ". Remove them, or choose the configuration that reads them")
