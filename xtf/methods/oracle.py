"""oracle (tasks with injected noise: synth, GSM8K noise_*_rate): mask exactly the injected noise — the ceiling any
filter can reach.

    python run.py task=synth task.options.filler_rate=0.2 method=oracle
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xtf.errors import ConfigError
from xtf.methods.registry import Method
from xtf.methods.tokens import answer, protected


def oracle(rows, scores, method, seed, special=frozenset()):
    """Keep every answer token but the injected ones (row["truth"], xtf.noise); protected ones stay."""
    if not any("truth" in r for r in rows):
        raise ValueError("method=oracle needs ground-truth noise: task=synth with a task.options.*_rate > 0 "
                         "or task=gsm8k with a task.options.noise_*_rate > 0")
    keeps = []
    for r in rows:
        injected = np.zeros(len(r["input_ids"]), dtype=bool)
        for flags in r.get("truth", {}).values():
            injected |= np.asarray(flags, dtype=bool)
        keeps.append(answer(r) & ~(injected & ~protected(r, method)))
    return keeps, {}, {}


def check(run, task_options) -> None:
    if not any(v > 0 for k, v in dataclasses.asdict(task_options).items() if k.endswith("_rate")):
        raise ConfigError("method=oracle masks the injected noise, so it needs a task with ground truth: task=synth "
                          "with task.options.filler_rate / distractor_rate / corruption_rate > 0, or task=gsm8k "
                          "with a task.options.noise_<kind>_rate > 0 (filler, offtopic, corruption, duplicate, leak)")


METHOD = Method(name="oracle", kind="offline", summary="mask exactly the injected noise (the ceiling)",
                mask=oracle, check=check)
METHODS = (METHOD,)
