"""Evaluation speed without changed outputs (xtf.generation.token_budget_batches / StopOnStrings, xtf.lmeval_hf's
_FastGeneration): greedy generations batched by tokens, sorted and stopped per row equal one-by-one generations
and lm-eval's own HFLM; eval.backend=vllm is refused without a GPU and the vllm package; run ids are unchanged.

    pytest tests/test_eval_speed.py
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util

import pytest
import torch
from conftest import compose
from transformers import StoppingCriteriaList

from xtf import lmeval, tiny
from xtf.config import ConfigError, EvalConfig, ModelConfig
from xtf.generation import StopOnStrings, generate_in_rounds, generate_many, token_budget_batches
from xtf.results import run_id
from xtf.tasks import gsm8k
from xtf.validate import validate

SMALL = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=1024)  # as test_lmeval


# ------------------------------------------------------------------------------------------------ pure batching

def test_token_budget_batches_cover_every_prompt_once_within_the_budget():
    lengths = [30, 5, 12, 80, 7, 7, 44, 3]
    for budget, n in ((200, 1), (400, 2), (1, 1), (10_000, 3)):
        batches = token_budget_batches(lengths, batch_size=99, batch_tokens=budget, new_tokens=16, n=n)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        flat = [lengths[i] for b in batches for i in b]
        assert flat == sorted(flat)  # shortest first
        for b in batches:  # a batch over the budget only when one prompt alone exceeds it
            assert len(b) == 1 or len(b) * n * (max(lengths[i] for i in b) + 16) <= budget
    assert token_budget_batches(lengths, 99, 10_000, 16) == [sorted(range(8), key=lengths.__getitem__)]
    assert [len(b) for b in token_budget_batches(lengths, 3)] == [3, 3, 2]  # 0: batch_size prompts per batch


# --------------------------------------------------------------------------------------------- tiny real model

@pytest.fixture(scope="module")
def sharp_model(session_cache):
    """A tiny random model whose weights are scaled up: otherwise it writes nearly the same tokens for any prompt."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = dataclasses.replace(ModelConfig(name="tiny", tiny="random"), **SMALL)
    path = tiny.build_tiny(cfg, str(session_cache))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)
    return model, AutoTokenizer.from_pretrained(path)


PROMPTS = ["Question: " + "Ann has 3 apples. " * (2 * i + 1) + f"Bob has {i}.\nAnswer:" for i in range(6)]


def test_greedy_batched_by_tokens_equals_one_by_one(sharp_model):
    """Sorted, left-padded, token-budget batches: the same greedy text as each prompt alone."""
    model, tok = sharp_model
    alone = generate_many(model, tok, PROMPTS, False, batch_size=1, max_new_tokens=12)
    budget = generate_many(model, tok, PROMPTS, False, batch_size=1, max_new_tokens=12, batch_tokens=400)
    assert len(token_budget_batches([len(tok(p)["input_ids"]) for p in PROMPTS], 1, 400, 12)) < len(PROMPTS)
    assert budget == alone and len({g[0] for g in alone}) == len(PROMPTS)


