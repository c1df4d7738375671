"""Pure numeric mask rules (numpy, plus scikit-image for Multi-Otsu): no torch, no I/O.

A *per-sample array* is a 1-D array over ONE sample's ANSWER tokens only, in answer order (the caller extracts
the answer positions from the input_ids-aligned scores and scatters the result back). "Noisy" masks are True
where a token gets no loss; "keep" masks are True where it does. Every rule is deterministic.

    .venv/bin/python -m pytest tests/test_rules.py -q      # the hand-computed cases that pin each rule
"""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np

_EPS = 1e-9  # guards ceil/round against float error, e.g. 0.1 * 30 = 3.0000000000000004


def _round_half_up(x: float) -> int:
    """round(x) with halves rounded up (2.5 → 3), not Python's half-to-even; x >= 0."""
    return int(math.floor(x + 0.5 + _EPS))


def ri_fence_noisy(values: np.ndarray, k: float) -> tuple[np.ndarray, float]:
    """RI: per-sample Tukey low fence. `values`: (n,) RI scores of one sample's answer tokens.

    fence = Q1 - k·(Q3 - Q1), Q1/Q3 = np.percentile(finite values, [25, 75], method="linear"); noisy = value < fence
    (strict: a value on the fence is kept). Non-finite values (e.g. a last token no later query attends to) are
    never noisy and do not enter the quartiles. With fewer than 4 finite values nothing is noisy and
    fence = -inf: quartiles of 1-3 points are interpolations between the points themselves, so "below Q1"
    would just mean "the smallest token". Returns (noisy (n,) bool, fence)."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if int(finite.sum()) < 4:
        return np.zeros(values.shape, dtype=bool), float("-inf")
    q1, q3 = np.percentile(values[finite], [25, 75], method="linear")
    fence = float(q1 - k * (q3 - q1))
    return finite & (values < fence), fence


def ri_scaled(values: np.ndarray, scale: str) -> np.ndarray:
    """RI on the scale its fence is computed on. "raw": unchanged. "log": natural log of max(RI, 1e-12).
    Why log: RI ("received", 1.0 = uniform attention) is >= 0 and right-skewed — a few tokens draw many times
    the uniform share — so on the raw scale Q1 - 1.5·IQR lies below 0 in practically every sample and the
    fence never fires; on the log scale the distribution is near-symmetric and the low tail is reachable.
    NaN (no later query) stays NaN. Returns float64, same shape."""
    values = np.asarray(values, dtype=np.float64)
    if scale == "raw":
        return values
    if scale == "log":
        return np.log(np.maximum(values, 1e-12))
    raise ValueError(f"scale={scale!r}; choose 'raw' or 'log'")


def kn_noisy(pcp: np.ndarray, threshold: float) -> np.ndarray:
    """KN: noisy = PCP > threshold (strict; PCP = P(gold token | prefix) in [0, 1], so PCP == threshold is
    kept). NaN is never noisy. Shape preserved."""
    pcp = np.asarray(pcp, dtype=np.float64)
    return np.greater(pcp, threshold, where=~np.isnan(pcp), out=np.zeros(pcp.shape, dtype=bool))


def tr_otsu_noisy(values_all: np.ndarray, classes: int, drop: str, nbins: int = 256) -> tuple[np.ndarray, dict]:
    """TR: GLOBAL Multi-Otsu over the task-relevance scores of ALL answer tokens of the dataset.

    `values_all`: (N,) cosine scores, the 1-D concatenation of every sample's answer tokens. Non-finite values
    are left out of the fit and are never noisy.
    Histogram: np.histogram(finite values, nbins, range=(min, max)), normalised — what skimage builds itself for
    float input. skimage.filters.threshold_multiotsu(hist=...) picks the classes - 1 threshold bins that
    maximise the between-class variance; a threshold bin is the LAST bin of its lower class. The cut applied to
    the raw values is that bin's UPPER EDGE, so token clusters are exactly the histogram classes that Otsu
    optimised (skimage's image example digitizes at the returned bin CENTRE, which splits the threshold bin's
    values between two classes: with coarse bins that moves whole chunks of a clump). Cluster id =
    np.digitize(value, cuts) in [0, classes): value < cuts[0] → 0, cuts[i-1] <= value < cuts[i] → i,
    matching np.histogram's half-open bins. Clusters are ranked by the mean of their values (clusters are
    value intervals, so this is their order; empty clusters are unranked). drop: "second_lowest" → the cluster
    with the 2nd-smallest mean is noisy (the paper: the smallest is mostly whitespace pieces); "lowest" → the
    smallest; "two_lowest" → both.
    Degenerate input (empty, fewer distinct finite values than `classes`, fewer than `classes` occupied
    histogram bins, or fewer non-empty clusters than the drop rule needs): nothing is noisy,
    info["degenerate"] = True, no exception.

    Cost: skimage's search is O(nbins^(classes-1)), independent of N: classes=5 takes ~4 s at nbins=256,
    classes=6 ~2 min; the histogram is ~50 ms for 5M values.
    Returns (noisy (N,) bool, info = {"cuts" (the applied edges), "cut_centers" (skimage's return value),
    "cluster_means" (None for an empty cluster), "dropped" (cluster ids), "interval" ([min, max] of the dropped
    values), "degenerate", "nbins"})."""
    from skimage.filters import threshold_multiotsu  # local: importing skimage costs ~1 s

    need = {"lowest": 1, "second_lowest": 2, "two_lowest": 2}
    if drop not in need:
        raise ValueError(f"drop={drop!r}; choose one of {list(need)}")
    values = np.asarray(values_all, dtype=np.float64).reshape(-1)
    finite = np.isfinite(values)
    noisy = np.zeros(values.shape, dtype=bool)
    info: dict = {"cuts": [], "cut_centers": [], "cluster_means": [], "dropped": [], "interval": None,
                  "degenerate": True, "nbins": nbins}
    fit = values[finite]
    if fit.size == 0 or np.unique(fit).size < classes:
        return noisy, info
    counts, edges = np.histogram(fit, bins=nbins, range=(fit.min(), fit.max()))
    if np.count_nonzero(counts) < classes:  # skimage would raise: too few occupied bins
        return noisy, info
    centers = (edges[:-1] + edges[1:]) / 2
    cut_centers = threshold_multiotsu(hist=(counts / fit.size, centers), classes=classes)
    cuts = edges[np.searchsorted(centers, cut_centers) + 1]  # upper edge of each threshold bin
    cluster = np.digitize(values, cuts)  # (N,); meaningless where not finite, masked below
    means = []
    for c in range(classes):
        members = fit[cluster[finite] == c]
        means.append(float(members.mean()) if members.size else None)
    ranked = sorted((m, c) for c, m in enumerate(means) if m is not None)
    info.update(cuts=[float(x) for x in cuts], cut_centers=[float(x) for x in cut_centers], cluster_means=means)
    if len(ranked) < need[drop]:
        return noisy, info
    dropped = {"lowest": [ranked[0][1]], "second_lowest": [ranked[1][1]],
               "two_lowest": [ranked[0][1], ranked[1][1]]}[drop]
    noisy = finite & np.isin(cluster, dropped)
    info.update(dropped=dropped, interval=[float(values[noisy].min()), float(values[noisy].max())],
                degenerate=False)
    return noisy, info


# ------------------------------------------------------------------------------- the released code's rules
# xtf_official reproduces EonHao/XTF XTF_script.py (bd83b19), DatasetEditor.filtering_tokens_and_give_labels and
# get_score, including its quirks: each attribute has its own cap with its own off-by-one rule. `fraction` is
# the script's percentage_interest entry for the attribute; n = the sample's answer tokens; "sorted(v)[i]" is
# Python's sorted over the sample's answer values, i = int(n·x) computed in float64 exactly as the script does.
RELEASED_PERCENTAGES = {"script": (0.1, 0.1, 0.1),   # XTF_script.py's argparse default [ri, kn, tr]
                        "main": (0.05, 0.1, 0.05)}  # main.py's default and the README's XTF_script.py example


def _released_index(n: int, x: float) -> int:
    return int(n * x)  # the script's int(len(scores) * percentage): truncation, float error included


def cap_ri_released(values: np.ndarray, noisy: np.ndarray, fraction: float) -> np.ndarray:
    """RI cap: ONLY when the fence flags MORE than `fraction` of the sample (np.mean(noisy) > fraction), the
    bound becomes b = sorted(v)[int(n·fraction)] and noisy = v < b: at most int(n·fraction) tokens, ties at the
    cut kept. Otherwise the fence's flags are returned unchanged. values, noisy: (n,)."""
    values = np.asarray(values, dtype=np.float64)
    noisy = np.asarray(noisy, dtype=bool)
    if values.size == 0 or not noisy.mean() > fraction:
        return noisy
    return values < sorted(values.tolist())[_released_index(values.size, fraction)]


def cap_kn_released(values: np.ndarray, noisy: np.ndarray, fraction: float) -> np.ndarray:
    """KN cap: noisy AND v > sorted(v)[int(n·(1 − fraction))] — at most n − int(n·(1 − fraction)) − 1 tokens
    (⌈fraction·n⌉ − 1 when n·fraction is not an integer up to float error; e.g. 2 of 30 at 0.1)."""
    values = np.asarray(values, dtype=np.float64)
    noisy = np.asarray(noisy, dtype=bool)
    if values.size == 0:
        return noisy
    return noisy & (values > sorted(values.tolist())[_released_index(values.size, 1 - fraction)])


def cap_tr_released(values: np.ndarray, noisy: np.ndarray, fraction: float) -> np.ndarray:
    """TR cap: noisy AND v < sorted(v)[int(n·fraction)] — at most ⌊fraction·n⌋ tokens, ties at the cut kept."""
    values = np.asarray(values, dtype=np.float64)
    noisy = np.asarray(noisy, dtype=bool)
    if values.size == 0:
        return noisy
    return noisy & (values < sorted(values.tolist())[_released_index(values.size, fraction)])


def tr_released_threshold(values_all: np.ndarray, classes: int, weight: float) -> tuple[float, dict]:
    """TR threshold as XTF_script.get_score computes it. `values_all`: the score of EVERY token occurrence of
    the training set (question and answer tokens: frequency weighting = one entry per occurrence).
    thresholds = skimage threshold_multiotsu(values_all, classes) (skimage's own 256-bin histogram; the
    thresholds are bin CENTRES); proportions[i] = mean(values_all >= thresholds[i]); walking i = 0, 1, ... the
    proportions are summed and at the first i where the sum exceeds `weight` (the script's score weight, 1.0 in
    the README) the threshold is thresholds[i − 1] (thresholds[0] when i = 0); if the sum never exceeds it,
    thresholds[-1]. With one value or none the threshold stays the script's initial 0.0. A token is then
    TR-noisy when its score < threshold (strict). With weight 1.0 and typical proportions (0.9, 0.9, ...) the
    sum exceeds 1 at i = 1, so the LOWEST class is dropped — not the paper's second-lowest.
    Returns (threshold, info = {"thresholds", "proportions", "chosen"})."""
    from skimage.filters import threshold_multiotsu  # local: importing skimage costs ~1 s

    values = np.asarray(values_all, dtype=np.float64).reshape(-1)
    if values.size <= 1:
        return 0.0, {"thresholds": [], "proportions": [], "chosen": None}
    thresholds = threshold_multiotsu(values, classes=classes)
    proportions = [float(np.mean(values >= t)) for t in thresholds]
    threshold, chosen, total = float(thresholds[-1]), len(thresholds) - 1, 0.0
    for i, p in enumerate(proportions):
        total += p
        if total > weight:
            chosen = i - 1 if i > 0 else 0
            threshold = float(thresholds[chosen])
            break
    return threshold, {"thresholds": [float(t) for t in thresholds], "proportions": proportions, "chosen": chosen}


def union(masks: list[np.ndarray]) -> np.ndarray:
    """Logical OR of same-shaped bool masks (XTF: a token lacking ANY attribute is noise)."""
    if not masks:
        raise ValueError("union of no masks")
    shapes = {np.shape(m) for m in masks}
    if len(shapes) != 1:
        raise ValueError(f"masks differ in shape: {sorted(shapes)}")
    return np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks])


