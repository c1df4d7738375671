"""Does a method find the noise we injected? Token-level detection metrics against ground truth (synth's
controlled noise; see xtf/tasks/synth.py). Pure numpy.

Every array is 1-D over ALL answer tokens of the dataset (the samples' answer tokens concatenated, in one fixed
order). `span_labels` turns one example's character noise spans into per-token labels.

Conventions:
    auroc   rank-based (Mann-Whitney U) with average ranks for ties, so ties count 1/2; higher score = more
            likely positive. NaN scores are dropped. None when either class is empty (after dropping NaNs).
    prf     precision = tp / (tp + fp), recall = tp / (tp + fn), f1 = their harmonic mean; each is 0.0 where
            its denominator is 0 (nothing predicted, nothing to find, or P = R = 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np

ORIENTATIONS = ("low", "high")
_RESERVED = ("mask", "auroc", "n_tokens", "n_masked", "n_noise_tokens")   # report keys an attribute can't take


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(xs[1:] != xs[:-1]) + 1]
    ends = np.r_[starts[1:], len(xs)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> Optional[float]:
    """P(score of a random positive > score of a random negative) + 1/2 P(tie); None if a class is empty."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} differ in shape")
    keep = ~np.isnan(scores)
    scores, labels = scores[keep], labels[keep]
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = _average_ranks(scores)[labels].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def prf(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Precision, recall and F1 of boolean `pred` against boolean `truth` (0.0 where undefined), with counts."""
    pred = np.asarray(pred, dtype=bool).ravel()
    truth = np.asarray(truth, dtype=bool).ravel()
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ in shape")
    tp = int(np.sum(pred & truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def span_labels(offsets: Sequence[tuple[int, int]], spans: Sequence[Sequence], types: Sequence[str]
                ) -> dict[str, np.ndarray]:
    """Per-token truth for one example: type → bool array over its answer tokens. `offsets` are the tokens'
    (start, end) character offsets into the response (as a tokenizer's offset mapping gives them), `spans` the
    example's [[start, end, type], ...]. A token is of a type if it shares at least one character with a span of
    that type (so " 21" counts for the span "21"); empty tokens (start == end) are never noise."""
    out = {t: np.zeros(len(offsets), dtype=bool) for t in types}
    if not len(offsets):
        return out
    off = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    for start, end, kind in spans:
        if kind not in out:
            raise ValueError(f"noise type {kind!r} is not one of {list(types)}")
        out[kind] |= (off[:, 0] < end) & (off[:, 1] > start) & (off[:, 1] > off[:, 0])
    return out


def _attribute_entries(truth: np.ndarray, negatives: np.ndarray, scores: dict, noisy: dict,
                       orientation: dict) -> dict:
    out = {}
    for attr in dict.fromkeys([*scores, *noisy]):
        entry: dict = {}
        if attr in scores:
            oriented = scores[attr] if orientation[attr] == "high" else -scores[attr]
            entry["auroc"] = auroc(oriented[truth | negatives], truth[truth | negatives])
            entry["orientation"] = orientation[attr]   # which side of the raw score means noise
        if attr in noisy:
            entry.update(prf(noisy[attr], truth))
        out[attr] = entry
    return out


def detection_report(truth: dict[str, np.ndarray], masked: np.ndarray, scores: dict[str, np.ndarray],
                     noisy: dict[str, np.ndarray], orientation: dict[str, str]) -> dict:
    """How well a method's mask and each attribute find the injected noise.

    truth: noise type → bool (the token is injected noise of that type); masked: bool, the tokens the method
    gives no loss; scores: attribute → raw score (e.g. "ri", "kn", "tr"); orientation: attribute → "low" or
    "high", the direction that means noise (ri low, kn high, tr low), AUROC is computed on the score oriented so
    that higher = noisier; noisy: attribute → that attribute's own noisy mask.

    Returns {"overall": {...}, <type>: {...} for each type in truth}, each entry
        {"n_noise_tokens": int, "mask": prf(masked, t), <attr>: {"auroc": ..., "orientation": "low"|"high",
                                                                  **prf(noisy[attr], t)}}
    with t = any type ("overall") or that type. "overall" also has "n_tokens" and "n_masked".
    Per type: recall = the fraction of that type's tokens caught; precision = the fraction of flagged tokens that
    are of that type (flagged tokens of OTHER noise types count as false positives, so where no token has two
    types the per-type precisions add up to the overall one). Per-type AUROC compares that type's tokens with
    CLEAN tokens only (other noise types are left out: "does the score separate this type from clean text?");
    overall AUROC: all noise vs clean.
    """
    masked = np.asarray(masked, dtype=bool).ravel()
    n = len(masked)
    arrays = {"masked": masked}
    truth = {t: np.asarray(v, dtype=bool).ravel() for t, v in truth.items()}
    scores = {a: np.asarray(v, dtype=np.float64).ravel() for a, v in scores.items()}
    noisy = {a: np.asarray(v, dtype=bool).ravel() for a, v in noisy.items()}
    arrays.update({f"truth[{k}]": v for k, v in truth.items()})
    arrays.update({f"scores[{k}]": v for k, v in scores.items()})
    arrays.update({f"noisy[{k}]": v for k, v in noisy.items()})
    bad = [f"{k} {v.shape}" for k, v in arrays.items() if v.shape != (n,)]
    if bad:
        raise ValueError(f"every array must have the shape of masked ({n},): {bad}")
    if "overall" in truth:
        raise ValueError("'overall' cannot be a noise type name")
    clash = [a for a in [*scores, *noisy] if a in _RESERVED]
    if clash:
        raise ValueError(f"attribute names {clash} clash with report keys {list(_RESERVED)}")
    for attr in scores:
        if orientation.get(attr) not in ORIENTATIONS:
            raise ValueError(f"orientation[{attr!r}]={orientation.get(attr)!r}; must be one of {ORIENTATIONS}")

    any_truth = np.zeros(n, dtype=bool)
    for v in truth.values():
        any_truth |= v
    clean = ~any_truth
    report = {"overall": {"n_tokens": n, "n_masked": int(masked.sum()), "n_noise_tokens": int(any_truth.sum()),
                          "mask": prf(masked, any_truth),
                          **_attribute_entries(any_truth, clean, scores, noisy, orientation)}}
    for t, v in truth.items():
        report[t] = {"n_noise_tokens": int(v.sum()), "mask": prf(masked, v),
                     **_attribute_entries(v, clean, scores, noisy, orientation)}
    return report
