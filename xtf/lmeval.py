"""Evaluation of GSM8K, MedQA and PubMedQA with lm-eval (EleutherAI lm-evaluation-harness), zero-shot, on the
fine-tuned model held in memory.

    metrics, predictions, protocol = evaluate_lm_eval(model, tokenizer, tasks.TASKS["gsm8k"], test_examples,
                                                      cfg.eval, cfg.model.chat_template, work_dir, cfg.seed)

How a run goes (one data-loading path: the rows the rest of the harness uses):
  1. `export_rows`: the task's test examples (already loaded by xtf.tasks.<task>.load, local files or the Hub,
     with checksums) → `<work_dir>/lm_eval/docs.jsonl`, one row per example: id, prompt (the exact prompt
     the model was fine-tuned on), target (gold, normalised like the extractions) and, for multiple choice,
     choices + label.
  2. `write_task_yamls`: one small YAML per lm-eval task in `<work_dir>/lm_eval/tasks/`, which `include`s the
     versioned task YAML in eval/ and sets `dataset_kwargs.data_files` to the absolute path of that JSONL.
  3. `run_tasks`: TaskManager indexes only that folder (include_defaults=False: indexing lm-eval's ~15k
     built-in tasks costs 10-20 s), the tasks are loaded, max_gen_toks is set from eval.max_new_tokens, and
     lm_eval.evaluator.evaluate runs them on any lm-eval `LM` (HFLM around the model here; a scripted LM in
     tests). Metrics come from lm-eval's aggregation; predictions from its logged samples, joined back to our
     example ids.

The answer extraction used by the YAML filters is the task's own EXTRACTORS (the same functions as the
legacy exact-match path, xtf.evaluate), followed by xtf.generation.normalise (= xtf.evaluate.normalise) on both
prediction and gold. The HFLM around the in-memory model is xtf.lmeval_hf.make_lm.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import yaml

from xtf.cache import sha256_file
from xtf.generation import normalise
from xtf.lmeval_hf import make_lm
from xtf.tasks import TASKS

EVAL_DIR = Path(__file__).resolve().parents[1] / "eval"  # the versioned task YAMLs
LMEVAL_VERSION = 1  # bump when export_rows, the request set-up or the metric mapping changes behaviour
INVALID = "[invalid]"  # what a filter returns when nothing can be extracted (never equals a gold answer)


# ---------------------------------------------------------------------------------------------- YAML filters
# Referenced from eval/*.yaml as `filter_fn: !function xtf.lmeval.<name>` (lm-eval imports this module by
# name). lm-eval passes `resps` as one list of generations per document and expects the same shape back.

def _extraction_filter(task_name: str, extractor: str):
    def apply(resps, docs):
        extract = TASKS[task_name].EXTRACTORS[extractor]
        return [[normalise(extract(r)) or INVALID for r in gens] for gens in resps]

    apply.__name__ = f"{task_name}_{extractor}"
    return apply


gsm8k_strict = _extraction_filter("gsm8k", "strict")
gsm8k_flexible = _extraction_filter("gsm8k", "flexible")
medqa_letter = _extraction_filter("medqa", "letter")
pubmedqa_decision = _extraction_filter("pubmedqa", "decision")


# ----------------------------------------------------------------------------------------------- run set-up

def option_choices(options: dict[str, str]) -> list[str]:
    """The multiple-choice continuations: the full fine-tuning answer for each option, " B. <text>" (the format
    of xtf.tasks.medqa.convert's response), leading space included (the YAML's target_delimiter is "")."""
    return [f" {letter}. {text.strip()}" for letter, text in options.items()]


def export_rows(examples: list[dict]) -> list[dict]:
    """lm-eval documents for `examples`: id, prompt, target (normalised gold) [, choices, label]."""
    if not examples:
        raise ValueError("no test examples to evaluate (check data.eval_limit and the test split)")
    rows = []
    for ex in examples:
        row = {"id": str(ex["id"]), "prompt": ex["prompt"], "target": normalise(ex["answer"])}
        if "options" in ex:
            letters = list(ex["options"])
            if ex["answer"] not in letters:
                raise ValueError(f"example {ex['id']}: answer {ex['answer']!r} is not one of the options {letters}")
            row["choices"] = option_choices(ex["options"])
            row["label"] = letters.index(ex["answer"])
        rows.append(row)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError("test example ids are not unique; predictions could not be joined back to examples")
    return rows


def write_task_yamls(task_names: tuple[str, ...], rows: list[dict], work_dir: str | Path) -> Path:
    """Write the rows and one run-time YAML per task under `<work_dir>/lm_eval/`; returns the tasks folder."""
    root = Path(work_dir).resolve() / "lm_eval"
    tasks_dir = root / "tasks"
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for old in tasks_dir.glob("*.yaml"):  # a rerun in the same folder must not index stale tasks
        old.unlink()
    data = root / "docs.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    for name in task_names:
        base = EVAL_DIR / f"{name}.yaml"
        if not base.is_file():
            raise FileNotFoundError(f"lm-eval task YAML {base} is missing (task names come from LM_EVAL_METRICS)")
        spec = {
            "include": str(base),
            # `datasets` caches the parsed JSONL next to it, not in ~/.cache (runs stay self-contained).
            "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(root / "hf_datasets")},
        }
        (tasks_dir / f"{name}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    return tasks_dir


def _task_protocol(task, yaml_path: Path) -> dict:
    """The fields of a loaded lm-eval task that define how it scores (not where its data lives)."""
    cfg = task.config
    out = {
        "version": (cfg.metadata or {}).get("version"),
        "output_type": task.OUTPUT_TYPE,
        "num_fewshot": cfg.num_fewshot,
        "doc_to_text": cfg.doc_to_text,
        "target_delimiter": cfg.target_delimiter,
        "metrics": [m["metric"] for m in cfg.metric_list or []],
        "filters": [f["name"] for f in cfg.filter_list or []] or ["none"],
        "yaml_sha256": sha256_file(yaml_path),
    }
    if task.OUTPUT_TYPE == "generate_until":
        out["generation_kwargs"] = dict(cfg.generation_kwargs)
    return out


# --------------------------------------------------------------------------------------------------- running

def run_tasks(lm, task_module, examples: list[dict], eval_cfg, chat_template: bool, work_dir: str | Path,
              seed: int) -> tuple[dict, list[dict], dict]:
    """Run the task module's lm-eval tasks (LM_EVAL_METRICS) on `examples` with any lm-eval `LM`;
    returns (metrics, predictions, protocol)."""
    import lm_eval  # lm-eval takes seconds to import: only when a task runs on it
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    metric_map: dict[str, tuple[str, str]] = task_module.LM_EVAL_METRICS
    task_names: tuple[str, ...] = task_module.LM_EVAL_TASKS
    if {t for t, _ in metric_map.values()} != set(task_names):
        raise ValueError(f"{task_module.__name__}: LM_EVAL_METRICS names tasks other than LM_EVAL_TASKS {task_names}")
    rows = export_rows(examples)
    tasks_dir = write_task_yamls(task_names, rows, work_dir)

    try:
        # Index only our run-time YAMLs: with the defaults lm-eval would scan its ~15k built-in tasks (10-20 s).
        loaded = TaskManager(include_path=str(tasks_dir), include_defaults=False).load(list(task_names))
        for task in loaded["tasks"].values():
            if task.OUTPUT_TYPE == "generate_until":
                task.set_config(key="generation_kwargs", value={"max_gen_toks": eval_cfg.max_new_tokens},
                                update=True)
            task.set_fewshot_seed(seed=seed)  # zero-shot: no effect, set as simple_evaluate does
        # The seeds simple_evaluate sets. evaluate() is called directly because simple_evaluate also collects
        # torch's environment report through subprocesses (~2 s a call), which xtf's provenance already covers.
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        # bootstrap_iters=0: no stderr (every metric is a mean; the spread is measured over seeds instead).
        out = evaluate(lm=lm, task_dict=loaded, log_samples=True, bootstrap_iters=0,
                       apply_chat_template=bool(chat_template), fewshot_as_multiturn=True)
    finally:
        # `datasets` keys its parsed-JSONL cache by path and mtime: never let a later run in this folder reuse it.
        shutil.rmtree(tasks_dir.parent / "hf_datasets", ignore_errors=True)

    if out is None:  # another rank of lm-eval's data-parallel mode: the results were gathered on rank 0
        return {}, [], {"name": "lm_eval", "gathered_on": "rank 0"}
    metrics = {key: float(out["results"][task][metric]) for key, (task, metric) in metric_map.items()}
    metrics["accuracy"] = metrics[next(iter(metric_map))]  # the primary metric: the first of LM_EVAL_METRICS
    metrics["n_eval"] = len(examples)
    predictions = join_predictions(examples, out["samples"], metric_map)
    protocol = {
        "name": "lm_eval",
        "version": LMEVAL_VERSION,
        "lm_eval_version": lm_eval.__version__,
        "extract_version": task_module.EXTRACT_VERSION,
        "metrics": {key: f"{task}:{metric}" for key, (task, metric) in metric_map.items()},
        "primary": next(iter(metric_map)),
        "tasks": {name: _task_protocol(loaded["tasks"][name], EVAL_DIR / f"{name}.yaml") for name in task_names},
        "shots": 0,
        "decoding": "greedy",
        "max_new_tokens": eval_cfg.max_new_tokens,
        "chat_template": bool(chat_template),
        "seed": seed,
        "n_eval": len(examples),
        "docs_sha256": sha256_file(tasks_dir.parent / "docs.jsonl"),
    }
    return metrics, predictions, protocol


def join_predictions(examples: list[dict], samples: dict[str, list[dict]],
                     metric_map: dict[str, tuple[str, str]]) -> list[dict]:
    """One record per example, in example order: id, gold, the generation and/or the chosen option, and per
    metric key (`accuracy_<name>`) the extracted value and correctness, from lm-eval's logged samples."""
    by_id = {str(ex["id"]): {"id": ex["id"], "gold": ex["answer"]} for ex in examples}
    options = {str(ex["id"]): list(ex.get("options", ())) for ex in examples}
    for key, (task, metric_filter) in metric_map.items():
        metric, filt = metric_filter.split(",")
        name = key.removeprefix("accuracy_")
        seen = set()
        for s in samples[task]:
            if s["filter"] != filt:
                continue
            doc_id = str(s["doc"]["id"])
            pred = by_id[doc_id]
            seen.add(doc_id)
            pred[f"correct_{name}"] = bool(s[metric])
            if isinstance(s["resps"][0][0], str):  # generate_until: one request, one generation
                pred["generation"] = s["resps"][0][0]
                pred[f"extracted_{name}"] = s["filtered_resps"][0]
            else:  # multiple_choice: one (loglikelihood, is_greedy) per choice
                lls = [float(r[0][0]) for r in s["resps"]]
                pred["loglikelihoods"] = lls
                scores = lls
                if metric == "acc_norm":  # lm-eval's acc_norm: log-likelihood per character of the choice
                    scores = [ll / len(c) for ll, c in zip(lls, s["doc"]["choices"])]
                pred[f"chosen_{name}"] = options[doc_id][max(range(len(scores)), key=scores.__getitem__)]
        if seen != set(by_id):
            raise RuntimeError(f"lm-eval task {task} returned {len(seen)} of {len(by_id)} examples for {key}")
    return [by_id[str(ex["id"])] for ex in examples]


