"""The paired bootstrap (xtf.paired) on cases whose answer is known: a constant difference d gives [d, d];
symmetric noise covers 0; pairing cancels what questions share; resampling within seeds keeps each seed's share;
mismatched question ids are refused; and the evaluation writes each question's answer NLL to predictions.jsonl."""

import numpy as np
import pytest

from xtf.paired import PairingError, accuracy_refusal, pair, paired_bootstrap, verdict


def test_a_constant_difference_has_a_zero_width_interval():
    a = np.linspace(1.0, 3.0, 50)
    d = paired_bootstrap(a + 0.25, a)
    assert d.diff == pytest.approx(0.25) and d.low == pytest.approx(0.25) and d.high == pytest.approx(0.25)
    assert d.excludes_zero and d.n_questions == 50 and d.n_resamples == 10_000 and d.seed == 0
    assert d.method() == "paired bootstrap over 50 questions, 10,000 resamples, seed 0"


def test_symmetric_noise_covers_zero_and_a_clear_shift_does_not():
    rng = np.random.default_rng(1)
    base = rng.normal(size=200)
    noise = np.where(np.arange(200) % 2 == 0, 1.0, -1.0)  # mean exactly 0
    d = paired_bootstrap(base + noise, base)
    assert d.diff == pytest.approx(0.0, abs=1e-12) and d.low < 0 < d.high and not d.excludes_zero
    assert d.low == pytest.approx(-d.high, abs=0.05)      # symmetric around 0
    assert "includes 0" in verdict(d, "xtf", "normal", lower_is_better=True)
    shifted = paired_bootstrap(base + noise - 0.5, base)
    assert shifted.high < 0 and "excludes 0: xtf is lower than normal (better)" in verdict(shifted, "xtf", "normal",
                                                                                           lower_is_better=True)


def test_pairing_cancels_what_the_questions_share():
    """Questions differ a lot (std 10), the runs by 0.1 ± 0.01: paired, the interval is tight around 0.1."""
    rng = np.random.default_rng(2)
    hard = rng.normal(scale=10.0, size=100)
    d = paired_bootstrap(hard + 0.1 + rng.normal(scale=0.01, size=100), hard)
    assert 0.09 < d.low < d.high < 0.11


def test_same_seed_gives_the_same_interval_and_weights_give_the_token_weighted_mean():
    a, b = [1.0, 2.0, 4.0, 0.5] * 10, [1.0, 1.0, 1.0, 1.0] * 10
    assert paired_bootstrap(a, b) == paired_bootstrap(a, b)
    w = [1, 1, 2, 4] * 10
    d = paired_bootstrap(a, b, weights_a=w, weights_b=w)
    assert d.diff == pytest.approx((1 + 2 + 8 + 2) / 8 - 1)


def test_questions_are_resampled_within_seeds():
    """Seed 0: every difference 1; seed 1: every difference 0. Resampled within seeds, every resample keeps half of
    each: the interval is [0.5, 0.5]. Pooled resampling would not."""
    diff = np.array([1.0] * 30 + [0.0] * 30)
    within = paired_bootstrap(diff, np.zeros(60), strata=[0] * 30 + [1] * 30)
    assert within.low == pytest.approx(0.5) and within.high == pytest.approx(0.5) and within.n_strata == 2
    assert "60 (seed, question) pairs of 2 seeds, questions resampled within each seed" in within.method()
    pooled = paired_bootstrap(diff, np.zeros(60))
    assert pooled.low < 0.45 and pooled.high > 0.55


def test_pairing_refuses_different_question_ids():
    assert pair({"q1": 1, "q2": 0}, {"q2": 1, "q1": 1}) == ["q1", "q2"]
    with pytest.raises(PairingError, match=r"xtf with normal: their question ids differ \(2 vs 2 questions; only in "
                                           r"xtf: 1 \['q3'\]; only in normal: 1 \['q2'\]"):
        pair({"q1": 1, "q3": 0}, {"q1": 1, "q2": 1}, "xtf", "normal")
    with pytest.raises(PairingError, match="no question recorded"):
        pair({}, {})


def test_accuracy_is_refused_at_the_floor_or_with_few_questions():
    assert accuracy_refusal([0] * 40, [0] * 40) == "neither run answered any of the 40 questions correctly"
    assert accuracy_refusal([1] + [0] * 9, [0] * 10) == "only 10 paired questions (at least 20 needed)"
    assert accuracy_refusal([1] + [0] * 39, [0] * 40) is None


def test_the_evaluation_records_each_questions_answer_nll():
    from xtf.evaluate import with_answer_nll

    predictions = [{"id": "a", "correct_strict": True}, {"id": "b", "correct_strict": False}]
    merged = with_answer_nll(predictions, {"a": (1.5, 3), "b": (0.5, 2)})
    assert merged == [{"id": "a", "correct_strict": True, "answer_nll": 1.5, "answer_tokens": 3},
                      {"id": "b", "correct_strict": False, "answer_nll": 0.5, "answer_tokens": 2}]
    # your own data (task=sft) has no other per-question prediction: one row per question, its NLL
    assert with_answer_nll([], {"a": (1.5, 3)}) == [{"id": "a", "answer_nll": 1.5, "answer_tokens": 3}]
