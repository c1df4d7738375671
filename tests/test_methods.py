"""Every scoring method through the pipeline on the tiny base, the seven XTF attribute subsets, a threshold
sweep that scores once (through `run.py -m`), and the SLM per-batch selection."""

import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, compose

from xtf.methods.slm_step import slm_select
from xtf.pipeline import run
from xtf.train import IGNORE
from xtf.validate import validate

SMALL = ["model.pretrain_steps=40", "train.batch_size=8", "task.options.n_train=64", "task.options.n_test=8",
         "method.reference_warmup=16"]


def small_run(run_overrides, *extra):
    return run(validate(compose([*run_overrides, *SMALL, *extra])))


def test_xtf_records_per_attribute_statistics_and_the_report(run_overrides, tmp_path):
    r = small_run(run_overrides, "method=xtf")
    m = r["mask"]
    assert {"noisy_fraction_ri", "noisy_fraction_kn", "noisy_fraction_tr", "overlaps"} <= set(m)
    assert set(m["overlaps"]) == {"ri&kn", "ri&tr", "kn&tr"}
    noisy_any = 1 - m["kept_fraction"]
    assert max(m[f"noisy_fraction_{a}"] for a in ("ri", "kn", "tr")) <= noisy_any + 1e-9
    assert m["rule"]["kn"]["threshold"] == 0.95 and m["rule"]["tr"]["dropped"]
    folder = next((tmp_path / "results").rglob("results.json")).parent
    assert (folder / "explain" / "index.html").is_file() and (folder / "explain" / "hist_tr.png").is_file()
    summary = json.loads((folder / "score_summary.json").read_text())
    assert set(summary["attributes"]) == {"ri", "kn", "tr"}


@pytest.mark.parametrize("subset", [s for n in (1, 2, 3) for s in itertools.combinations(("ri", "kn", "tr"), n)])
def test_the_seven_attribute_subsets(run_overrides, subset):
    r = small_run(run_overrides, "method=xtf", f"method.attributes=[{','.join(subset)}]")
    assert {k[len("noisy_fraction_"):] for k in r["mask"] if k.startswith("noisy_fraction_")} == set(subset)


def test_baselines_run_with_their_own_rules(run_overrides):
    xtf = small_run(run_overrides, "method=xtf")
    rnd = small_run(run_overrides, "method=random")
    assert rnd["mask"]["kept_tokens"] == xtf["mask"]["kept_tokens"]          # matched ratio, per sample
    tc = small_run(run_overrides, "method=tc")
    assert tc["mask"]["kept_fraction"] == pytest.approx(0.6, abs=0.01) and "reference" in tc["scoring"]["cache_keys"]
    tc_sample = small_run(run_overrides, "method=tc", "method.scope=sample")
    assert tc_sample["mask"]["kept_fraction_per_sample"]["min"] >= 0.5
    df = small_run(run_overrides, "method=df", "method.drop_ratio=0.25")
    assert df["mask"]["rule"]["dropped_samples"] == 16 and df["mask"]["dropped_empty_samples"] == 16
    slm = small_run(run_overrides, "method=slm")
    assert slm["mask"]["kept_fraction"] == 1.0 and slm["training"]["steps"] > 0
    official = small_run(run_overrides, "method=xtf_official")
    assert official["config"]["method"]["ri"]["definition"] == "official"
    for a in ("ri", "kn", "tr"):   # capped: at most ceil(10 %) of each sample's answer tokens per attribute
        assert official["mask"][f"noisy_fraction_{a}"] <= 0.1 + 0.05


def test_slm_keeps_the_top_excess_loss_tokens_of_the_batch():
    nll = torch.tensor([[0.0, 5.0, 1.0, 3.0], [0.0, 2.0, 9.0, 0.6]])
    ref = torch.tensor([[0.0, 1.0, 0.5, 2.9], [0.0, 0.0, 1.0, 0.0]])   # excess: 4, .5, .1 | 2, 8, .6
    labels = torch.tensor([[IGNORE, 7, 8, 9], [IGNORE, 7, IGNORE, 9]])  # 5 trainable tokens; keep round(.6·5)=3
    out = slm_select(nll, ref, labels, 0.6)
    assert out.tolist() == [[IGNORE, 7, IGNORE, IGNORE], [IGNORE, 7, IGNORE, 9]]
    assert (out != IGNORE).sum() == 3 and out[1, 2] == IGNORE          # a masked token is never selected


