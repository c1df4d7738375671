"""The answer format is never noise (issue 28, item 4): a task's protected spans (GSM8K's "#### N" line, MedQA's
answer letter, PubMedQA's closing sentence, the end of sequence) reach the tokenised rows as a per-token
`protected` array and no token-level method masks them under method.protect_answer (the default); off, they can
be masked; the switch is in the run id only when off; xtf_official turns it off (the released code has no such
protection). Crafted scores through xtf.masking.mask on rows from xtf.data's tokenisation: no model, seconds."""

from __future__ import annotations

import dataclasses
import json
import re
from html import unescape

import numpy as np
import pytest
from conftest import compose

from xtf import explain, masking
from xtf.config import MethodConfig, ModelConfig
from xtf.data import tokenize, tokenize_cached
from xtf.methods.stm import STMConfig
from xtf.results import run_id, run_id_fields
from xtf.tasks import gsm8k, medqa, pubmedqa
from xtf.tasks.common import RowChecker
from xtf.validate import validate

GSM8K_ROW = {"question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
                         "May. How many clips did Natalia sell altogether in April and May?",
             "answer": "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips "
                       "altogether in April and May.\n#### 72"}
MEDQA_ROW = {"question": "Which drug?", "answer_idx": "B",
             "options": {"A": "Aspirin", "B": "Nitrofurantoin", "C": "Ceftriaxone", "D": "Doxycycline"}}


@pytest.fixture(scope="module")
def tokenizer(session_cache):
    from xtf.models import load_tokenizer
    from xtf.tiny import build_tiny

    cfg = ModelConfig(name="t", tiny="random", hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128,
                      vocab_size=1024, pretrain_steps=0)
    return load_tokenizer(str(build_tiny(cfg, str(session_cache))))


def gsm8k_example(**options) -> dict:
    return gsm8k.convert(GSM8K_ROW, 0, "train", "row 1", gsm8k.Options(**options), RowChecker("error"))


def protected_text(tokenizer, row: dict) -> str:
    return tokenizer.decode([t for t, p in zip(row["input_ids"], row["protected"]) if p])


def all_noise(row: dict) -> dict[str, list[np.ndarray]]:
    """Scores under which every answer token is noise for KN, STM (perplexity e^9) and TC, protected tokens the
    first TC would drop."""
    n = len(row["input_ids"])
    gap = np.where(np.asarray(row["protected"]), -5.0, 1.0)
    return {"kn": [np.full(n, 0.99)], "nll": [np.full(n, 9.0)], "ref_nll": [np.zeros(n) - gap]}


METHODS = {
    "xtf": MethodConfig(name="xtf", attributes=("kn",)),
    "stm": MethodConfig(name="stm", stm=STMConfig(threshold=2.0)),
    "tc": MethodConfig(name="tc", keep_ratio=0.3),
    "random": MethodConfig(name="random", match=None, ratio=1.0),
    "random_matched": MethodConfig(name="random", match="xtf", attributes=("kn",)),
}


def test_gsm8k_answer_line_and_eos_are_protected_tokens(tokenizer):
    ex = gsm8k_example()
    (row,), stats = tokenize(tokenizer, [ex], 512, "right", False, protect=gsm8k.protected_spans)
    assert protected_text(tokenizer, row) == "#### 72" + tokenizer.eos_token
    assert row["protected"][-1] and len(row["protected"]) == len(row["input_ids"])
    assert not any(p and not m for p, m in zip(row["protected"], row["response_mask"]))  # answer tokens only
    assert stats["protected_tokens"] == sum(row["protected"])
    # without the rule (task=sft, synth, code) rows carry no key; the released text has no "#### N" line, no EOS
    (plain,), _ = tokenize(tokenizer, [ex], 512, "right", False)
    assert "protected" not in plain and plain["input_ids"] == row["input_ids"]
    (released,), _ = tokenize(tokenizer, [gsm8k_example(format="released")], 512, "right", False,
                              protect=gsm8k.protected_spans)
    assert "protected" not in released
    (rationale,), _ = tokenize(tokenizer, [gsm8k_example(target="rationale")], 512, "right", False,
                               protect=gsm8k.protected_spans)
    assert protected_text(tokenizer, rationale) == tokenizer.eos_token


@pytest.mark.parametrize("name", sorted(METHODS))
def test_no_method_masks_the_answer_line_unless_switched_off(tokenizer, name):
    """Every answer token is noise by the crafted scores: the "#### 72" line's tokens (the space after #### too)
    and the EOS stay kept; method.protect_answer=false masks them (no structural exemption: `special` empty)."""
    (row,), _ = tokenize(tokenizer, [gsm8k_example()], 512, "right", False, protect=gsm8k.protected_spans)
    protected, answer = np.asarray(row["protected"]), np.asarray(row["response_mask"], bool)
    method = METHODS[name]
    (keep,), _, stats = masking.mask([row], all_noise(row), method, 0)
    assert keep[protected].all() and stats["protected_tokens"] == protected.sum()
    assert not keep[answer & ~protected].any() or name == "tc"   # everything else is noise ...
    assert keep[answer & ~protected].sum() < (answer & ~protected).sum()  # ... or, for TC, mostly dropped
    (keep,), _, stats = masking.mask([row], all_noise(row), dataclasses.replace(method, protect_answer=False), 0)
    assert not keep[protected].any() and "protected_tokens" not in stats