def top_k_keep(scores: list[np.ndarray], keep_ratio: float, scope: str) -> list[np.ndarray]:
    """TC: keep the answer tokens with the highest scores (base loss - reference loss).

    scores: one (n_i,) array per sample. scope="global": keep k = int(Σn_i·keep_ratio) = ⌊Σn_i·keep_ratio⌋ tokens
    over all samples; scope="sample": in each sample keep k_i = int(n_i·keep_ratio) (a sample of 3 tokens at 0.3
    keeps none) — both exactly as Token Cleaning's code counts them (scripts/generate_token_label.py,
    get_global_top_k_indices / get_sample_top_k_indices: `int(len(response_tokens)*data_prop)`).
    Order: a stable sort on (-score, sample index, position), so ties go to the earlier sample, then the earlier
    position — what TC's `sorted(..., reverse=True)` over tokens listed in (sample, position) order gives. NaN
    scores are never kept (fewer than k are kept if needed; TC's scores have none). Scores are compared in
    float64. Returns keep masks, one (n_i,) bool array per sample."""
    if scope not in ("global", "sample"):
        raise ValueError(f"scope={scope!r}; choose 'global' or 'sample'")
    scores = [np.asarray(s, dtype=np.float64).reshape(-1) for s in scores]
    keeps = [np.zeros(s.shape, dtype=bool) for s in scores]

    def pick(sid: np.ndarray, pos: np.ndarray, val: np.ndarray, k: int) -> None:
        ok = ~np.isnan(val)
        sid, pos, val = sid[ok], pos[ok], val[ok]
        for i in np.lexsort((pos, sid, -val))[:k]:
            keeps[sid[i]][pos[i]] = True

    if scope == "global":
        if scores:
            sid = np.concatenate([np.full(s.size, i, dtype=np.int64) for i, s in enumerate(scores)])
            pos = np.concatenate([np.arange(s.size) for s in scores])
            pick(sid, pos, np.concatenate(scores), int(sid.size * keep_ratio))
    else:
        for i, s in enumerate(scores):
            if s.size:
                pick(np.full(s.size, i), np.arange(s.size), s, int(s.size * keep_ratio))
    return keeps


