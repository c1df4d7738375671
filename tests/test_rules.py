"""The pure mask rules (xtf/rules.py) pinned on hand-made arrays; each expected answer is worked out by hand.

    .venv/bin/python -m pytest tests/test_rules.py -q
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import threshold_multiotsu

from xtf import rules

NAN = float("nan")


# --- RI: per-sample Tukey low fence -----------------------------------------------------------------------------------

def test_fence_single_outlier():
    # sorted [0.1, 1 x8], n=9: Q1 at index 0.25*8=2 → 1, Q3 at index 6 → 1, IQR 0 → fence = 1 for any k.
    noisy, fence = rules.ri_fence_noisy(np.array([1.0] * 8 + [0.1]), k=1.5)
    assert fence == 1.0
    assert noisy.tolist() == [False] * 8 + [True]


def test_fence_k_matters():
    # [0, 2, ..., 16], n=9: Q1 = 4 (index 2), Q3 = 12 (index 6), IQR = 8.
    v = np.arange(0, 18, 2, dtype=float)
    noisy, fence = rules.ri_fence_noisy(v, k=0.0)      # fence = Q1 = 4: 0 and 2 strictly below; 4 is not
    assert fence == 4.0 and noisy.tolist() == [True, True] + [False] * 7
    noisy, fence = rules.ri_fence_noisy(v, k=0.25)     # fence = 4 - 2 = 2: only 0 (2 is on the fence: kept)
    assert fence == 2.0 and noisy.tolist() == [True] + [False] * 8
    noisy, fence = rules.ri_fence_noisy(v, k=1.5)      # fence = 4 - 12 = -8: nothing
    assert fence == -8.0 and not noisy.any()
    v[0] = -20.0                                        # sorted [-20, 2, ..., 16]: same quartiles, -20 < -8
    noisy, fence = rules.ri_fence_noisy(v, k=1.5)
    assert fence == -8.0 and noisy.tolist() == [True] + [False] * 8
    noisy, _ = rules.ri_fence_noisy(v, k=100.0)        # fence = 4 - 800: nothing
    assert not noisy.any()


def test_fence_short_and_nan():
    for v in ([], [0.0], [0.0, 100.0, 100.0]):         # < 4 tokens: quartiles meaningless → nothing noisy
        noisy, fence = rules.ri_fence_noisy(np.array(v), k=1.5)
        assert fence == float("-inf") and noisy.shape == (len(v),) and not noisy.any()
    # 4 tokens [0, 10, 10, 10]: Q1 at index 0.75 → 7.5, Q3 at index 2.25 → 10; fence = 7.5 - 1.5*2.5 = 3.75
    noisy, fence = rules.ri_fence_noisy(np.array([0.0, 10, 10, 10]), k=1.5)
    assert fence == 3.75 and noisy.tolist() == [True, False, False, False]
    # NaN: left out of the quartiles, never noisy; 3 finite values left → too short
    noisy, fence = rules.ri_fence_noisy(np.array([0.0, 10, 10, NAN]), k=1.5)
    assert fence == float("-inf") and not noisy.any()
    noisy, fence = rules.ri_fence_noisy(np.array([0.0, 10, 10, 10, NAN]), k=1.5)
    assert fence == 3.75 and noisy.tolist() == [True, False, False, False, False]


# --- KN: strict PCP cut -----------------------------------------------------------------------------------------------

def test_kn_strict():
    pcp = np.array([0.5, 0.95, 0.951, 1.0, NAN])
    assert rules.kn_noisy(pcp, 0.95).tolist() == [False, False, True, True, False]


# --- TR: global Multi-Otsu --------------------------------------------------------------------------------------------

def _clumps():
    # 5 well-separated clumps around 0.0, 0.2, 0.4, 0.6, 0.8 (±0.02), of 10..14 values; cluster c = clump c.
    parts = [np.linspace(0.2 * c - 0.02, 0.2 * c + 0.02, 10 + c) for c in range(5)]
    clump = np.concatenate([np.full(p.size, c) for c, p in enumerate(parts)])
    rng = np.random.default_rng(0)
    order = rng.permutation(clump.size)                # shuffled: the rule must not depend on order
    return np.concatenate(parts)[order], clump[order]


@pytest.mark.parametrize("drop, dropped", [("second_lowest", [1]), ("lowest", [0]), ("two_lowest", [0, 1])])
def test_otsu_cluster_choice(drop, dropped):
    values, clump = _clumps()
    noisy, info = rules.tr_otsu_noisy(values, classes=5, drop=drop, nbins=32)  # nbins=32: milliseconds
    assert not info["degenerate"] and info["dropped"] == dropped
    assert noisy.tolist() == np.isin(clump, dropped).tolist()
    assert len(info["cuts"]) == 4
    # the clumps are symmetric around their centres, so each cluster mean is its centre 0.2c
    assert np.allclose(info["cluster_means"], [0.0, 0.2, 0.4, 0.6, 0.8])
    lo, hi = info["interval"]
    assert lo == pytest.approx(0.2 * dropped[0] - 0.02) and hi == pytest.approx(0.2 * dropped[-1] + 0.02)


def test_otsu_cuts_are_skimage_cuts():
    # our histogram is skimage's own for float input, so the threshold bins agree with a direct call; the
    # applied cut is the upper edge of that bin: centre + half a bin width
    x = np.concatenate([np.random.default_rng(1).normal(m, 0.3, 200) for m in (0.0, 1.0, 2.0, 4.0)])
    _, info = rules.tr_otsu_noisy(x, classes=4, drop="lowest", nbins=24)
    assert np.allclose(info["cut_centers"], threshold_multiotsu(x, classes=4, nbins=24))
    half = (x.max() - x.min()) / 24 / 2
    assert np.allclose(np.array(info["cuts"]) - info["cut_centers"], half)


def test_otsu_nan_never_noisy():
    values, clump = _clumps()
    values = np.append(values, NAN)
    noisy, info = rules.tr_otsu_noisy(values, classes=5, drop="second_lowest", nbins=32)
    assert not noisy[-1] and noisy[:-1].tolist() == (clump == 1).tolist()


def test_otsu_degenerate():
    for v in ([], [0.1, 0.2, 0.3, 0.3], [NAN] * 10):  # empty; 3 distinct values < 5 classes; nothing finite
        noisy, info = rules.tr_otsu_noisy(np.array(v), classes=5, drop="second_lowest", nbins=32)
        assert info["degenerate"] and noisy.shape == (len(v),) and not noisy.any()
    # 5 distinct values but only 3 occupied bins after binning: skimage's ValueError → degenerate
    noisy, info = rules.tr_otsu_noisy(np.array([0.0, 1e-6, 2e-6, 0.5, 1.0]), classes=5, drop="lowest", nbins=8)
    assert info["degenerate"] and not noisy.any()
    with pytest.raises(ValueError, match="drop"):
        rules.tr_otsu_noisy(np.array([0.0, 1.0]), classes=2, drop="highest")


@pytest.mark.slow
def test_otsu_default_bins_same_clusters():  # ~4 s: skimage's search is O(nbins^(classes-1))
    values, clump = _clumps()
    noisy, info = rules.tr_otsu_noisy(values, classes=5, drop="second_lowest")
    assert info["nbins"] == 256 and noisy.tolist() == (clump == 1).tolist()


# --- the released code's caps and TR threshold (xtf_official) --------------------------------------------------

def test_released_ri_cap_only_when_the_fence_flags_more_than_the_fraction():
    v = np.array([0.3, 0.1, 0.5, 0.1, 0.2, 0.9, 0.8, 0.7, 0.6, 0.4])
    few = np.array([0, 1, 0, 0, 0, 0, 0, 0, 0, 0], bool)          # 10 % flagged, not MORE than 0.1: unchanged
    assert rules.cap_ri_released(v, few, 0.1).tolist() == few.tolist()
    many = np.array([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], bool)         # 50 % > 0.2: bound = sorted(v)[int(10·0.2)] = 0.2
    assert np.flatnonzero(rules.cap_ri_released(v, many, 0.2)).tolist() == [1, 3]   # v < 0.2, ties at the cut kept
    # 0.1 → bound sorted(v)[1] = 0.1: nothing is < 0.1, so the cap can flag NOTHING (both 0.1s tie at the cut)
    assert not rules.cap_ri_released(v, many, 0.1).any()
    assert not rules.cap_ri_released(np.array([]), np.array([], bool), 0.1).any()


def test_released_kn_cap_allows_ceil_minus_one():
    v = np.linspace(0.96, 0.999, 30)                               # all above 0.95
    noisy = rules.kn_noisy(v, 0.95)
    assert noisy.all()
    # int(30 · 0.9) = 27 → v > sorted(v)[27]: positions 28, 29 — 2 = ceil(3) - 1 tokens
    assert np.flatnonzero(rules.cap_kn_released(v, noisy, 0.1)).tolist() == [28, 29]
    # n = 25: int(22.5) = 22 → 2 tokens = ceil(2.5) - 1
    assert rules.cap_kn_released(v[:25], noisy[:25], 0.1).sum() == 2
    # never adds a token that was not noisy
    assert not rules.cap_kn_released(v, np.zeros(30, bool), 0.1).any()


def test_released_tr_cap_allows_floor():
    v = np.arange(30, dtype=float)
    assert np.flatnonzero(rules.cap_tr_released(v, np.ones(30, bool), 0.1)).tolist() == [0, 1, 2]   # int(3.0) = 3
    assert rules.cap_tr_released(v[:25], np.ones(25, bool), 0.1).sum() == 2                          # int(2.5) = 2
    assert rules.cap_tr_released(v[:9], np.ones(9, bool), 0.1).sum() == 0                            # int(0.9) = 0
    assert set(rules.RELEASED_PERCENTAGES) == {"script", "main"}
    assert rules.RELEASED_PERCENTAGES["main"] == (0.05, 0.1, 0.05)


def test_released_tr_threshold_cumulative_proportion():
    values, _ = _clumps()
    thr, info = rules.tr_released_threshold(values, classes=4, weight=1.0)
    # proportions of values >= each threshold: p0 alone is <= 1, p0 + p1 > 1 at i = 1 → thresholds[0]
    assert info["chosen"] == 0 and thr == info["thresholds"][0]
    assert info["proportions"][0] + info["proportions"][1] > 1.0 >= info["proportions"][0]
    # a large weight is never exceeded → the last threshold
    thr, info = rules.tr_released_threshold(values, classes=4, weight=5.0)
    assert info["chosen"] == 2 and thr == info["thresholds"][-1]
    assert rules.tr_released_threshold(np.array([0.5]), 3, 1.0)[0] == 0.0  # the script's initial value


def test_ri_scaled_log_makes_the_fence_reachable():
    # right-skewed RI (1.0 = uniform attention): spread over decades, one token almost ignored (0.005)
    ri = np.array([0.2, 0.3, 0.5, 0.8, 1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 0.005])
    noisy, fence = rules.ri_fence_noisy(ri, 1.5)
    assert fence < 0 and not noisy.any()                    # raw: Q1 - 1.5·IQR < 0 <= RI, the fence never fires
    noisy, fence = rules.ri_fence_noisy(rules.ri_scaled(ri, "log"), 1.5)
    assert np.flatnonzero(noisy).tolist() == [10]
    assert np.isnan(rules.ri_scaled(np.array([np.nan]), "log")[0])
    assert rules.ri_scaled(np.array([0.0]), "log")[0] == np.log(1e-12)
    with pytest.raises(ValueError):
        rules.ri_scaled(ri, "sqrt")


# --- union ------------------------------------------------------------------------------------------------------------

def test_union():
    a, b, c = np.array([1, 0, 0, 0], bool), np.array([0, 1, 0, 0], bool), np.array([1, 0, 0, 1], bool)
    assert rules.union([a, b, c]).tolist() == [True, True, False, True]
    assert rules.union([a]).tolist() == a.tolist()
    with pytest.raises(ValueError):
        rules.union([])
    with pytest.raises(ValueError):
        rules.union([a, np.zeros(3, bool)])


# --- TC: top-k --------------------------------------------------------------------------------------------------------

def test_top_k_global_vs_sample():
    s = [np.array([5.0, 4, 3, 2]), np.array([1.0, NAN])]
    # global: 6 tokens * 0.5 = 3 → 5, 4, 3 (all in sample 0); sample 1 loses everything
    g = rules.top_k_keep(s, 0.5, "global")
    assert [k.tolist() for k in g] == [[True, True, True, False], [False, False]]
    # sample: int(4 · 0.5) = 2 → 5, 4; int(2 · 0.5) = 1 → 1.0 (NaN is never kept)
    p = rules.top_k_keep(s, 0.5, "sample")
    assert [k.tolist() for k in p] == [[True, True, False, False], [True, False]]


def test_top_k_ties_nan_rounding():
    s = [np.array([3.0, 3, 1]), np.array([3.0, 0])]
    # global: int(5 * 0.4) = 2 among the three 3s → sample 0 first, positions 0 and 1
    assert [k.tolist() for k in rules.top_k_keep(s, 0.4, "global")] == [[True, True, False], [False, False]]
    # sample, Token Cleaning's floor: int(3 · 0.4) = 1 → position 0; int(2 · 0.4) = 0 → nothing (round would keep 1)
    assert [k.tolist() for k in rules.top_k_keep(s, 0.4, "sample")] == [[True, False, False], [False, False]]
    # int(0.1 · 3) = 0 → nothing; an all-NaN sample keeps nothing; an empty sample stays empty
    out = rules.top_k_keep([np.array([1.0, 2, 3]), np.array([NAN, NAN]), np.array([])], 0.1, "sample")
    assert [k.tolist() for k in out] == [[False, False, False], [False, False], []]
    # int(5 · 0.5) = 2 where round half up would give 3
    assert rules.top_k_keep([np.arange(5.0)], 0.5, "sample")[0].sum() == 2
    # global: int(0.5 * 5) = 2 of the 5 tokens (NaN ones count in n, as TC counts every answer token)
    out = rules.top_k_keep([np.array([1.0, NAN, 2]), np.array([NAN, NAN])], 0.5, "global")
    assert [k.tolist() for k in out] == [[True, False, True], [False, False]]
    # global, Token Cleaning's floor: int(5 · 0.5) = 2 (round half up would keep 3); int(1556 · 0.6) = 933
    assert sum(int(k.sum()) for k in rules.top_k_keep([np.arange(3.0), np.arange(2.0)], 0.5, "global")) == 2
    assert sum(int(k.sum()) for k in rules.top_k_keep([np.arange(1556.0)], 0.6, "global")) == 933
    assert rules.top_k_keep([], 0.5, "global") == []


# --- random control ---------------------------------------------------------------------------------------------------

def test_random_matched_counts_and_seeds():
    n_answer, n_mask = [10, 0, 5, 7, 100], [3, 0, 5, 0, 40]
    keeps = rules.random_matched(n_mask, n_answer, seed=0)
    assert [k.size for k in keeps] == n_answer
    assert [int((~k).sum()) for k in keeps] == n_mask
    again = rules.random_matched(n_mask, n_answer, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(keeps, again))
    other = rules.random_matched(n_mask, n_answer, seed=1)
    assert not np.array_equal(keeps[-1], other[-1])   # 40 of 100: a collision has probability ~1e-28
    with pytest.raises(ValueError):
        rules.random_matched([4], [3], seed=0)
    with pytest.raises(ValueError):
        rules.random_matched([1, 1], [3], seed=0)


def test_random_ratio():
    # round(0.3 * n), half up: 10 → 3, 5 → 1.5 → 2, 1 → 0.3 → 0, 0 → 0
    keeps = rules.random_ratio([10, 5, 1, 0], 0.3, seed=7)
    assert [int((~k).sum()) for k in keeps] == [3, 2, 0, 0]


# --- DF ---------------------------------------------------------------------------------------------------------------

def test_df_drops_highest_loss():
    losses = np.array([1.0, 5.0, 3.0, 5.0, 2.0])
    assert rules.df_keep_samples(losses, 0.4).tolist() == [True, False, True, False, True]  # round(2): both 5s
    assert rules.df_keep_samples(losses, 0.2).tolist() == [True, False, True, True, True]   # 1: tie → earlier
    assert rules.df_keep_samples(losses, 0.0).all()
    assert rules.df_keep_samples(losses, 0.5).tolist() == [True, False, False, False, True]  # 2.5 → 3: 5, 5, 3
    with pytest.raises(ValueError):
        rules.df_keep_samples(np.array([1.0, NAN]), 0.5)


# --- overlaps ---------------------------------------------------------------------------------------------------------

def test_overlaps():
    a = np.array([1, 1, 1, 0, 0, 0], bool)
    b = np.array([0, 1, 1, 1, 1, 0], bool)
    z = np.zeros(6, bool)
    out = rules.overlaps({"ri": a, "kn": b, "tr": z})
    assert list(out) == ["ri&kn", "ri&tr", "kn&tr"]
    # |A| = 3, |B| = 4, |A∩B| = 2, |A∪B| = 5
    ab = out["ri&kn"]
    assert ab["jaccard"] == pytest.approx(0.4) and ab["of_a"] == pytest.approx(2 / 3)
    assert ab["of_b"] == pytest.approx(0.5) and ab["overlap_min"] == pytest.approx(2 / 3)
    assert (ab["n_a"], ab["n_b"], ab["n_both"]) == (3, 4, 2)
    # an empty set: every ratio with a zero denominator is 0.0 (jaccard's denominator |A| = 3 is not zero)
    assert out["ri&tr"] == {"jaccard": 0.0, "of_a": 0.0, "of_b": 0.0, "overlap_min": 0.0, "n_a": 3, "n_b": 0,
                            "n_both": 0}
    assert rules.overlaps({"ri": a}) == {}
