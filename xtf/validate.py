"""The run configuration, validated: the schema's strict build (xtf.config) plus the checks that need the
implementations — the task registry and the task's own Options (xtf.tasks), the method registry (xtf.methods:
each method's own checks are its entry's `check`), the evaluation backends (xtf.backends) and the released
protocol (xtf.official). Above all of them in the import graph, so none of them imports the config builder back.

    from xtf.validate import validate
    run_cfg = validate(hydra_cfg)      # fails *before any work*, naming the key and what is allowed
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

from omegaconf import OmegaConf

from xtf import methods, official, tasks
from xtf.backends import check_backend
from xtf.config import TINY_MODES, XTF_ATTRIBUTES, PathsConfig, RunConfig, build_dataclass, options_dict
from xtf.errors import ConfigError


def _absolute(path: Optional[str]) -> Optional[str]:
    return None if path in (None, "") else str(Path(os.path.expanduser(path)).resolve())


def validate(cfg: Any) -> RunConfig:
    """Composed Hydra config (DictConfig or dict) → RunConfig. Also validates the task's
    `options` against its own dataclass and makes every path absolute (runs may start in any cwd)."""
    raw = OmegaConf.to_container(cfg, resolve=True) if not isinstance(cfg, dict) else cfg
    raw = {k: v for k, v in raw.items() if k not in ("hydra", "cluster")}  # launcher-only groups
    run = build_dataclass(RunConfig, raw, "")
    _check_model(run)
    if run.paths.data_dir not in (None, "") and not Path(os.path.expanduser(run.paths.data_dir)).is_dir():
        raise ConfigError(f"paths.data_dir={run.paths.data_dir} does not exist (or is not a folder); point it "
                          f"(XTF_DATA_DIR) at the local benchmark files, or set it to null to use the Hugging Face "
                          f"Hub")
    run, task_module, task_options = _check_task(run)
    _check_eval(run, task_module)
    run = _check_method(run, task_options)
    paths = PathsConfig(**{f.name: _absolute(getattr(run.paths, f.name)) for f in dataclasses.fields(PathsConfig)})
    official.warn_deviations(dataclasses.asdict(run), dataclasses.asdict(task_options))  # method.protocol=released
    return dataclasses.replace(
        run,
        task=dataclasses.replace(run.task, options=options_dict(task_options)),
        paths=paths,
    )


def _check_model(run: RunConfig) -> None:
    if run.model.tiny not in TINY_MODES:
        raise ConfigError(f"model.tiny={run.model.tiny!r} is not allowed; choose one of {list(TINY_MODES)}")
    if run.model.tiny is None and not (run.model.hub_id or run.model.path or run.model.package):
        raise ConfigError(f"model '{run.model.name}' needs model.hub_id, model.path or model.package (or model.tiny)")
    if run.model.package and not run.model.gguf_file:
        raise ConfigError(f"model.package={run.model.package!r} needs model.gguf_file: the .gguf file it ships")
    if run.model.hidden_size % run.model.num_heads:
        raise ConfigError("model.hidden_size must be divisible by model.num_heads")
    if run.model.tiny:  # the layer count is known now; for real weights see check_model_fit (before scoring)
        check_ri_layers(run.method.ri.layers, run.model.num_layers, "model.num_layers")


def _check_task(run: RunConfig) -> tuple[RunConfig, Any, Any]:
    """The task's name and its Options; your data's files; TR's expert words. (run, task module, its Options)."""
    if run.task.name not in tasks.TASKS:
        raise ConfigError(f"task.name={run.task.name!r} is unknown; choose one of {sorted(tasks.TASKS)}")
    task_module = tasks.TASKS[run.task.name]
    task_options = build_dataclass(task_module.Options, run.task.options, "task.options.")
    if hasattr(task_module, "check_options"):
        task_module.check_options(task_options)
    run = _check_data_files(run, task_module)
    if "tr" in methods.scores_needed(run.method) and not tasks.expert_words(task_module, task_options):
        raise ConfigError(f"method={run.method.name} reads task relevance (TR), which needs your domain's words: set "
                          f"task.options.expert_words=[word,...] (e.g. [dose,mg,patient]), or leave TR out: "
                          f"method.attributes=[ri,kn]")
    return run, task_module, task_options


def _check_eval(run: RunConfig, task_module) -> None:
    """The evaluation split, pass@k's sampling (code tasks) and the generation backend against the task."""
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
        check_backend(run.eval.backend, evaluation, run.task.name, run.device)
    if run.eval.enabled and not run.eval.benchmark:  # the reference answers' NLL alone: nothing else may be asked
        unused = [key for key, asked in (("eval.answer_nll=false", not run.eval.answer_nll),
                                         (f"eval.backend={run.eval.backend}", run.eval.backend != "hf"),
                                         ("task.options.lm_eval_tasks", bool(run.task.options.get("lm_eval_tasks"))))
                  if asked]
        if unused:
            raise ConfigError(f"eval.benchmark=false measures the reference answers' NLL alone, so {', '.join(unused)} "
                              f"would do nothing: drop {'it' if len(unused) == 1 else 'them'}, or set "
                              f"eval.benchmark=true (eval.enabled=false evaluates nothing)")


def _check_method(run: RunConfig, task_options) -> RunConfig:
    """The method against its registry, fine-tuning, score_only/export, its attributes and its own checks."""
    spec = methods.get(run.method.name)  # ConfigError naming the registered methods
    if run.method.finetune != spec.finetunes:
        # A record says which method made it: method=xtf without fine-tuning would be the base model filed as xtf.
        base = [n for n, m in methods.METHODS.items() if not m.finetunes]
        raise ConfigError(f"method.finetune={str(run.method.finetune).lower()} is not allowed with "
                          f"method={run.method.name}: only method={'/'.join(base)} evaluates the base model without "
                          f"fine-tuning; to score and mask without fine-tuning use score_only=true (with "
                          f"export.enabled=true for the filtered dataset)")
    run = _check_score_only_and_export(run)
    bad = [a for a in run.method.attributes if a not in XTF_ATTRIBUTES]
    if bad or not run.method.attributes or len(set(run.method.attributes)) != len(run.method.attributes):
        raise ConfigError(f"method.attributes={list(run.method.attributes)} must be a non-empty subset of "
                          f"{list(XTF_ATTRIBUTES)} without repeats")
    spec.check(run, task_options)
    if run.train.packing and spec.kind == "online":
        raise ConfigError(f"train.packing=true is not supported with method={run.method.name}: an online method "
                          f"selects per row of a padded batch (xtf.online); use train.packing=false, or "
                          f"train.group_by_length=true for less padding")
    _check_micro_batch_tokens(run, spec)
    return run


def _check_micro_batch_tokens(run: RunConfig, spec) -> None:
    """train.micro_batch_tokens cuts a padded micro-batch of an offline method into pieces (xtf.train)."""
    budget = run.train.micro_batch_tokens
    if not budget:
        return
    why = ("it is a number of padded positions, > 0 (0: off)" if budget < 0 else
           "packed rows (train.packing=true) have no padding to cut" if run.train.packing else
           f"an online method (method={run.method.name}) selects tokens per micro-batch" if spec.kind == "online" else
           f"dist.strategy={run.dist.strategy} synchronises gradients at each backward" if run.dist.strategy != "none"
           else None)
    if why:
        raise ConfigError(f"train.micro_batch_tokens={budget} is not allowed here: {why}; set "
                          f"train.micro_batch_tokens=0")


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
