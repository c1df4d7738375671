"""Scorers on tiny models: RI's reduction equals the formula on eager attentions, the released definition is
≈ 1/L within a sample, PCP = exp(-nll) aligned to tokens, TR is context-free, and the score cache."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import reference_ri

from xtf.config import ModelConfig
from xtf.models import load_model, load_tokenizer
from xtf.scoring import _batches, cached_scores, forward_scores, tr_scores


@pytest.fixture(scope="module")
def tiny(session_cache):
    from xtf.tiny import build_tiny

    cfg = ModelConfig(name="t", tiny="random", hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128,
                      vocab_size=1024, pretrain_steps=0)
    weights = str(build_tiny(cfg, str(session_cache)))
    model = load_model(dataclasses.replace(cfg, attn_implementation="eager"), weights, torch.device("cpu")).eval()
    return model, load_tokenizer(weights)


@pytest.fixture(scope="module")
def pretrained(session_cache):
    """The tiny base of the pipeline tests (same spec → built once per session): its attention is not uniform."""
    from xtf.tiny import build_tiny

    cfg = ModelConfig(name="tiny", tiny="pretrained", pretrain_steps=40)
    weights = str(build_tiny(cfg, str(session_cache)))
    return load_model(cfg, weights, torch.device("cpu")).eval(), load_tokenizer(weights)


def _rows(tok, texts):
    rows = []
    for t in texts:
        ids = tok(t)["input_ids"]
        rows.append({"id": t, "input_ids": ids, "response_mask": [False] + [True] * (len(ids) - 1)})
    return rows


def test_ri_received_matches_the_formula_with_padding_and_chunks(tiny):
    model, tok = tiny
    rows = _rows(tok, ["Ann has 12 apples. She buys 7 more.", "3 + 4 = 7.", "I hope this helps! The answer is 9."])
    scores = forward_scores(model, rows, tok.pad_token_id, batch_size=3, ri_definition="received", query_chunk=4)
    for row, ri in zip(rows, scores["ri"]):
        expected = reference_ri(model, row["input_ids"])
        assert ri.shape == (len(row["input_ids"]),)
        np.testing.assert_allclose(ri[:-1], expected[:-1], rtol=1e-4)
        assert np.isnan(ri[-1])                      # no later query for the last token


def test_batches_by_token_budget_give_the_same_scores(tiny):
    """eval.forward_batch_tokens: batches of <= N padded positions instead of batch_size rows; every score is the
    same to float rounding, and the last token's RI is NaN in both."""
    model, tok = tiny
    rows = _rows(tok, ["Ann has 12 apples. She buys 7 more and gives 3 away.", "3 + 4 = 7.", "The answer is 9.",
                       "I hope this helps!"])
    by_rows = forward_scores(model, rows, tok.pad_token_id, 4, "received", query_chunk=4)
    by_tokens = forward_scores(model, rows, tok.pad_token_id, 4, "received", query_chunk=4, batch_tokens=16)
    assert _batches(rows, 4, 16) != _batches(rows, 4) and max(map(len, _batches(rows, 4, 16))) < 4
    for name in ("nll", "kn", "ri"):
        for a, b in zip(by_rows[name], by_tokens[name]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_official_ri_is_one_over_length_within_a_sample_and_default_is_not(pretrained):
    model, tok = pretrained
    rows = _rows(tok, ["Let's think step by step. 12 + 7 = 19. 19 - 5 = 14. The answer is 14."])
    n = len(rows[0]["input_ids"])
    official = forward_scores(model, rows, tok.pad_token_id, 1, "official")["ri"][0]
    received = forward_scores(model, rows, tok.pad_token_id, 1, "received")["ri"][0]
    np.testing.assert_allclose(official, 1.0 / n, rtol=1e-4)      # constant: picks tokens by rounding noise
    assert np.nanstd(received[1:-1]) / np.nanmean(received[1:-1]) > 0.05


def test_pcp_is_exp_minus_nll_aligned_to_input_ids(tiny):
    model, tok = tiny
    rows = _rows(tok, ["Great question!", "12 + 7 = 19. 19 - 5 = 14."])
    s = forward_scores(model, rows, tok.pad_token_id, 2, None)
    assert "ri" not in s
    for row, nll, kn in zip(rows, s["nll"], s["kn"]):
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0].double(), -1)
        t = len(row["input_ids"]) - 1                                  # token t is predicted by logits[t - 1]
        assert nll[t] == pytest.approx(-logp[t - 1, row["input_ids"][t]].item(), abs=1e-4)
        assert nll[0] == 0 and np.allclose(kn, np.exp(-nll))


def test_tr_is_context_free_and_bounded(tiny):
    model, tok = tiny
    bos = tok.bos_token_id
    rows = [{"id": "a", "input_ids": [bos, 40, 41, 42]}, {"id": "b", "input_ids": [bos, 50, 42]}]
    tr = tr_scores(model, tok, rows, ("1", "2", "+", "=", "maths"))["tr"]
    assert tr[0][3] == pytest.approx(tr[1][2])                         # token 42: same score in any context
    assert tr[0][1] != pytest.approx(tr[0][2])
    assert all(np.all(np.abs(t) <= 1 + 1e-6) for t in tr)


def test_score_cache_computes_once_and_rebuilds_when_corrupted(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"kn": [np.array([0.5, 0.25], np.float32), np.array([1.0], np.float32)]}

    a, fresh_a, _ = cached_scores(str(tmp_path), {"k": 1}, compute)
    b, fresh_b, _ = cached_scores(str(tmp_path), {"k": 1}, compute)
    assert (fresh_a, fresh_b, len(calls)) == (True, False, 1)
    assert [x.tolist() for x in b["kn"]] == [[0.5, 0.25], [1.0]]
    (npz,) = tmp_path.rglob("scores.npz")
    npz.write_bytes(npz.read_bytes()[:50])                             # truncated by a crash
    c, fresh_c, _ = cached_scores(str(tmp_path), {"k": 1}, compute)
    assert fresh_c and len(calls) == 2 and [x.tolist() for x in c["kn"]] == [[0.5, 0.25], [1.0]]
