"""The field's other token-selection methods under one protocol: each rule pinned on a hand-computed example
(ssToken's top-k with its warm-up and its attention signal, ProFit's and STM's thresholds with their direction,
DFT's weights, DA's answer-preserving filter with a scripted generator), the online books, and every new method
end to end on the tiny model.

    .venv/bin/python -m pytest -q tests/test_online.py          (tests/test_online_real.py: on SmolLM2-135M)
"""

import json

import numpy as np
import pytest
import torch
from conftest import compose

from xtf import augment, masking, methods, online
from xtf.config import MethodConfig
from xtf.methods import dft_step, profit_step, sstoken_step
from xtf.methods.profit import ProFitConfig
from xtf.methods.sstoken import SSTokenConfig
from xtf.methods.stm import STMConfig
from xtf.online import IGNORE, Step
from xtf.pipeline import run
from xtf.train import masked_loss
from xtf.validate import validate


def _method(**kw):
    return MethodConfig(**kw)


def test_sstoken_top_k_uses_attention_alone_during_the_warm_up():
    # one sample, 5 trainable tokens at positions 1..5; k = ceil(0.6 · 5) = 3
    labels = torch.tensor([[IGNORE, 11, 12, 13, 14, 15]])
    base = torch.tensor([[0.0, 5.0, 1.0, 4.0, 2.0, 3.0]])
    current = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0]])     # REL = 4, 0, 3, 1, 2 → minmax 1, 0, .75, .25, .5
    attention = torch.tensor([[0.0, 0.1, 0.9, 0.2, 0.8, 0.3]])
    method = _method(name="sstoken", keep_ratio=0.6, sstoken=SSTokenConfig(gamma=0.5, warmup=0.2))
    step = Step(labels, current, {"nll": base}, {"prompt_attention": attention}, progress=0.1)
    warm, weights = sstoken_step.select(step, method)
    assert weights is None
    assert warm.tolist() == [[IGNORE, IGNORE, 12, IGNORE, 14, 15]]        # attention alone: .9, .8, .3
    step.progress = 0.2                                                  # warm-up over (progress >= warmup)
    combined, _ = sstoken_step.select(step, method)
    # .5·REL + .5·attn = .55, .45, .475, .525, .4 → positions 1, 4, 3
    assert combined.tolist() == [[IGNORE, 11, IGNORE, 13, 14, IGNORE]]
    rel_only, _ = sstoken_step.select(step, _method(name="sstoken", keep_ratio=0.6, sstoken=SSTokenConfig(gamma=1.0)))
    assert rel_only.tolist() == [[IGNORE, 11, IGNORE, 13, IGNORE, 15]]   # REL 4, 3, 2
    assert sstoken_step.ceil_k(0.6, 5) == 3 and sstoken_step.ceil_k(0.6, 4) == 3 and sstoken_step.ceil_k(0.1, 30) == 3


def test_sstoken_selects_per_sample_and_never_an_untrainable_token():
    labels = torch.tensor([[IGNORE, 5, 6, IGNORE], [IGNORE, IGNORE, IGNORE, IGNORE]])
    attention = torch.tensor([[0.0, 0.2, 0.1, 0.99], [0.5, 0.5, 0.5, 0.5]])
    step = Step(labels, torch.zeros(2, 4), {"nll": torch.zeros(2, 4)}, {"prompt_attention": attention}, 0.0)
    out, _ = sstoken_step.select(step, _method(name="sstoken", keep_ratio=0.5))
    assert out.tolist() == [[IGNORE, 5, IGNORE, IGNORE], [IGNORE] * 4]


