"""The export works elsewhere: TRL's SFTTrainer trains on an exported dataset loaded with datasets.load_from_disk,
given nothing but its public arguments, and its loss on the first batch equals xtf.train's masked loss on the same
rows (train.loss_norm=kept: the mean NLL over kept tokens, what TRL and HF compute) to 1e-5."""

from __future__ import annotations

import importlib.util

import pytest
from conftest import IN_CI, compose

from xtf.pipeline import run
from xtf.results import run_dir
from xtf.validate import validate

TINY = ["model.pretrain_steps=40", "task.options.n_train=12", "task.options.n_test=2", "task.options.filler_rate=0.3"]


def require_trl() -> None:
    if importlib.util.find_spec("trl") is None:
        if IN_CI:
            pytest.fail("trl is not installed (the `bench` extra) — required under CI=true")
        pytest.skip("trl is not installed: pip install -c constraints.txt -e '.[bench]'")


def test_trl_trains_on_the_export_and_its_first_loss_is_xtfs_masked_loss(run_overrides, tmp_path):
    require_trl()
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    from xtf import decisions, models
    from xtf.train import Collator, make_labels, step_loss

    cfg = validate(compose([*run_overrides, *TINY, "method=xtf", "score_only=true", "export.enabled=true"]))
    record = run(cfg)
    folder = run_dir(cfg)
    dataset = load_from_disk(str(folder / "export" / "dataset"))
    # One batch of every row: the first batch is then the same rows whatever order the trainer's sampler draws.
    args = SFTConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=len(dataset), max_steps=1,
                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
                     max_length=cfg.data.max_len, seed=0)
    trainer = SFTTrainer(model=record["weights"], args=args, train_dataset=dataset)
    trainer.train()
    trl_loss = trainer.state.log_history[0]["loss"]   # the first (only) step's loss, unrounded

    # xtf's loss on the rows it would train on (those with a kept token), from the run folder's decisions.
    dec = decisions.read(folder)
    rows = [{"input_ids": r["input_ids"].tolist(), "labels": make_labels(r["input_ids"], r["keep"]),
             "response_mask": r["response_mask"].astype(int).tolist()} for r in dec.rows if r["keep"].any()]
    assert any((r["response_mask"] & ~r["keep"]).any() for r in dec.rows)  # xtf masked answer tokens here
    batch = Collator(models.load_tokenizer(record["weights"]).pad_token_id)(rows)
    model = AutoModelForCausalLM.from_pretrained(record["weights"], dtype=torch.float32)
    with torch.no_grad():
        xtf_loss = step_loss(model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                             batch["labels"], batch["response_mask"], "kept").item()
    assert trl_loss == pytest.approx(xtf_loss, abs=1e-5)
    # ...and not by accident: the loss over every answer token (nothing masked) is another number.
    with torch.no_grad():
        unmasked = step_loss(model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                             torch.where(batch["response_mask"].bool(), batch["input_ids"], -100),
                             batch["response_mask"], "kept").item()
    assert abs(unmasked - xtf_loss) > 1e-3
