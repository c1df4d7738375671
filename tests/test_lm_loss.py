"""The loss where it counts (xtf.lm_loss, xtf.train.step_loss): `chunked` and `kept` equal the `full` reference
(logits at every position) in loss and in every gradient, for LoRA and full fine-tuning, both loss normalisations,
an online rule's labels and weights, a softcapped head (Gemma) and tied embeddings; a packed micro-batch equals the
padded one; throughput and padding are counted; none of it changes a run id, but length grouping does.

    pytest tests/test_lm_loss.py
"""

from __future__ import annotations

import pytest
import torch
from conftest import compose

from xtf import lm_loss
from xtf.results import run_id
from xtf.train import IGNORE, Collator, Throughput, step_loss
from xtf.validate import validate


def _model(family: str, lora: bool = False):
    import transformers as tf

    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128)
    if family == "gemma3":  # a softcapped head; gemma's own head_dim and sliding window
        cfg = tf.Gemma3TextConfig(**common, head_dim=8, final_logit_softcapping=5.0, sliding_window=8)
        model = tf.Gemma3ForCausalLM(cfg)
    elif family == "qwen2":  # tied input and output embeddings
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**common, tie_word_embeddings=True))
    else:
        model = tf.LlamaForCausalLM(tf.LlamaConfig(**common))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # sharper distributions than the default init: a stronger test of the softmax gradient
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    return model.float()


def _rows(seed: int = 0) -> list[dict]:
    """Rows of different lengths: a prompt, then an answer with some tokens masked out (labels -100)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for length, prompt in ((11, 4), (7, 3), (15, 6), (9, 2)):
        ids = torch.randint(1, 97, (length,), generator=g).tolist()
        answer = [0] * prompt + [1] * (length - prompt)
        keep = [a and bool(torch.rand(1, generator=g) > 0.4) for a in answer]
        rows.append({"input_ids": ids, "labels": [t if k else IGNORE for t, k in zip(ids, keep)],
                     "response_mask": answer})
    return rows


def _loss_and_grads(model, batch: dict, impl: str, loss_norm: str = "kept", select=None):
    batch = dict(batch)
    labels, response_mask = batch.pop("labels"), batch.pop("response_mask")
    model.zero_grad()
    loss = step_loss(model, batch, labels, response_mask, loss_norm, impl, select=select)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    return float(loss.detach()), grads


def _assert_same(a, b):
    assert a[0] == pytest.approx(b[0], rel=1e-5, abs=1e-6)
    assert sorted(a[1]) == sorted(b[1]) and a[1]
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("family, lora, loss_norm", [
    ("llama", False, "kept"), ("llama", True, "answer"), ("gemma3", False, "kept"), ("qwen2", False, "answer")])
def test_chunked_and_kept_equal_the_full_logits_reference(family, lora, loss_norm, monkeypatch):
    model = _model(family, lora)
    batch = Collator(pad_id=0)(_rows())
    reference = _loss_and_grads(model, batch, "full", loss_norm)
    _assert_same(_loss_and_grads(model, batch, "kept", loss_norm), reference)
    monkeypatch.setattr(lm_loss, "CHUNK_ROWS", 5)  # several chunks, the last one short
    monkeypatch.setattr(lm_loss.linear_cross_entropy, "__defaults__", (None, 5))
    _assert_same(_loss_and_grads(model, batch, "chunked", loss_norm), reference)


def test_an_online_rule_sees_the_same_nll_and_its_labels_and_weights_are_applied():
    model = _model("llama")
    batch = Collator(pad_id=0)(_rows(1))
    seen = {}

    def select(nll, labels, signals):  # DFT-like weights on the tokens of odd position, the rest dropped
        seen.setdefault("nll", []).append(nll.clone())
        odd = torch.zeros_like(labels, dtype=torch.bool)
        odd[:, 1::2] = True
        new = torch.where(odd, labels, torch.full_like(labels, IGNORE))
        return new, torch.where(new != IGNORE, torch.exp(-nll), torch.zeros_like(nll))

    reference = _loss_and_grads(model, batch, "full", select=select)
    for impl in ("kept", "chunked"):
        _assert_same(_loss_and_grads(model, batch, impl, select=select), reference)
    trained = batch["labels"] != IGNORE
    for nll in seen["nll"][1:]:  # every implementation gives the rule the same NLL on the trainable tokens
        torch.testing.assert_close(nll[trained], seen["nll"][0][trained], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_a_packed_micro_batch_equals_the_padded_one(family):
    model = _model(family)
    rows = _rows(2)
    packed = Collator(pad_id=0, packed=True)(rows)
    assert packed["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows)) and "attention_mask" not in packed
    padded = _loss_and_grads(model, Collator(pad_id=0)(rows), "full")
    for impl in ("full", "chunked"):
        _assert_same(_loss_and_grads(model, packed, impl), padded)


def test_linear_cross_entropy_gradients_match_autograd_with_softcap():
    torch.manual_seed(0)
    hidden = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(29, 8, dtype=torch.float64, requires_grad=True)
    targets, w = torch.randint(0, 29, (13,)), torch.rand(13, dtype=torch.float64)
    torch.autograd.gradcheck(lambda h, W: lm_loss.linear_cross_entropy(h, W, targets, w, 3.0, 4), (hidden, weight))
    assert float(lm_loss.linear_cross_entropy(hidden[:0], weight, targets[:0], w[:0]).detach()) == 0.0  # none kept


def test_throughput_counts_real_tokens_padding_and_trained_labels():
    rows = _rows()
    meter = Throughput()
    batch = Collator(pad_id=0)(rows)
    meter.count(batch, batch["labels"])
    real = sum(len(r["input_ids"]) for r in rows)
    record = meter.record(seconds=2.0)
    assert (record["tokens"], record["padded_slots"]) == (real, 4 * 15)
    assert record["trained_tokens"] == sum(t != IGNORE for r in rows for t in r["labels"])
    assert record["padding_fraction"] == pytest.approx(1 - real / 60, abs=1e-4)
    assert record["tokens_per_s"] == pytest.approx(real / 2.0)
    packed = Throughput()
    batch = Collator(pad_id=0, packed=True)(rows)
    packed.count(batch, batch["labels"])
    assert packed.record(1.0)["padding_fraction"] == 0.0


def test_loss_impl_and_packing_stay_out_of_the_run_id_but_length_grouping_enters_it():
    default = run_id(validate(compose([])))
    for override in ("train.loss_impl=full", "train.loss_impl=kept", "train.packing=true"):
        assert run_id(validate(compose([override]))) == default, override
    assert run_id(validate(compose(["train.group_by_length=true"]))) != default


def test_packing_with_an_online_method_is_refused_naming_the_alternative():
    from xtf.config import ConfigError

    with pytest.raises(ConfigError, match=r"train.packing=true is not supported with method=slm.*group_by_length"):
        validate(compose(["method=slm", "train.packing=true"]))