def test_prompt_attention_equals_the_eager_formula():
    """The signal reduced inside the attention function = the last layer's eager attention, head-averaged, summed
    over the prompt columns (right padding, grouped-query attention)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, attn_implementation="eager")
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 50, (2, 9))
    attn = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    response = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        eager = model(input_ids=ids, attention_mask=attn, output_attentions=True).attentions[-1].mean(1)  # [B, L, L]
        model.set_attn_implementation("sdpa")
        provider = sstoken_step.PromptAttention(model, _method(name="sstoken"))
        with provider.capture(model, {"response_mask": response}) as got:
            model(input_ids=ids, attention_mask=attn)
    value = got()
    for b, prompt_len, n in ((0, 3, 9), (1, 2, 6)):
        expected = eager[b, :n, :prompt_len].sum(-1)
        assert torch.allclose(value[b, :n], expected, atol=1e-5)
    assert model.config._attn_implementation == "sdpa"                  # restored


@pytest.mark.parametrize("direction,kept", [("keep_higher", [False, True, True, False]),
                                            ("keep_lower", [True, False, False, True])])
def test_profit_threshold_and_direction(direction, kept):
    p = torch.tensor([[0.125, 0.25, 0.5, 0.2499]])                  # p == threshold is kept under keep_higher
    labels = torch.tensor([[7, 8, 9, 10]])
    step = Step(labels, -torch.log(p), {}, {}, 0.0)
    out, weights = profit_step.select(step, _method(name="profit", profit=ProFitConfig(0.25, direction)))
    assert weights is None and (out != IGNORE).tolist() == [kept]


def test_stm_masks_high_base_perplexity_and_exempts_eos():
    # exp(nll): prompt, 2.0, 2.5 (on the threshold: kept), 3.0 (masked), EOS id 2 at 10.0 (exempt)
    rows = [{"id": "0", "input_ids": [1, 5, 6, 7, 2], "response_mask": [0, 1, 1, 1, 1]}]
    scores = {"nll": [np.log(np.array([9.0, 2.0, 2.5, 3.0, 10.0]))]}
    keeps, _, stats = masking.mask(rows, scores, _method(name="stm"), 0, frozenset({2}))
    assert keeps[0].tolist() == [False, True, True, False, True]
    assert stats["rule"] == {"threshold": 2.5, "direction": "mask_higher", "flagged": 1, "exempted_structural": 1,
                              "exempted_protected": 0}
    lower, _, _ = masking.mask(rows, scores, _method(name="stm", stm=STMConfig(2.5, "mask_lower")), 0, frozenset({2}))
    assert lower[0].tolist() == [False, False, False, True, True]


def test_dft_weights_each_token_by_its_detached_probability():
    nll = torch.tensor([[0.0, float(np.log(2.0)), float(np.log(4.0))]], requires_grad=True)   # p = 1, .5, .25
    labels = torch.tensor([[IGNORE, 3, 4]])
    out, w = dft_step.select(Step(labels, nll.detach(), {}, {}, 0.0), _method(name="dft"))
    assert out.tolist() == labels.tolist() and torch.allclose(w, torch.tensor([[0.0, 0.5, 0.25]]))
    loss = masked_loss(nll, out, torch.tensor([[0, 1, 1]]), "kept", w)
    assert loss.item() == pytest.approx((0.5 * np.log(2) + 0.25 * np.log(4)) / 2)
    loss.backward()
    assert torch.allclose(nll.grad, torch.tensor([[0.0, 0.25, 0.125]]))  # no gradient through the weight


def test_selector_books_kept_fraction_per_step_and_selection_shares():
    rows = [{"input_ids": [0, 1, 2, 3]}, {"input_ids": [0, 1, 2]}]
    sel = online.selector(_method(name="profit"), {})
    sel.bind(rows, torch.nn.Linear(1, 1))
    labels = torch.tensor([[IGNORE, 1, 2, 3], [IGNORE, 1, 2, IGNORE]])
    nll = -torch.log(torch.tensor([[1.0, 0.5, 0.05, 0.5], [1.0, 0.01, 0.9, 1.0]]))
    for step in (0, 0, 1):                                 # two micro-batches in step 1, one in step 2
        sel({}, labels, nll, torch.tensor([0, 1]), step, 4)
    assert sel.record()["kept_fraction_per_step"] == [[1, 0.6], [2, 0.6]]
    assert sel.kept_fraction_since_log(1) == pytest.approx(0.6) and sel.kept_fraction_since_log(1) is None
    shares = online.selection_shares(sel, rows + [{"input_ids": [0, 1]}], [0, 1])
    assert shares["share"][0].tolist() == [0, 1, 0, 1] and shares["visits"] == [3, 3, 0]
    assert np.isnan(shares["share"][2]).all()


def test_da_keeps_only_answer_preserving_paraphrases():
    from xtf.evaluate import normalise
    from xtf.tasks import gsm8k

    examples = [{"id": "a", "prompt": "Q1", "response": " 2 + 2 = 4\n#### 4", "answer": "4"},
                {"id": "b", "prompt": "Q2", "response": " 3 * 3 = 9\n#### 9", "answer": "9", "truth": {}}]
    script = {"a": ["Two plus two is 4.\n#### 4", "Two and two make five\n#### 5"], "b": ["Nine, no marker", ""]}

    def generate(prompts, n):
        assert all(augment.INSTRUCTION.split("\n")[0] in p for p in prompts) and n == 2
        return [script["a"], script["b"]]

    out, record = augment.paraphrase_set(examples, generate, gsm8k.extract_strict, normalise, 2)
    assert [e["id"] for e in out] == ["a", "b", "a-da1"]
    assert out[2] == {"id": "a-da1", "prompt": "Q1", "answer": "4", "response": " Two plus two is 4.\n#### 4"}
    assert record == {"generated": 4, "kept": 1, "rejected": 3, "rejected_no_answer": 2, "rejected_wrong_answer": 1,
                      "examples_before": 2, "examples_after": 3}
    # without a readable answer in the original, the gold answer decides
    assert augment.answer_preserved(gsm8k.extract_strict, normalise, "no marker", "#### 4", "4")


def test_every_method_is_registered_with_its_direction_and_config_validates(run_overrides):
    for name in ("sstoken", "profit", "stm", "dft", "da"):
        cfg = validate(compose([f"method={name}", *run_overrides]))
        assert cfg.method.name == name and name in methods.METHODS
    assert validate(compose(["method=profit"])).method.profit.direction == "keep_higher"
    assert validate(compose(["method=stm"])).method.stm.direction == "mask_higher"
    assert methods.names("online") == ["dft", "profit", "slm", "sstoken"]


TINY = ["model=tiny_llama", "data.limit=16", "task.options.n_test=4", "train.batch_size=4", "train.logging_steps=1",
        "eval.max_new_tokens=8", "method.da.max_new_tokens=24"]


@pytest.mark.parametrize("method", ["sstoken", "profit", "dft", "stm", "da", "sstoken_ema"])
def test_new_methods_end_to_end_on_the_tiny_model(run_overrides, tmp_path, method):
    extra = ["method=sstoken", "method.sstoken.history=ema", "train.save_steps=3"] if method == "sstoken_ema" \
        else [f"method={method}"]
    if method == "profit":  # with injected noise: the detection of an online method is of what it selected
        extra += ["task.options.filler_rate=0.3", "task.options.distractor_rate=0.3"]
    r = run(validate(compose([*run_overrides, *TINY, *extra])))
    assert r["status"] == "complete" and r["training"]["steps"] > 0
    folder = next((tmp_path / "results").rglob("results.json")).parent
    if method in ("sstoken", "profit", "dft", "sstoken_ema"):                 # online: books in the record
        books = r["training"]["online"]
        assert len(books["kept_fraction_per_step"]) == r["training"]["steps"]
        assert all("kept_fraction" in h for h in r["training"]["loss_history"])
        if method.startswith("sstoken"):
            assert all(abs(k - 0.6) < 0.1 for _, k in books["kept_fraction_per_step"])
        assert books["signals"] == (["prompt_attention", "history_nll"] if method == "sstoken_ema" else
                                    ["prompt_attention"] if method == "sstoken" else [])
        assert "selected" in json.loads((folder / "score_summary.json").read_text())["attributes"]
        assert (folder / "selection.npz").is_file()
        if method == "profit":
            assert r["mask"]["detection_mask"].startswith("online") and r["mask"]["kept_fraction"] == 1.0
            overall = r["detection"]["overall"]
            assert 0 < overall["n_masked"] == overall["mask"]["tp"] + overall["mask"]["fp"]  # not "nothing masked"
    if method == "stm":
        assert r["mask"]["rule"]["direction"] == "mask_higher" and r["mask"]["kept_fraction"] < 1.0
    if method == "da":
        a = r["augmentation"]
        assert a["generated"] == 16 and a["kept"] + a["rejected"] == 16 and a["generator"] == "tiny_llama"
        assert a["examples_after"] == 16 + a["kept"] and a["rejected_no_answer"] + a["rejected_wrong_answer"] == \
            a["rejected"]
