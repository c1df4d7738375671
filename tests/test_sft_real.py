"""Your own data, end to end on a real LM (issue: "your dataset in, the filtered dataset out"): a 200-row multi-turn
chat JSONL built here from GSM8K's training file (two problems per conversation, a system turn; not the project's
examples/) runs with method=xtf on SmolLM2-135M with the export on; TRL's SFTTrainer then trains one epoch on the
exported folder with nothing but its public arguments.

    make test-real      (marked `real`: SmolLM2-135M on a CPU, minutes)
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
from conftest import IN_CI, compose, require_shared_data

from xtf import data
from xtf.pipeline import run
from xtf.validate import validate

pytestmark = pytest.mark.real
N_ROWS = 200
# The paper's maths domain words (as task=gsm8k), quoted: Hydra reads 1 as a number and + or = as syntax.
MATHS_WORDS = "[" + ",".join(f"'{w}'" for w in [*map(str, range(1, 11)), "+", "-", "*", "/", "=", "maths"]) + "]"


def chat_file(path, gsm8k_train) -> str:
    """N_ROWS conversations of two GSM8K problems each, calculator annotations removed (they are not text). The
    2 * N_ROWS shortest problems (in file order): ~230 characters each instead of the file's mean 522, so the run
    and TRL's epoch take minutes on a CPU, not most of an hour (measured: 45 min with the first 400 rows)."""
    rows = [json.loads(line) for line in gsm8k_train.read_text().splitlines()]
    size = lambda r: len(r["question"]) + len(r["answer"])
    shortest = set(sorted(range(len(rows)), key=lambda i: (size(rows[i]), i))[: 2 * N_ROWS])
    lines = [r for i, r in enumerate(rows) if i in shortest]
    clean = lambda answer: re.sub(r"<<[^>]*>>", "", answer)
    with open(path, "w") as f:
        for a, b in zip(lines[0::2], lines[1::2]):
            messages = [{"role": "system", "content": "You are a careful maths tutor. Reason step by step."}]
            for problem in (a, b):
                messages += [{"role": "user", "content": problem["question"]},
                             {"role": "assistant", "content": clean(problem["answer"])}]
            f.write(json.dumps({"messages": messages}) + "\n")
    return str(path)


def require_trl():
    try:
        import trl  # noqa: F401
    except ImportError:
        msg = "TRL is not installed (make install-bench installs the bench extra)"
        if IN_CI:
            pytest.fail(msg + " — required under CI=true")
        pytest.skip(msg)


def test_chat_data_with_xtf_on_smollm2_then_trl_trains_on_the_export(tmp_path, run_overrides):
    require_trl()
    train_file = chat_file(tmp_path / "chat.jsonl", require_shared_data() / "gsm8k" / "train.jsonl")
    cfg = validate(compose([
        "model=smollm2_135m", "task=sft", f"data.train_file={train_file}", "task.options.eval_fraction=0.1",
        "method=xtf", f"task.options.expert_words={MATHS_WORDS}", "data.max_len=1024", "export.enabled=true",
        *run_overrides]))
    record = run(cfg)
    assert record["status"] == "complete" and record["data"]["n_train"] == 180 and record["data"]["n_eval"] == 20
    assert 0.3 < record["mask"]["kept_fraction"] < 1.0          # XTF masked something, not everything
    assert math.isfinite(record["metrics"]["answer_nll"]) and record["metrics"]["answer_nll_tokens"] > 1000
    assert record["tokenization"]["n_truncated"] == 0

    import datasets

    export = datasets.load_from_disk(str(tmp_path / "results" / "default" / record["run_id"] / "export" / "dataset"))
    assert len(export) == 180
    from xtf import models

    tokenizer = models.load_tokenizer(record["weights"])
    for row in export.select(range(20)):
        # Every kept token lies inside an assistant turn (decode → the turn's text), every context token is -100.
        example = {"id": row["id"], "messages": row["messages"]}
        spans = data.answer_char_spans(tokenizer, example, True)
        labels = np.asarray(row["labels"])
        kept = np.flatnonzero(labels != -100)
        assert len(kept) and all(spans[t] is not None for t in kept)
        assert np.array_equal(labels[kept], np.asarray(row["input_ids"])[kept])
        turns = {spans[t][0] for t in kept}
        assert turns <= {2, 4} and all(row["messages"][t]["role"] == "assistant" for t in turns)

    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    trainer = SFTTrainer(
        model=record["weights"], train_dataset=export,
        args=SFTConfig(output_dir=str(tmp_path / "trl"), num_train_epochs=1, per_device_train_batch_size=8,
                       learning_rate=5e-4, report_to=[], save_strategy="no", logging_steps=1, use_cpu=True,
                       bf16=False, gradient_checkpointing=False),  # TRL's defaults: bf16 autocast (on this CPU
        # ~20x slower than float32: 5 min a step) and recomputed activations (1.3x the compute)
        peft_config=LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    result = trainer.train()
    assert result.global_step == math.ceil(180 / 8) and math.isfinite(result.training_loss)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == result.global_step and all(math.isfinite(v) and v > 0 for v in losses)