def test_stop_strings_stop_rows_without_changing_the_text_before_them(sharp_model):
    model, tok = sharp_model
    free = [g[0] for g in generate_many(model, tok, PROMPTS, False, batch_size=6, max_new_tokens=24)]
    # Stop strings each generation really contains: each row has its own, met at different steps.
    stops = tuple(sorted({g[len(g) // 3: len(g) // 3 + 2] for g in free if len(g) > 6}))
    assert len(stops) >= 2
    stopped = [g[0] for g in generate_many(model, tok, PROMPTS, False, batch_size=6, max_new_tokens=24, stop=stops)]

    def cut(text):
        return text[:min((i for i in (text.find(s) for s in stops) if i >= 0), default=len(text))]

    assert [cut(t) for t in stopped] == [cut(t) for t in free]
    assert sum(len(t) for t in stopped) < sum(len(t) for t in free)  # rows really stopped early


def test_greedy_in_rounds_equals_one_generate_call_and_drops_ended_rows(sharp_model, monkeypatch):
    """generate_in_rounds: rows that met the EOS or a stop string leave the batch between rounds; every row's tokens
    are those of one model.generate call with the same EOS and stop strings."""
    model, tok = sharp_model
    enc = [tok(p)["input_ids"] for p in PROMPTS]
    width, pad = max(map(len, enc)), tok.pad_token_id
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in enc])
    attn = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in enc])
    free = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=24, do_sample=False, pad_token_id=pad,
                          eos_token_id=None)[:, width:]
    # An "EOS" that some rows write, at different steps, and one row never: rows end in different rounds.
    firsts = {t: [row.index(t) if t in row else None for row in free.tolist()] for t in set(free.flatten().tolist())}
    eos = next(t for t, at in sorted(firsts.items()) if None in at and len({a for a in at if a is not None}) >= 2)
    stop = StoppingCriteriaList([StopOnStrings(tok, ["zz"], width, len(PROMPTS))])
    whole = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=24, do_sample=False, pad_token_id=pad,
                           eos_token_id=eos, stopping_criteria=stop)
    sizes, generate = [], model.generate

    def spy(**kwargs):
        sizes.append(kwargs["input_ids"].shape[0])
        return generate(**kwargs)

    monkeypatch.setattr(model, "generate", spy)
    rounds = generate_in_rounds(model, ids, attn, 24, pad, eos, lambda rows: StopOnStrings(tok, ["zz"], width, rows),
                                round_tokens=4)
    assert rounds.tolist() == whole.tolist()
    assert sizes[0] == len(PROMPTS) and sizes[-1] < len(PROMPTS) and sizes == sorted(sizes, reverse=True)


def test_rounds_keep_a_sliding_window_model_s_own_cache_and_tokens():
    """Gemma 3's sliding-window layers: generate_in_rounds uses the cache generate builds (not the growing one)
    and writes the same tokens as one generate call, past the window."""
    import transformers as tf

    torch.manual_seed(0)
    model = tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, sliding_window=8)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)
    ids = torch.randint(1, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    attn = torch.ones_like(ids)
    attn[0, :4] = 0
    whole = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=20, do_sample=False, pad_token_id=0,
                           eos_token_id=None)
    rounds = generate_in_rounds(model, ids, attn, 20, 0, None, round_tokens=6)  # None: the config's EOS, as generate
    assert rounds.tolist() == whole.tolist() and len({tuple(r) for r in whole[:, 12:].tolist()}) == 3


def test_stop_on_strings_is_per_row(sharp_model):
    _, tok = sharp_model
    rows = [tok("x Question: y", add_special_tokens=False)["input_ids"], tok("x y z w v", add_special_tokens=False)[
        "input_ids"]]
    width = max(map(len, rows))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    stop = StopOnStrings(tok, ["Question:"], prompt_len=0, batch_size=2)
    assert stop(ids, None).tolist() == [True, False]
    assert stop(ids[:, :1], None).tolist() == [True, False]  # a done row stays done


def test_lm_eval_fast_path_equals_lm_eval_own_hflm(tmp_path, sharp_model, monkeypatch):
    """GSM8K through lm-eval: per-row stops and token-budget batches give lm-eval's own HFLM's generations."""
    model, tok = sharp_model
    exs = [{"id": f"g-{i}", "prompt": p, "response": "", "answer": "1"} for i, p in enumerate(PROMPTS)]
    cfg = EvalConfig(batch_size=3, max_new_tokens=16)
    _, fast, _ = lmeval.evaluate_lm_eval(model, tok, gsm8k, exs, dataclasses.replace(cfg, batch_tokens=300), False,
                                         tmp_path / "fast", seed=0)
    _, rows, _ = lmeval.evaluate_lm_eval(model, tok, gsm8k, exs, cfg, False, tmp_path / "rows", seed=0)

    from lm_eval.models.huggingface import HFLM

    monkeypatch.setattr(lmeval, "make_lm", lambda m, t, b, _=0: HFLM(pretrained=m, tokenizer=t, batch_size=b))
    _, stock, _ = lmeval.evaluate_lm_eval(model, tok, gsm8k, exs, cfg, False, tmp_path / "stock", seed=0)
    gens = [[p["generation"] for p in preds] for preds in (fast, rows, stock)]
    assert gens[0] == gens[1] == gens[2] and len(set(gens[0])) > 1