def make_vllm_lm(model, tokenizer, work_dir: str | Path, seed: int):
    """lm-eval's vLLM model over the in-memory model: its weights are written to <work_dir>/vllm_model (a LoRA
    adapter merged in for the write and taken out again) and the HF copy moves to the CPU while vLLM holds the GPU
    (evaluate_lm_eval moves it back)."""
    from lm_eval.models.vllm_causallms import VLLM  # needs the optional vllm package (eval.backend=vllm)

    folder = Path(work_dir).resolve() / "vllm_model"
    merged = hasattr(model, "merge_adapter")  # a PEFT model: write base + adapter as one set of weights
    if merged:
        model.merge_adapter()
    try:
        base = model.get_base_model() if merged else model
        base.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    finally:
        if merged:
            model.unmerge_adapter()
    model.to("cpu")
    return VLLM(pretrained=str(folder), dtype="auto", seed=seed, max_model_len=None)


def evaluate_lm_eval(model, tokenizer, task_module, examples: list[dict], eval_cfg, chat_template: bool,
                     work_dir: str | Path, seed: int) -> tuple[dict, list[dict], dict]:
    """(metrics, predictions, protocol) of `examples` under the task's lm-eval protocol, on eval.backend."""
    if getattr(eval_cfg, "backend", "hf") == "vllm":
        device = next(model.parameters()).device
        try:
            lm = make_vllm_lm(model, tokenizer, work_dir, seed)
            metrics, predictions, protocol = run_tasks(lm, task_module, examples, eval_cfg, chat_template,
                                                       work_dir, seed)
        finally:
            model.to(device)
        return metrics, predictions, {**protocol, "backend": "vllm"}
    lm = make_lm(model, tokenizer, eval_cfg.batch_size, eval_cfg.batch_tokens)
    return run_tasks(lm, task_module, examples, eval_cfg, chat_template, work_dir, seed)
