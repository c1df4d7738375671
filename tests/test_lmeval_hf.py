"""lm-eval's private HFLM API, used in one place (xtf.lmeval_hf._PrivateHFLMHooks): these tests fail when an lm-eval
release changes what the hooks replace or stops calling them, so that an upgrade is checked, not silently wrong.

    pytest tests/test_lmeval_hf.py
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect

import pytest
import torch

from xtf import generation, lmeval_hf, tiny
from xtf.config import ModelConfig

HFLM = pytest.importorskip("lm_eval.models.huggingface").HFLM
SMALL = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=1024)  # as test_lmeval

# sha256 of inspect.getsource(HFLM._model_generate) in lm-eval 0.4.13, whose body _PrivateHFLMHooks._model_generate
# copies (only the stopping criterion differs). A new value: compare the new body with the copy, update both.
MODEL_GENERATE_SHA256 = "c080f2baae104b1e7678bd571691d710c5adecee684b7e873975df8bf5c66f87"


def test_the_private_methods_are_those_the_hooks_replace():
    params = list(inspect.signature(HFLM._model_generate).parameters)
    assert params == ["self", "context", "max_length", "stop", "generation_kwargs"], \
        f"HFLM._model_generate{inspect.signature(HFLM._model_generate)} changed: review xtf.lmeval_hf._PrivateHFLMHooks"
    assert list(inspect.signature(HFLM._model_call).parameters)[:2] == ["self", "inps"], \
        f"HFLM._model_call{inspect.signature(HFLM._model_call)} changed: review xtf.lmeval_hf._PrivateHFLMHooks"
    got = hashlib.sha256(inspect.getsource(HFLM._model_generate).encode()).hexdigest()
    assert got == MODEL_GENERATE_SHA256, (
        "lm-eval changed HFLM._model_generate, whose body xtf.lmeval_hf._PrivateHFLMHooks._model_generate copies: "
        "port the change to the copy, then update MODEL_GENERATE_SHA256")


@pytest.fixture(scope="module")
def tiny_lm(session_cache):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny.build_tiny(dataclasses.replace(ModelConfig(name="tiny", tiny="random"), **SMALL), str(session_cache))
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(path)


def _spy(monkeypatch, name: str) -> list[int]:
    """Wrap _PrivateHFLMHooks.<name>; returns the list of batch sizes it was called with."""
    rows, original = [], getattr(lmeval_hf._PrivateHFLMHooks, name)

    def wrapped(self, *args, **kwargs):  # lm-eval passes `context` by keyword: the signature's names matter
        tensor = args[0] if args else kwargs.get("context", kwargs.get("inps"))
        rows.append(int(tensor.shape[0]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(lmeval_hf._PrivateHFLMHooks, name, wrapped)
    return rows


@pytest.mark.parametrize("batch_tokens", [0, 60])
def test_lm_eval_calls_the_hooks_for_every_batch(tiny_lm, monkeypatch, batch_tokens):
    from lm_eval.api.instance import Instance

    model, tok = tiny_lm
    generated, called = _spy(monkeypatch, "_model_generate"), _spy(monkeypatch, "_model_call")
    stops = []

    class StopSpy(generation.StopOnStrings):
        def __init__(self, tokenizer, stop, *args):
            stops.append(list(stop))
            super().__init__(tokenizer, stop, *args)

    monkeypatch.setattr(lmeval_hf, "StopOnStrings", StopSpy)
    lm = lmeval_hf.make_lm(model, tok, batch_size=2, batch_tokens=batch_tokens)
    prompts = [f"Question: {i} + {i}?" + " more" * i + "\nAnswer:" for i in range(5)]
    gen = [Instance("generate_until", {}, (p, {"until": ["\n\n"], "max_gen_toks": 4}), i)
           for i, p in enumerate(prompts)]
    out = lm.generate_until(gen)
    assert len(out) == 5 and all(isinstance(t, str) for t in out)
    assert sum(generated) == 5, "HFLM.generate_until no longer calls _model_generate once per row"
    assert stops and all("\n\n" in s for s in stops), "our per-row stop was not used"
    ll = [Instance("loglikelihood", {}, (p, " 4"), i) for i, p in enumerate(prompts)]
    assert len(lm.loglikelihood(ll)) == 5
    assert sum(called) == 5, "HFLM.loglikelihood no longer calls _model_call for every row"