def test_threshold_sweep_with_multirun_scores_once(tmp_path, session_cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    small = [o for o in SMALL if not o.startswith("method.reference_warmup")]  # XTF reads no reference (unread)
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", "method=xtf", "method.kn.threshold=0.02,0.2,0.95",
           *small, "task.options.n_train=40", "eval.enabled=true", "wandb.mode=disabled",
           f"paths.results_dir={tmp_path / 'results'}", f"paths.outputs_dir={tmp_path / 'out'}",
           f"paths.cache_dir={session_cache}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "results").rglob("results.json")]
    assert len(records) == 3
    computed = sorted(len(r["scoring"]["computed"]) for r in records)
    assert computed == [0, 0, 2]                  # forward + tr once, then zero scoring passes
    kn = {r["config"]["method"]["kn"]["threshold"]: r["mask"]["noisy_fraction_kn"] for r in records}
    assert kn[0.02] >= kn[0.2] >= kn[0.95] and kn[0.02] > kn[0.95]


def test_masks_are_pure_functions_of_scores():
    from xtf.config import MethodConfig
    from xtf.masking import mask

    rows = [{"id": str(i), "input_ids": list(range(8)), "response_mask": [0, 0, 0, 1, 1, 1, 1, 1]} for i in range(6)]
    rng = np.random.default_rng(0)
    scores = {k: [rng.random(8).astype(np.float32) for _ in rows] for k in ("ri", "kn", "tr")}
    method = MethodConfig(name="xtf", attributes=("ri", "kn"))
    a, b = mask(rows, scores, method, 0), mask(rows, scores, method, 1)
    assert all((x == y).all() for x, y in zip(a[0], b[0]))
    assert all(not k[:3].any() for k in a[0])                        # prompt tokens never kept


def test_tc_self_evolving_chain_ranks_within_each_part():
    """evolve=chain, TC's code: ⌊N/R⌋ rows per part (the last N mod R rows in none, never trained on), part 0 the
    warm-up on all its answer tokens, each later part ranked within itself; score_only ranks all parts together.
    Masks only: no model."""
    import numpy as np

    from xtf import masking, rules
    from xtf.config import MethodConfig

    rows = [{"id": str(i), "input_ids": [0, 1, 2, 3], "response_mask": [False, True, True, True]} for i in range(5)]
    # base − reference loss: rows 0-1 (part 0, the warm-up) all lowest, rows 2-3 (part 1) high; row 4 in no part
    gaps = [np.array([0, 0.3, 0.2, 0.1]), np.array([0, 0.6, 0.5, 0.4]), np.array([0, 9, 8, 7.0]),
            np.array([0, 6, 5, 4.0]), np.array([0, 99, 99, 99.0])]
    scores = {"nll": gaps, "ref_nll": [np.zeros(4)] * 5}
    chain = MethodConfig(name="tc", keep_ratio=0.5, rounds=2, evolve="chain")
    keeps, _, info = masking.mask(rows, scores, chain, 0)
    assert [int(k.sum()) for k in keeps] == [3, 3, 3, 0, 0] and info["rule"]["evolve"] == "chain"
    assert info["rule"]["warmup_rows"] == 2 and info["rule"]["rows_outside_parts"] == 1
    parts, outside = rules.evolve_parts(5, 2)
    assert [p.tolist() for p in parts] == [[0, 1], [2, 3]] and outside.tolist() == [4]
    together, _, _ = masking.mask(rows[:4], {k: v[:4] for k, v in scores.items()},
                                  MethodConfig(name="tc", keep_ratio=0.5, rounds=2, evolve="score_only"), 0)
    assert [int(k.sum()) for k in together] == [0, 0, 3, 3]


def test_structural_tokens_are_exempt_unless_asked():
    """EOS (a special id) with PCP 0.99 is KN-noisy only under method.exempt_special=false."""
    import numpy as np

    from xtf import masking
    from xtf.config import MethodConfig

    rows = [{"id": "0", "input_ids": [5, 6, 7, 2], "response_mask": [False, True, True, True]}]
    scores = {"kn": [np.array([0.0, 0.5, 0.99, 0.99])]}
    principled = MethodConfig(name="xtf", attributes=("kn",))
    keeps, _, stats = masking.mask(rows, scores, principled, 0, frozenset({2}))
    assert keeps[0].tolist() == [False, True, False, True]
    assert stats["rule"]["kn"]["exempted_structural"] == 1 and stats["noisy_tokens_kn"] == 1
    keeps, _, _ = masking.mask(rows, scores, MethodConfig(name="xtf", attributes=("kn",), exempt_special=False), 0,
                               frozenset({2}))
    assert keeps[0].tolist() == [False, True, False, False]
