"""Masks: which answer tokens get a loss. A pure function of the tokenised rows, the cached scores and the method
config (each method's rule: its module in xtf/methods; the numeric rules: xtf.rules), so a threshold sweep re-masks
cached scores and never re-scores. Also what a mask says: its statistics, and against injected noise its detection
report.

A keep mask is a bool array aligned to `input_ids` (see xtf.data): keep[t] is True iff token t is an answer
token that is trained on. Prompt tokens and position 0 are never kept.

Each method's `mask` (xtf.methods.registry.Method) is
    fn(rows, scores, method, seed, special) -> (keeps, noisy_by_attribute, info)
`special` is the set of structural token ids (EOS, end-of-turn, other special tokens, `structural_ids`): with
`method.exempt_special` (the default) no attribute ever flags one — a model that never gets a loss on EOS
stops learning to stop. xtf_official sets it false: the released code has no such exemption.
Protected tokens (a row's `protected`, xtf.data: the task's answer format, e.g. GSM8K's "#### N" line and the EOS)
are exempt from every token-level method under `method.protect_answer` (the default): no attribute flags them, no
ranking or random draw masks them. DF drops whole samples and is unaffected. xtf_official sets it false.
"""

from __future__ import annotations

import numpy as np

from xtf import detection as det
from xtf import methods, rules
from xtf.methods.tokens import answer as _answer
from xtf.methods.tokens import protected as _protected

MASK_VERSION = 5  # bump when any mask rule changes behaviour (5: protected answer tokens)


def structural_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokenizer's special tokens: the named ones (bos, eos, pad, ...), the additional ones, and every
    added token marked special (Llama 3's <|eot_id|>, chat-template turn markers)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return frozenset(ids)


# ---------------------------------------------------------------------------------------------- statistics
def mask_stats(rows: list[dict], keeps: list[np.ndarray], noisy: dict[str, list[np.ndarray]]) -> dict:
    """Statistics over answer tokens only (prompt tokens are context, never counted).

    kept_fraction: kept / answer tokens over the whole set; per-sample fractions summarised; empty_samples:
    samples left with no kept token (they are dropped from fine-tuning); per-attribute noisy fractions and their
    pairwise overlaps."""
    answer = np.array([int(np.sum(r["response_mask"])) for r in rows])
    kept = np.array([int(k.sum()) for k in keeps])
    for r, k in zip(rows, keeps):
        if np.any(k & ~_answer(r)):
            raise AssertionError(f"mask keeps a non-answer token in row {r['id']}")
    per_sample = kept / np.maximum(answer, 1)
    stats = {
        "answer_tokens": int(answer.sum()),
        "kept_tokens": int(kept.sum()),
        "kept_fraction": float(kept.sum() / max(answer.sum(), 1)),
        "kept_fraction_per_sample": {
            "mean": float(per_sample.mean()) if len(rows) else 0.0,
            "min": float(per_sample.min()) if len(rows) else 0.0,
            "max": float(per_sample.max()) if len(rows) else 0.0,
        },
        "empty_samples": int((kept == 0).sum()),
    }
    for name, masks in noisy.items():
        stats[f"noisy_tokens_{name}"] = int(sum(int(m.sum()) for m in masks))
        stats[f"noisy_fraction_{name}"] = float(stats[f"noisy_tokens_{name}"] / max(answer.sum(), 1))
    if len(noisy) > 1:
        flat = {name: np.concatenate([m[_answer(r)] for m, r in zip(masks, rows)]) for name, masks in noisy.items()}
        stats["overlaps"] = rules.overlaps(flat)
    return stats


def mask(rows: list[dict], scores: dict, method, seed: int, special: frozenset[int] = frozenset()
         ) -> tuple[list[np.ndarray], dict[str, list], dict]:
    """(keep masks, noisy masks per attribute, statistics + the thresholds used) for `rows` under `method`.
    `special`: structural token ids (`structural_ids(tokenizer)`), exempt under method.exempt_special. Under
    method.protect_answer the statistics count the protected answer tokens ("protected_tokens")."""
    keeps, noisy, info = methods.get(method.name).mask(rows, scores, method, seed, special)
    stats = mask_stats(rows, keeps, noisy)
    if method.protect_answer:
        stats["protected_tokens"] = int(sum(int((_protected(r, method) & _answer(r)).sum()) for r in rows))
    return keeps, noisy, {**stats, "rule": info}


# Which side of each score means "noise" (for AUROC against the injected truth): RI low (nothing builds on it),
# KN = PCP high (nothing new), TR low (off-domain), NLL high (the base finds it unlikely), tc = base loss minus
# reference loss low (TC keeps the top; SLM's excess loss at step 0, whose low end SLM drops). A method names the
# one it ranks by in its registry entry (`detection_score`).
NOISE_SIDE = {"ri": "low", "kn": "high", "tr": "low", "nll": "high", "tc": "low"}


def detection(rows: list[dict], keeps: list[np.ndarray], noisy: dict, scores: dict, method=None) -> dict | None:
    """How well the mask and each raw score find the injected noise (None without ground truth): AUROC of each
    score (with its orientation), precision / recall / F1 of the mask and of each attribute's own noisy set, per
    noise type and overall, over all answer tokens (xtf.detection). With `method`, each entry also gets
    "method_score": {"name", "orientation", "auroc"} for the score that method ranks by (its registry entry's
    `detection_score`, xtf.methods.method_score), so a
    table can show one AUROC column for every cell."""
    if not any("truth" in r for r in rows):
        return None
    answer = [_answer(r) for r in rows]
    kinds = sorted({k for r in rows for k in r.get("truth", {})})
    truth = {k: np.concatenate([np.asarray(r.get("truth", {}).get(k, np.zeros(len(a), bool)), bool)[a]
                                for r, a in zip(rows, answer)]) for k in kinds}
    masked = np.concatenate([a & ~np.asarray(k, bool) for a, k in zip(answer, keeps)])[np.concatenate(answer)]
    raw = {name: scores[name] for name in ("ri", "kn", "tr", "nll") if name in scores}
    if "nll" in scores and "ref_nll" in scores:
        raw["tc"] = [n - r for n, r in zip(scores["nll"], scores["ref_nll"])]
    flat_scores = {name: np.concatenate([np.asarray(v)[a] for v, a in zip(vals, answer)]) for name, vals in raw.items()}
    flat_noisy = {name: np.concatenate([np.asarray(m)[a] for m, a in zip(ms, answer)]) for name, ms in noisy.items()}
    report = det.detection_report(truth, masked, flat_scores, flat_noisy, {k: NOISE_SIDE[k] for k in flat_scores})
    own = methods.method_score(method)
    if own in flat_scores:
        for entry in report.values():
            entry["method_score"] = {"name": own, "orientation": NOISE_SIDE[own], "auroc": entry[own]["auroc"]}
    return report