# ----------------------------------------------------------------------------------------- config and run ids

@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None and torch.cuda.is_available(),
                    reason="vLLM can run here")
def test_vllm_backend_is_refused_with_what_is_missing():
    with pytest.raises(ConfigError) as e:
        validate(compose(["task=gsm8k", "eval.backend=vllm"]))
    msg = str(e.value)
    assert "eval.backend=vllm" in msg and "eval.backend=hf" in msg
    if importlib.util.find_spec("vllm") is None:
        assert "pip install vllm" in msg
    if not torch.cuda.is_available():
        assert "CUDA GPU" in msg
    with pytest.raises(ConfigError, match="lm-eval tasks only"):
        validate(compose(["eval.backend=vllm"]))  # synth: xtf's own exact match
    validate(compose(["eval.backend=vllm", "eval.enabled=false"]))  # no evaluation, nothing to refuse
    with pytest.raises(ConfigError, match="eval.backend"):
        validate(compose(["task=gsm8k", "eval.backend=tgi"]))


def test_batch_tokens_and_backend_keep_run_ids():
    """At their defaults the new keys are not in any id; batch_tokens never is for greedy tasks (speed only),
    but is for the sampled code protocol (batch composition changes the samples)."""
    synth = validate(compose())
    from xtf.results import run_id_fields

    assert {"batch_tokens", "backend"}.isdisjoint(run_id_fields(synth)["eval"])
    assert run_id(validate(compose(["eval.batch_tokens=4096"]))) == run_id(synth)
    code = run_id(validate(compose(["task=code"])))
    assert run_id(validate(compose(["task=code", "eval.batch_tokens=4096"]))) != code
    with pytest.raises(ConfigError, match="eval.batch_tokens"):
        validate(compose(["eval.batch_tokens=-1"]))


def test_forward_batch_tokens_is_never_in_a_run_id_and_benchmark_off_is():
    from xtf.results import run_id_fields

    synth = validate(compose())
    for task in ([], ["task=code"]):
        assert run_id(validate(compose([*task, "eval.forward_batch_tokens=512"]))) == \
            run_id(validate(compose(task)))
    assert {"forward_batch_tokens", "benchmark"}.isdisjoint(run_id_fields(synth)["eval"])
    assert run_id(validate(compose(["eval.benchmark=false"]))) != run_id(synth)
    with pytest.raises(ConfigError, match="eval.forward_batch_tokens"):
        validate(compose(["eval.forward_batch_tokens=-1"]))


@pytest.mark.gpu
def test_vllm_backend_runs_gsm8k(tmp_path, sharp_model):
    """On a CUDA machine with vllm installed: lm-eval's vLLM model gives the HF backend's greedy generations."""
    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU and `pip install vllm`")
    model, tok = sharp_model
    model = copy.deepcopy(model).cuda()
    exs = [{"id": f"g-{i}", "prompt": p, "response": "", "answer": "1"} for i, p in enumerate(PROMPTS)]
    cfg = EvalConfig(batch_size=3, max_new_tokens=16)
    _, hf, _ = lmeval.evaluate_lm_eval(model, tok, gsm8k, exs, cfg, False, tmp_path / "hf", seed=0)
    _, vl, protocol = lmeval.evaluate_lm_eval(model, tok, gsm8k, exs, dataclasses.replace(cfg, backend="vllm"),
                                              False, tmp_path / "vllm", seed=0)
    assert protocol["backend"] == "vllm" and next(model.parameters()).device.type == "cuda"
    assert [p["generation"] for p in vl] == [p["generation"] for p in hf]
