"""lm-eval evaluation (xtf.lmeval): exact metrics with a scripted LM, the prompt and tokens are the fine-tuning
ones, and each task runs end to end on a tiny model with the real benchmark files.

    pytest tests/test_lmeval.py
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from lm_eval.api.model import LM

from tests.conftest import require_shared_data
from xtf import lmeval, tiny
from xtf.config import DataConfig, EvalConfig, ModelConfig, PathsConfig
from xtf.data import prompt_ids, render_prompt
from xtf.tasks import gsm8k, medqa, pubmedqa
from xtf.tasks.common import RowChecker

EVAL = EvalConfig(batch_size=4, max_new_tokens=8)
SMALL = dict(hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64, vocab_size=1024)  # as test_tiny


class ScriptedLM(LM):
    """Answers from a script keyed by example id: a generation per id, and for multiple choice the index of
    the option to favour (log-likelihood 0 for it, -10 for the others). Records every request's context."""

    def __init__(self, generations: dict | None = None, choose: dict | None = None, tokenizer=None):
        super().__init__()
        self.generations, self.choose, self.tokenizer = generations or {}, choose or {}, tokenizer
        self.contexts: list[str] = []
        self.continuations: list[str] = []

    def generate_until(self, requests, disable_tqdm: bool = False):
        self.contexts += [r.args[0] for r in requests]
        return [self.generations[r.doc["id"]] for r in requests]

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self.contexts += [r.args[0] for r in requests]
        self.continuations += [r.args[1] for r in requests]
        out = []
        for r in requests:
            favoured = r.doc["choices"][self.choose[r.doc["id"]]]
            out.append((0.0 if r.args[1] == favoured else -10.0, False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("no xtf task uses loglikelihood_rolling")

    @property
    def tokenizer_name(self) -> str:  # lm-eval keys its request cache on it under a chat template
        return "scripted"

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)


def examples(prefix: str, answers: list[str], **extra) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "prompt": f"Question: problem {i}?\nAnswer:", "response": " r", "answer": a,
             **extra} for i, a in enumerate(answers)]


# ------------------------------------------------------------------------------------------ scripted metrics

def test_gsm8k_strict_and_flexible_differ_and_are_exact(tmp_path):
    exs = examples("g", ["10", "20", "1000", "30", "40"])
    gens = {
        "g-0": " 4 + 6 = 10\n#### 10",        # strict ✓ flexible ✓
        "g-1": " so she has 20 apples.",      # strict ✗ (no ####) flexible ✓
        "g-2": " total\n#### 1,000",         # strict ✓ flexible ✓ (commas normalised; lm-eval's strict rejects "$")
        "g-3": " done\n#### 30\nthen 31",     # strict ✓ flexible ✗ (last number is 31)
        "g-4": " I do not know.",             # ✗ ✗
    }
    metrics, preds, protocol = lmeval.run_tasks(ScriptedLM(gens), gsm8k, exs, EVAL, False, tmp_path, seed=0)
    assert metrics["accuracy_strict"] == pytest.approx(0.6) and metrics["accuracy_flexible"] == pytest.approx(0.6)
    assert metrics["accuracy"] == metrics["accuracy_strict"] and metrics["n_eval"] == 5
    assert [p["id"] for p in preds] == [e["id"] for e in exs]
    assert [p["correct_strict"] for p in preds] == [True, False, True, True, False]
    assert [p["correct_flexible"] for p in preds] == [True, True, True, False, False]
    # as lm-eval's filters extract them (its exact_match metric then ignores the comma)
    assert [p["extracted_strict"] for p in preds] == ["10", lmeval.INVALID, "1,000", "30", lmeval.INVALID]
    assert preds[3]["extracted_flexible"] == "31" and preds[1]["generation"] == gens["g-1"]
    # The primary metric follows gsm8k.EXTRACTORS order, like the legacy exact-match path.
    assert next(iter(gsm8k.LM_EVAL_METRICS)) == f"accuracy_{next(iter(gsm8k.EXTRACTORS))}" == protocol["primary"]