def evolve_parts(n_rows: int, rounds: int) -> tuple[list[np.ndarray], np.ndarray]:
    """TC's self-evolving split (scripts/generate_subset.py): `rounds` contiguous parts of ⌊n_rows/rounds⌋ rows
    each, part i = rows [i·size, (i+1)·size); the last n_rows mod rounds rows are in no part (TC's code never
    trains on them). Returns (parts, rows outside every part), index arrays."""
    if rounds < 1:
        raise ValueError(f"rounds={rounds}; need >= 1")
    size = n_rows // rounds
    return [np.arange(i * size, (i + 1) * size) for i in range(rounds)], np.arange(rounds * size, n_rows)


def random_matched(n_mask: list[int], n_answer: list[int], seed: int) -> list[np.ndarray]:
    """random control: in sample i, mask exactly n_mask[i] of its n_answer[i] answer tokens, chosen uniformly
    without replacement. One np.random.default_rng(seed) for the whole call, samples drawn in order (a sample
    with n_mask = 0 draws nothing). Returns KEEP masks (True = kept), one (n_answer[i],) array per sample."""
    if len(n_mask) != len(n_answer):
        raise ValueError(f"{len(n_mask)} mask counts for {len(n_answer)} samples")
    rng = np.random.default_rng(seed)
    keeps = []
    for i, (m, n) in enumerate(zip(n_mask, n_answer)):
        if not 0 <= m <= n:
            raise ValueError(f"sample {i}: cannot mask {m} of {n} answer tokens")
        keep = np.ones(n, dtype=bool)
        if m:
            keep[rng.choice(n, size=m, replace=False)] = False
        keeps.append(keep)
    return keeps


