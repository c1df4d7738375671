"""experiments/bench_train.py (make bench-train): its token counting, and that its configurations produce rows
(2 optimizer steps each on a random-init tiny model; the full benchmark is `make bench-train`)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI, load_script

bench = load_script("bench_train")


def test_masks_and_token_counts():
    rows = [{"input_ids": list(range(10)), "response_mask": [False] * 4 + [True] * 6},
            {"input_ids": list(range(7)), "response_mask": [False] * 2 + [True] * 5}]
    normal = bench.keep_masks(rows, "xtf", seed=0)
    half = bench.keep_masks(rows, "xtf_mask", seed=0)
    assert [k.tolist() for k in normal] == [r["response_mask"] for r in rows]
    for r, k in zip(rows, half):
        answer = np.asarray(r["response_mask"])
        assert not (k & ~answer).any() and k[-1]       # only answer tokens; the last one (EOS) always kept
    assert bench.keep_masks(rows, "xtf_mask", seed=0)[0].tolist() == half[0].tolist()  # deterministic
    c = bench.count_tokens(rows, normal)
    assert c == {"rows": 2, "tokens": 17, "answer": 11, "kept": 11, "kept_context": 17}
    h = bench.count_tokens(rows, half)
    assert h["kept_context"] == 17 and h["tokens"] == 17 and 2 <= h["kept"] < 11  # (b): same input tokens


def _measure(config: str, session_cache: Path, monkeypatch) -> dict:
    monkeypatch.delenv("XTF_DATA_DIR", raising=False)  # the synthetic task: no data folder needed
    return bench.measure(config, "tiny_llama", "lora", steps=2, warmup=1, threads=1,
                         extra=(f"paths.cache_dir={session_cache}", "train.logging_steps=1"))


def _check(r: dict) -> None:
    assert r["steps"] == 2 and r["timed_steps"] == 1
    # Every row is processed once in the epoch: the decoder saw exactly the data's tokens (no pad counted).
    assert r["nonpad_all_steps"] == r["data"]["tokens"]
    assert 0 < r["nonpad_tokens"] <= r["positions"] and r["tokens_per_s"] > 0 and r["peak_mib"] > 0
    assert r["kc_tokens"] == pytest.approx(r["nonpad_tokens"])  # every row ends with a kept token


def test_harness_and_hf_rows(session_cache, monkeypatch):
    res = [_measure(c, session_cache, monkeypatch) for c in ("xtf", "hf")]
    for r in res:
        _check(r)
    assert res[0]["data"] == res[1]["data"]  # the same rows for both
    res = bench.ratios(res)
    assert res[1]["speed_vs_hf"] == pytest.approx(1.0)
    lines = bench.table(res)
    assert len(lines) == 4 and "(a) xtf normal" in lines[2] and "(d) HF Trainer" in lines[3]


def test_trl_rows(session_cache, monkeypatch):
    if importlib.util.find_spec("trl") is None:
        if IN_CI:
            pytest.fail("trl is not installed (the `bench` extra) — required under CI=true")
        pytest.skip("trl is not installed: pip install -c constraints.txt -e '.[bench]' (make bench-train does)")
    r = _measure("trl", session_cache, monkeypatch)
    _check(r)
    assert r["data"]["kept"] == r["data"]["answer"]