def test_medqa_multiple_choice_and_generative(tmp_path):
    options = {"A": "Aspirin", "B": "Beta blocker therapy", "C": "Cortisol", "D": "Dialysis"}
    exs = examples("m", ["A", "B", "C", "D", "B"], options=options)
    choose = {"m-0": 0, "m-1": 1, "m-2": 2, "m-3": 0, "m-4": 3}        # right, right, right, wrong, wrong
    gens = {"m-0": " A. Aspirin", "m-1": " B. Beta blocker therapy", "m-2": " C", "m-3": " b. dialysis",
            "m-4": " D. Dialysis"}                                     # right ×3, no capital letter, wrong
    lm = ScriptedLM(gens, choose)
    metrics, preds, _ = lmeval.run_tasks(lm, medqa, exs, EVAL, False, tmp_path, seed=0)
    assert metrics["accuracy_mc"] == pytest.approx(0.6) and metrics["accuracy_mc_norm"] == pytest.approx(0.6)
    assert metrics["accuracy_generative"] == pytest.approx(0.6) and metrics["accuracy"] == metrics["accuracy_mc"]
    assert [p["chosen_mc"] for p in preds] == ["A", "B", "C", "A", "D"]
    assert [p["correct_generative"] for p in preds] == [True, True, True, False, False]
    assert preds[3]["extracted_generative"] == lmeval.INVALID
    assert len(preds[0]["loglikelihoods"]) == 4
    # Zero-shot: the context is the prompt itself; each option is scored as the full answer, space included.
    assert set(lm.contexts) == {e["prompt"] for e in exs}
    assert set(lm.continuations) == {" A. Aspirin", " B. Beta blocker therapy", " C. Cortisol", " D. Dialysis"}


def test_pubmedqa_decision(tmp_path):
    exs = examples("p", ["yes", "no", "maybe", "yes", "no"])
    gens = {"p-0": " It helps. The answer is yes.", "p-1": " Yes, but no effect. The answer is no.",
            "p-2": " Unclear. The answer is Maybe.", "p-3": " The answer is maybe.", "p-4": " Unclear."}
    metrics, preds, _ = lmeval.run_tasks(ScriptedLM(gens), pubmedqa, exs, EVAL, False, tmp_path, seed=0)
    assert metrics["accuracy"] == metrics["accuracy_decision"] == pytest.approx(0.6)
    assert [p["extracted_decision"] for p in preds] == ["yes", "no", "maybe", "maybe", lmeval.INVALID]


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="no test examples"):
        lmeval.export_rows([])
    with pytest.raises(ValueError, match="not unique"):
        lmeval.export_rows(examples("x", ["1", "2"]) + examples("x", ["3"]))
    with pytest.raises(ValueError, match="not one of the options"):
        lmeval.export_rows(examples("x", ["E"], options={"A": "a", "B": "b"}))


def test_choices_are_the_medqa_training_answers():
    row = {"question": "Q?", "options": {"A": " a ", "B": "b", "C": "c", "D": "d"}, "answer_idx": "C"}
    ex = medqa.convert(row, "id", "here", RowChecker("error"))
    doc = lmeval.export_rows([ex])[0]
    assert doc["choices"][doc["label"]] == ex["response"] and doc["choices"][0] == " A. a"


def test_task_yamls_are_versioned():
    for module in (gsm8k, medqa, pubmedqa):
        assert module.EVALUATION == "lm_eval"
        assert {t for t, _ in module.LM_EVAL_METRICS.values()} == set(module.LM_EVAL_TASKS)
        for name in module.LM_EVAL_TASKS:
            text = (lmeval.EVAL_DIR / f"{name}.yaml").read_text()
            assert f"task: {name}\n" in text and "metadata:\n  version:" in text
    assert not (lmeval.EVAL_DIR / "__init__.py").exists()  # eval/ is not an importable package


# ------------------------------------------------------------------------------------------ tiny real model

@pytest.fixture(scope="module")
def tiny_model(session_cache):
    cfg = dataclasses.replace(ModelConfig(name="tiny", tiny="random"), **SMALL)
    path = tiny.build_tiny(cfg, str(session_cache))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("chat_template", [False, True])
