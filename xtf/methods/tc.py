"""Token Cleaning (Pang et al. 2025): score = base-model loss − reference-model loss per answer token; keep the top
`method.keep_ratio` (globally or per sample, `method.scope`). The reference is the base fine-tuned on a warm-up
subset (xtf.method_scores.reference_nll, which also runs the self-evolving chain of `method.rounds` > 1).

    python run.py method=tc                                           # one reference
    python run.py method=tc method.rounds=3                           # TC's self-evolving chain (evolve=chain)
"""

from __future__ import annotations

import numpy as np

from xtf import rules
from xtf.methods.registry import Method
from xtf.methods.tokens import answer, protected, scatter


def tc_scores(row: dict, nll, ref_nll) -> np.ndarray:
    """TC's per-token score of one row's answer tokens: base loss − reference loss, in float64."""
    return (np.asarray(nll, dtype=np.float64) - np.asarray(ref_nll, dtype=np.float64))[answer(row)]


def chain(method) -> bool:
    """TC's self-evolving chain (evolve=chain with rounds > 1): the chain's last model is the run's result."""
    return method.rounds > 1 and method.evolve == "chain"


def mask(rows, scores, method, seed, special=frozenset()):
    """Keep the top `keep_ratio` by tc_scores (in float64, as TC's np.array(loss1) - np.array(loss2) of the stored
    float32 losses; xtf.rules.top_k_keep). High score = the reference learned it from the data: informative.
    Protected tokens of a ranked row are kept whatever their rank (method.protect_answer)."""
    per_sample = [tc_scores(r, nll, ref) for r, nll, ref in zip(rows, scores["nll"], scores["ref_nll"])]
    guarded = [protected(r, method)[answer(r)] for r in rows]
    info = {"keep_ratio": method.keep_ratio, "scope": method.scope, "rounds": method.rounds,
            "evolve": method.evolve if method.rounds > 1 else None}
    if chain(method):
        # TC's self-evolving chain (self_evolving_cleaning.sh): part 0 warms the reference up on all its answer
        # tokens; each later part is ranked within itself against the reference of its own round (the parts of
        # xtf.method_scores.reference_nll); rows past the last part are never trained on. These are the tokens the
        # chain was trained on.
        parts, outside = rules.evolve_parts(len(rows), method.rounds)
        kept = [np.zeros(len(v), dtype=bool) for v in per_sample]
        for i in parts[0]:
            kept[i][:] = True
        for idx in parts[1:]:
            for i, k in zip(idx, rules.top_k_keep([per_sample[i] for i in idx], method.keep_ratio, method.scope)):
                kept[i] = k | guarded[i]
        info.update(warmup_rows=len(parts[0]), rows_outside_parts=len(outside))
    else:
        kept = [k | p for k, p in zip(rules.top_k_keep(per_sample, method.keep_ratio, method.scope), guarded)]
    return scatter(rows, kept), {}, info


# "nll" first: the self-evolving reference needs it. The detection score "tc" is base − reference loss.
METHOD = Method(name="tc", kind="offline", summary="keep the top answer tokens by base loss − reference loss",
                needs=("nll", "ref_nll"), keys=("keep_ratio", "scope", "rounds", "evolve"), mask=mask,
                detection_score="tc", trains_own_model=chain)
METHODS = (METHOD,)
