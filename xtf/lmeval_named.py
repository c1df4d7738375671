"""lm-eval tasks named in the config, beside the answer NLL of your own data (task=sft):

    xtf task=sft data.train_file=my.jsonl task.options.lm_eval_tasks=[arc_easy,hellaswag]
    xtf task=sft ... task.options.lm_eval_tasks=[my_task] task.options.lm_eval_include=my_tasks/   # your YAMLs

lm-eval's own task definitions, run as lm-eval runs them (zero-shot unless a task says otherwise, its own
metrics and filters) on the fine-tuned model held in memory (xtf.lmeval_hf.make_lm). A built-in task reads its data
set from the Hugging Face Hub (or the datasets cache); `lm_eval_include` adds a folder of your own task YAMLs
(lm-eval's `include_path`), which may read local files. Metrics are recorded as "lm_eval/<task>/<metric>".
"""

from __future__ import annotations

import random
from typing import Optional

import numpy as np
import torch

from xtf.lmeval_hf import make_lm


def metric_entries(results: dict) -> dict[str, float]:
    """{"lm_eval/<task>/<metric,filter>": value} of lm-eval's `results`, without the standard errors and aliases."""
    out = {}
    for task, values in sorted(results.items()):
        for key, value in sorted(values.items()):
            if "_stderr" in key or key == "alias" or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out[f"lm_eval/{task}/{key}"] = float(value)
    return out


def run_named_tasks(model, tokenizer, names: tuple[str, ...], include: Optional[str], eval_cfg,
                    chat_template: bool, seed: int) -> tuple[dict, dict]:
    """(metrics, protocol) of lm-eval's tasks `names` (plus the YAMLs of the folder `include`)."""
    import lm_eval  # lm-eval takes seconds to import: only when a task runs on it
    from lm_eval.evaluator import evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include) if include else TaskManager()  # names checked by xtf.tasks.sft
    loaded = manager.load(list(names))
    for task in loaded["tasks"].values():
        if task.OUTPUT_TYPE == "generate_until":
            task.set_config(key="generation_kwargs", value={"max_gen_toks": eval_cfg.max_new_tokens}, update=True)
        task.set_fewshot_seed(seed=seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    lm = make_lm(model, tokenizer, eval_cfg.batch_size, eval_cfg.batch_tokens)
    out = evaluate(lm=lm, task_dict=loaded, bootstrap_iters=0, apply_chat_template=bool(chat_template),
                   fewshot_as_multiturn=bool(chat_template))
    if out is None:  # another rank of lm-eval's data-parallel mode: gathered on rank 0
        return {}, {"gathered_on": "rank 0"}
    protocol = {"tasks": list(names), "include": include, "lm_eval_version": lm_eval.__version__,
                "versions": {k: v for k, v in (out.get("versions") or {}).items()},
                "n_samples": {k: v.get("effective", v.get("original")) if isinstance(v, dict) else v
                              for k, v in (out.get("n-samples") or {}).items()},
                "chat_template": bool(chat_template), "max_new_tokens": eval_cfg.max_new_tokens, "seed": seed}
    return metric_entries(out["results"]), protocol