def random_ratio(n_answer: list[int], ratio: float, seed: int) -> list[np.ndarray]:
    """random control without a matched method: mask round(ratio·n_i) (half up) tokens per sample, as
    random_matched. Returns KEEP masks."""
    return random_matched([_round_half_up(ratio * n) for n in n_answer], n_answer, seed)


def df_keep_samples(mean_losses: np.ndarray, drop_ratio: float) -> np.ndarray:
    """DF (sample-level filtering): drop the m = round(drop_ratio·N) (half up) samples with the HIGHEST mean
    answer-token loss under the base model, i.e. the samples the base model finds least likely — the
    sample-level analogue of noise: whole samples are dropped rather than single tokens. Ties: the earlier
    sample is dropped first. mean_losses: (N,) finite floats (a NaN, e.g. a sample with no answer token,
    raises: the caller must decide about such samples). Returns (N,) bool keep per sample."""
    losses = np.asarray(mean_losses, dtype=np.float64).reshape(-1)
    if np.isnan(losses).any():
        raise ValueError("mean_losses contains NaN")
    m = _round_half_up(drop_ratio * losses.size)
    keep = np.ones(losses.size, dtype=bool)
    keep[np.lexsort((np.arange(losses.size), -losses))[:m]] = False
    return keep


def overlaps(noisy: dict[str, np.ndarray]) -> dict:
    """Pairwise overlap of attributes' noisy sets. noisy: name → (N,) bool mask over ALL answer tokens
    (concatenated, same order for every attribute). For each unordered pair (a, b) in the dict's order, key
    "a&b" → {"jaccard": |A∩B|/|A∪B|, "of_a": |A∩B|/|A|, "of_b": |A∩B|/|B|, "overlap_min": |A∩B|/min(|A|,|B|),
    "n_a", "n_b", "n_both"} (a ratio is 0.0 when its denominator is 0). The paper's "overlap ≤ 58.3 %" between
    attributes is read as overlap_min (the share of the smaller set that the other also flags), which is
    the largest of the three directional ratios, so the most conservative check of "the attributes differ"."""
    masks = {k: np.asarray(v, dtype=bool).reshape(-1) for k, v in noisy.items()}
    if len({m.shape for m in masks.values()}) > 1:
        raise ValueError("noisy masks differ in length")
    ratio = lambda num, den: float(num / den) if den else 0.0
    out = {}
    for a, b in combinations(masks, 2):
        na, nb = int(masks[a].sum()), int(masks[b].sum())
        both = int((masks[a] & masks[b]).sum())
        either = int((masks[a] | masks[b]).sum())
        out[f"{a}&{b}"] = {"jaccard": ratio(both, either), "of_a": ratio(both, na), "of_b": ratio(both, nb),
                           "overlap_min": ratio(both, min(na, nb)), "n_a": na, "n_b": nb, "n_both": both}
    return out
