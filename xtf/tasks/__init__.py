"""Task registry: a plain dict from the `task.name` config value to the module that implements it.

Each task module defines:
    Options                       dataclass of the task's own knobs (validated from `task.options`)
    load(opts, data, paths)       → TaskData (xtf.tasks.common) with "train" and "test" splits; deterministic
    EXTRACTORS                    {name: fn(generated_text) -> answer str | None}; the first is the primary metric
    EXTRACT_VERSION               bumped whenever an extractor changes behaviour (recorded in results)
    EXPERT_WORDS                  the task's domain words (XTF task relevance); a task whose words come from its
                                  options defines expert_words(opts) instead (task=sft): see `expert_words`
    EVALUATION                    the fixed protocol (xtf.evaluate.evaluate dispatches on it): "exact_match"
                                  (the default: greedy + EXTRACTORS), "lm_eval" (xtf/lmeval.py) or "pass_at_k"
                                  (HumanEval in the sandbox: xtf/humaneval.py)
    LM_EVAL_TASKS, LM_EVAL_METRICS   with "lm_eval": the task YAMLs in eval/ and {our metric key: (lm-eval task,
                                  lm-eval metric)}, the first entry being the primary metric ("accuracy")
"""

from typing import Any

from xtf.config import RunConfig
from xtf.tasks import code, gsm8k, medqa, pubmedqa, sft, synth

TASKS = {
    "synth": synth,
    "gsm8k": gsm8k,
    "code": code,
    "medqa": medqa,
    "pubmedqa": pubmedqa,
    "sft": sft,
}


def expert_words(task_module, options) -> tuple[str, ...]:
    """The task's domain words for XTF's task relevance: from its options when it has `expert_words(opts)` (your own
    data), else its EXPERT_WORDS."""
    if hasattr(task_module, "expert_words"):
        return task_module.expert_words(options)
    return task_module.EXPERT_WORDS


def task_options(run: RunConfig) -> Any:
    """The task's validated Options dataclass (xtf.validate checked `task.options` against it)."""
    return TASKS[run.task.name].Options(**run.task.options)