def test_prompt_and_tokens_are_the_fine_tuning_ones(tmp_path, tiny_model, chat_template):
    model, tok = tiny_model
    options = {"A": "Aspirin", "B": "Beta blocker", "C": "Cortisol", "D": "Dialysis"}
    exs = [medqa.convert({"question": f"Which drug {i}?", "options": options, "answer_idx": "B"}, f"m-{i}", "",
                         RowChecker("error")) for i in range(2)]
    lm = ScriptedLM({e["id"]: " B" for e in exs}, {e["id"]: 1 for e in exs}, tokenizer=tok)
    lmeval.run_tasks(lm, medqa, exs, EVAL, chat_template, tmp_path, seed=0)
    assert set(lm.contexts) == {render_prompt(tok, e["prompt"], chat_template) for e in exs}
    assert all(e["response"] in lm.continuations for e in exs)  # lm-eval drops its delimiter under a template
    # HFLM tokenises the context (one BOS) and the gold continuation exactly as xtf.data.tokenize_example does.
    hflm = lmeval.make_lm(model, tok, batch_size=2)
    for ex in exs:
        ctx = render_prompt(tok, ex["prompt"], chat_template)
        if chat_template:  # HFLM renders the user turn as xtf.data.render_prompt does (ScriptedLM copies it)
            assert hflm.apply_chat_template([{"role": "user", "content": ex["prompt"]}]) == ctx
        assert hflm.tok_encode(ctx) == prompt_ids(tok, ex["prompt"], chat_template)
        ctx_ids, cont_ids = hflm._encode_pair(ctx, ex["response"])
        assert ctx_ids + cont_ids == prompt_ids(tok, ex["prompt"], chat_template) + \
            tok(ex["response"], add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("module", [gsm8k, medqa, pubmedqa], ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_tiny_model_on_real_data(tmp_path, tiny_model, module):
    data_dir = require_shared_data()
    model, tok = tiny_model
    exs = module.load(module.Options(), DataConfig(), PathsConfig(data_dir=str(data_dir))).splits["test"][:3]
    metrics, preds, protocol = lmeval.evaluate_lm_eval(model, tok, module, exs, EVAL, False, tmp_path, seed=0)
    assert set(metrics) == set(module.LM_EVAL_METRICS) | {"accuracy", "n_eval"} and metrics["n_eval"] == 3
    assert all(0.0 <= metrics[k] <= 1.0 for k in module.LM_EVAL_METRICS)
    assert [p["id"] for p in preds] == [e["id"] for e in exs]
    names = [k.removeprefix("accuracy_") for k in module.LM_EVAL_METRICS]
    assert all(f"correct_{n}" in p for p in preds for n in names)
    # The option reported as chosen is the one lm-eval scored (acc: summed, acc_norm: per-character).
    assert all(p[f"correct_{n}"] == (p[f"chosen_{n}"] == p["gold"]) for p in preds for n in names if f"chosen_{n}" in p)
    assert protocol["name"] == "lm_eval" and set(protocol["tasks"]) == set(module.LM_EVAL_TASKS)
    assert all(t["version"] is not None and len(t["yaml_sha256"]) == 64 for t in protocol["tasks"].values())
    assert not (tmp_path / "lm_eval" / "hf_datasets").exists()


def test_same_protocol_for_different_models(tmp_path, tiny_model):
    """Two different models (as two methods' fine-tuning gives) → different scores, identical protocol."""
    model, tok = tiny_model
    model_b = copy.deepcopy(model)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model_b.parameters():
            p.add_(0.5 * torch.randn_like(p))
    exs = examples("m", ["A", "B", "C"], options={"A": "Aspirin", "B": "Beta", "C": "Cortisol", "D": "Dialysis"})
    runs = [lmeval.evaluate_lm_eval(m, tok, medqa, exs, EVAL, True, tmp_path / name, seed=0)
            for name, m in (("a", model), ("b", model_b))]
    (_, preds_a, proto_a), (_, preds_b, proto_b) = runs
    assert proto_a == proto_b
    assert proto_a["chat_template"] is True
    assert proto_a["tasks"]["xtf_medqa_gen"]["generation_kwargs"]["max_gen_toks"] == EVAL.max_new_tokens
    assert [p["loglikelihoods"] for p in preds_a] != [p["loglikelihoods"] for p in preds_b]
    # A different eval config is a different protocol.
    _, _, proto_c = lmeval.evaluate_lm_eval(model, tok, medqa, exs, EVAL, False, tmp_path / "c", seed=0)
    assert proto_c != proto_a


def test_batched_generation_equals_one_by_one(tmp_path, tiny_model):
    """Left padding is right: prompts of different lengths generate the same text alone and in one batch."""
    model, tok = tiny_model
    sharp = copy.deepcopy(model)
    with torch.no_grad():
        for p in sharp.parameters():
            p.mul_(8.0)  # a random model this small otherwise writes nearly the same tokens whatever the prompt
    exs = [{"id": f"g-{i}", "prompt": "Question: " + "Ann has 3 apples. " * (3 * i + 1) + "\nAnswer:",
            "response": "", "answer": "1"} for i in range(4)]
    gens = []
    for batch_size in (1, 4):
        cfg = dataclasses.replace(EVAL, batch_size=batch_size, max_new_tokens=12)
        _, preds, _ = lmeval.evaluate_lm_eval(sharp, tok, gsm8k, exs, cfg, False, tmp_path / str(batch_size), seed=0)
        gens.append([p["generation"] for p in preds])
    assert gens[0] == gens[1] and len(set(gens[0])) == 4
