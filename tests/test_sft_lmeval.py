"""task=sft with lm-eval tasks named in the config (xtf/lmeval_named.py): a task of your own (a local YAML reading
a local file) runs on the fine-tuned model beside the answer NLL; an unknown task name fails before any work.

    .venv/bin/python -m pytest -q tests/test_sft_lmeval.py
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, compose

from xtf.config import ConfigError
from xtf.pipeline import run
from xtf.validate import validate

TASK_YAML = """task: my_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {docs}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
"""


def _include(tmp_path):
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"question": f"What is {a} + {a}?", "choices": [str(2 * a), str(a)],
                                        "label": 0}) + "\n" for a in range(1, 7)))
    folder = tmp_path / "my_tasks"
    folder.mkdir()
    (folder / "my_choice.yaml").write_text(TASK_YAML.format(docs=docs))
    return folder


def test_named_lm_eval_task_runs_beside_the_answer_nll(tmp_path, run_overrides):
    cfg = validate(compose(["task=sft", "model=tiny", "method=normal", "debug=fast",
                            f"data.train_file={ROOT / 'examples' / 'prompt_response.jsonl'}",
                            "task.options.eval_fraction=0.25", "task.options.lm_eval_tasks=[my_choice]",
                            f"task.options.lm_eval_include={_include(tmp_path)}", *run_overrides]))
    record = run(cfg)
    metrics = record["metrics"]
    assert 0.0 <= metrics["lm_eval/my_choice/acc,none"] <= 1.0
    assert metrics["answer_nll"] > 0 and metrics["answer_nll_tokens"] > 0
    assert record["eval_protocol"]["name"] == "answer_nll"
    assert record["eval_protocol"]["lm_eval"]["tasks"] == ["my_choice"]


def test_an_unknown_lm_eval_task_fails_before_any_work(tmp_path):
    with pytest.raises(ConfigError, match=r"lm-eval knows no task \['no_such_task'\]"):
        validate(compose(["task=sft", "model=tiny", f"data.train_file={ROOT / 'examples' / 'prompt_response.jsonl'}",
                          "task.options.eval_fraction=0.25", "task.options.lm_eval_tasks=[no_such_task]",
                          f"task.options.lm_eval_include={_include(tmp_path)}"]))
