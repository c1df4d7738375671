"""train.micro_batch_tokens (xtf.train): a micro-batch run as pieces of at most N padded positions trains the same
model as the whole micro-batch — the real fine-tuning (HF Trainer, LoRA, gradient accumulation) gives the same
weights and losses to float tolerance — with less padding; it stays out of the run id; the settings it cannot run
with are refused before any work, naming the key.

    pytest tests/test_micro_batch.py
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from conftest import compose

from xtf import distributed
from xtf.config import ModelConfig, TrainConfig
from xtf.errors import ConfigError
from xtf.results import run_id
from xtf.train import finetune, micro_batch_pieces
from xtf.validate import validate


def _model():
    import transformers as tf

    torch.manual_seed(0)
    return tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64,
                                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                              max_position_embeddings=128)).float()


def _rows() -> tuple[list[dict], list[np.ndarray]]:
    """8 rows of 6..20 tokens: a prompt, then an answer with some tokens masked (keep false)."""
    g = np.random.default_rng(0)
    rows, keeps = [], []
    for length in (9, 20, 6, 14, 11, 17, 7, 12):
        prompt = int(g.integers(2, 5))
        rows.append({"input_ids": g.integers(1, 97, length).tolist(),
                     "response_mask": [0] * prompt + [1] * (length - prompt)})
        keeps.append(np.array(rows[-1]["response_mask"], bool) & (g.random(length) > 0.3))
    return rows, keeps


def _train(tmp_path, budget: int, grad_accum: int, loss_norm: str):
    rows, keeps = _rows()
    cfg = TrainConfig(name="lora", mode="lora", epochs=1, lr=5e-2, batch_size=4 // grad_accum, grad_accum=grad_accum,
                      loss_norm=loss_norm, lora_r=4, lora_alpha=8, logging_steps=1, micro_batch_tokens=budget)
    model, info = finetune(_model(), types.SimpleNamespace(pad_token_id=0), rows, keeps, cfg,
                           ModelConfig(name="toy", lora_target_modules=("q_proj", "v_proj", "up_proj")), 1, 0,
                           tmp_path / f"run-{budget}")
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, info


@pytest.mark.parametrize("grad_accum,loss_norm", [(1, "kept"), (2, "answer")])
def test_pieces_train_the_same_model_as_the_whole_micro_batch(tmp_path, grad_accum, loss_norm):
    whole, whole_info = _train(tmp_path, 0, grad_accum, loss_norm)
    pieces, info = _train(tmp_path, 24, grad_accum, loss_norm)
    assert info["steps"] == whole_info["steps"] == 2
    assert info["micro_batch_tokens"] == 24 and whole_info["micro_batch_tokens"] == 0
    for name, value in whole.items():  # lr 5e-2: a wrong denominator or scaling moves the weights by ~1e-2
        torch.testing.assert_close(pieces[name], value, rtol=1e-4, atol=2e-5, msg=name)
    assert [h["loss"] for h in info["loss_history"]] == pytest.approx(
        [h["loss"] for h in whole_info["loss_history"]], rel=1e-5)
    # The same real tokens went through the model, with less padding.
    assert info["throughput"]["tokens"] == whole_info["throughput"]["tokens"]
    assert info["throughput"]["trained_tokens"] == whole_info["throughput"]["trained_tokens"]
    assert info["throughput"]["padded_slots"] < whole_info["throughput"]["padded_slots"]


def test_pieces_stay_within_the_budget_and_cover_every_row_once():
    mask = torch.tensor([[1] * n + [0] * (20 - n) for n in (9, 20, 6, 14, 11, 17)])
    pieces = micro_batch_pieces(mask, 30)
    assert sorted(i for idx, _ in pieces for i in idx) == list(range(6))
    for idx, length in pieces:
        assert length == max(mask[i].sum().item() for i in idx)
        assert len(idx) * length <= 30 or len(idx) == 1
    assert micro_batch_pieces(mask, 10_000) == [([2, 0, 4, 3, 5, 1], 20)]  # one piece, rows by length


def test_micro_batch_tokens_stays_out_of_the_run_id():
    base = validate(compose(["model=tiny", "task=synth", "method=xtf"]))
    split = validate(compose(["model=tiny", "task=synth", "method=xtf", "train.micro_batch_tokens=512"]))
    assert run_id(split) == run_id(base)


@pytest.mark.parametrize("overrides,why", [
    (["method=slm"], "an online method"),
    (["train.packing=true"], "no padding to cut"),
    (["dist=ddp"], "dist.strategy=ddp"),
    (["train.micro_batch_tokens=-1"], "> 0"),
])
def test_what_it_cannot_run_with_is_refused_naming_the_key(overrides, why):
    budget = [] if any("micro_batch_tokens" in o for o in overrides) else ["train.micro_batch_tokens=512"]
    with pytest.raises(ConfigError, match=rf"train.micro_batch_tokens=-?\d+ is not allowed here: .*{why}"):
        validate(compose(["model=tiny", "task=synth", *budget, *overrides]))


def test_more_than_one_process_is_refused_at_start():
    cfg = validate(compose(["model=tiny", "task=synth", "train.micro_batch_tokens=512"]))
    rt = distributed.runtime_from_env("none", False, {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                                                      "LOCAL_WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="train.micro_batch_tokens=512 runs on one process only"):
        distributed.check(cfg.dist, cfg.train, rt, on_gpu=False)