def test_xtf_counts_the_exempted_protected_tokens(tokenizer):
    (row,), _ = tokenize(tokenizer, [gsm8k_example()], 512, "right", False, protect=gsm8k.protected_spans)
    _, noisy, stats = masking.mask([row], all_noise(row), METHODS["xtf"], 0, frozenset({tokenizer.eos_token_id}))
    assert not (noisy["kn"][0] & np.asarray(row["protected"])).any()
    info = stats["rule"]["kn"]
    assert info["exempted_structural"] == 1 and info["exempted_protected"] == sum(row["protected"]) - 1


def test_medqa_and_pubmedqa_answer_tokens_are_protected(tokenizer):
    med = medqa.convert(MEDQA_ROW, "m0", "row 1", RowChecker("error"))
    pub = pubmedqa.make_example("1", "Does it work?", ["A trial."], "It worked in most patients.", "yes")
    (mrow, prow), _ = tokenize(tokenizer, [med, pub], 512, "right", False, protect=medqa.protected_spans)
    assert protected_text(tokenizer, mrow).strip() == "B" + tokenizer.eos_token
    (prow,), _ = tokenize(tokenizer, [pub], 512, "right", False, protect=pubmedqa.protected_spans)
    assert protected_text(tokenizer, prow).strip() == "The answer is yes." + tokenizer.eos_token
    for row in (mrow, prow):
        (keep,), _, _ = masking.mask([row], all_noise(row), METHODS["stm"], 0)
        assert keep[np.asarray(row["protected"])].all() and keep.sum() == sum(row["protected"])


def test_protected_tokens_survive_the_token_cache_and_key_it(tokenizer, tmp_path):
    examples = [gsm8k_example(), gsm8k_example(target="rationale")]
    direct, _ = tokenize(tokenizer, examples, 512, "right", False, protect=gsm8k.protected_spans)
    cached, stats = tokenize_cached(tokenizer, examples, 512, "right", False, str(tmp_path), "train",
                                    protect=gsm8k.protected_spans)
    again, _ = tokenize_cached(tokenizer, examples, 512, "right", False, str(tmp_path), "train",
                               protect=gsm8k.protected_spans)
    plain, plain_stats = tokenize_cached(tokenizer, examples, 512, "right", False, str(tmp_path), "train")
    assert direct == cached == again and all("protected" in r for r in cached)
    assert all("protected" not in r for r in plain) and plain_stats["cache_key"] != stats["cache_key"]


def test_truncation_cuts_the_protected_array_with_the_row(tokenizer):
    ex = gsm8k_example()
    (full,), _ = tokenize(tokenizer, [ex], 512, "right", False, protect=gsm8k.protected_spans)
    (cut,), _ = tokenize(tokenizer, [ex], len(full["input_ids"]) - 1, "right", False, protect=gsm8k.protected_spans)
    assert cut["protected"] == full["protected"][:-1]


def test_run_id_holds_the_switch_only_when_off():
    default = validate(compose())
    on = validate(compose(["method.protect_answer=true"]))
    off = validate(compose(["method.protect_answer=false"]))
    assert default.method.protect_answer and "protect_answer" not in run_id_fields(default)["method"]
    assert run_id(default) == run_id(on) != run_id(off)
    assert run_id_fields(off)["method"]["protect_answer"] is False


def test_xtf_official_turns_protection_off():
    cfg = validate(compose(["task=gsm8k", "method=xtf_official"]))
    assert cfg.method.protect_answer is False
    from xtf import official

    assert official.RELEASED["method.protect_answer"][0] is False


def test_the_report_outlines_protected_tokens(tokenizer, tmp_path):
    (row,), _ = tokenize(tokenizer, [gsm8k_example()], 512, "right", False, protect=gsm8k.protected_spans)
    keeps, noisy, stats = masking.mask([row], all_noise(row), METHODS["xtf"], 0)
    explain.write_inputs(tmp_path, [row], tokenizer, keeps, noisy, all_noise(row), stats, {"method": "xtf"})
    sample = json.loads((tmp_path / "token_samples.jsonl").read_text())
    assert sample["protected"] == [int(p) for p in row["protected"]]
    html = explain.write_report(tmp_path).read_text()
    outlined = re.findall(r'class="a[^"]*\bpr\b[^"]*"', html)
    assert len(outlined) == 1 + sum(row["protected"])  # each protected token, and the legend's key
    # in the hover title, its quote escaped (the entity's spelling is the template engine's choice)
    assert "protected: the task's answer format" in unescape(html) and "task's" not in html
    off = dataclasses.replace(METHODS["xtf"], protect_answer=False)
    keeps, noisy, stats = masking.mask([row], all_noise(row), off, 0)
    explain.write_inputs(tmp_path, [row], tokenizer, keeps, noisy, all_noise(row), stats, {"method": "xtf"})
    assert "protected" not in json.loads((tmp_path / "token_samples.jsonl").read_text())


def test_online_selection_keeps_protected_tokens(tokenizer):
    """ProFit with a threshold above any probability selects nothing: the protected tokens stay trainable, and
    only they; off, nothing does."""
    import torch

    from xtf import online
    from xtf.methods.profit import ProFitConfig

    (row,), _ = tokenize(tokenizer, [gsm8k_example()], 512, "right", False, protect=gsm8k.protected_spans)
    labels = torch.tensor([[t if m else online.IGNORE for t, m in zip(row["input_ids"], row["response_mask"])]])
    for protect in (True, False):
        selector = online.selector(MethodConfig(name="profit", profit=ProFitConfig(threshold=2.0),
                                                protect_answer=protect), {})
        selector.bind([row], model=None)
        new, _ = selector({}, labels, torch.zeros(labels.shape), torch.tensor([0]), 0, 1)
        expected = np.asarray(row["protected"]) if protect else np.zeros(len(row["input_ids"]), bool)
        assert ((new[0] != online.IGNORE).numpy() == expected).all()
