"""XTF (the paper) and xtf_official (the released code's rules): an answer token is noise if any enabled attribute
flags it — reasoning importance (RI), knowledge novelty (KN), task relevance (TR); noise keeps its place and gets no
loss. The attributes' numeric rules are in xtf.rules; their scores come from xtf.scoring.

    python run.py method=xtf                                  # all three attributes (method.attributes)
    python run.py method=xtf method.attributes=[ri,kn]        # any subset (the paper's Table 2 ablation)
    python run.py method=xtf_official task=gsm8k              # the released protocol (xtf.official)
"""

from __future__ import annotations

import logging

import numpy as np

from xtf import rules
from xtf.methods.registry import Method
from xtf.methods.tokens import answer, protected, scatter, structural

log = logging.getLogger(__name__)


def xtf_noisy(rows, scores, method, special: frozenset[int] = frozenset()) -> tuple[dict[str, list], dict]:
    """Per enabled attribute, the noisy answer tokens (aligned to input_ids) and the thresholds used.

    method=xtf: RI below the per-sample fence on `ri.scale`; KN above the threshold; TR in the dropped Multi-Otsu
    cluster(s) of the answer tokens. method=xtf_official (cap set, tr.threshold=released): the released rules
    of xtf.rules (cap_*_released, tr_released_threshold). info[attr]["flagged"] counts the flagged answer tokens;
    an attribute that flags nothing is logged as a warning (e.g. a fence that never fires)."""
    noisy, info = {}, {}
    caps = dict(zip(("ri", "kn", "tr"), rules.RELEASED_PERCENTAGES[method.cap])) if method.cap else {}
    answers = [answer(r) for r in rows]
    exempt = ([structural(r, special)[a] for r, a in zip(rows, answers)] if method.exempt_special and special
              else [np.zeros(int(a.sum()), dtype=bool) for a in answers])
    guarded = [protected(r, method)[a] for r, a in zip(rows, answers)]
    if "ri" in method.attributes:
        masks, fences = [], []
        for a, ri in zip(answers, scores["ri"]):
            vals = rules.ri_scaled(ri[a], method.ri.scale)
            finite = np.isfinite(vals)                  # the last token has no later query: never RI-noisy
            flags = np.zeros(len(vals), dtype=bool)
            flags[finite], fence = rules.ri_fence_noisy(vals[finite], method.ri.k)
            if "ri" in caps:
                flags = rules.cap_ri_released(np.where(finite, vals, np.inf), flags, caps["ri"])
            masks.append(flags)
            fences.append(fence)
        noisy["ri"] = masks
        finite_fences = [f for f in fences if np.isfinite(f)]
        info["ri"] = {"k": method.ri.k, "scale": method.ri.scale,
                      "fence_quantiles": np.quantile(finite_fences, [0.1, 0.5, 0.9]).tolist()
                      if finite_fences else None}
    if "kn" in method.attributes:
        masks = []
        for a, kn in zip(answers, scores["kn"]):
            flags = rules.kn_noisy(kn[a], method.kn.threshold)
            if "kn" in caps:
                flags = rules.cap_kn_released(kn[a], flags, caps["kn"])
            masks.append(flags)
        noisy["kn"] = masks
        info["kn"] = {"threshold": method.kn.threshold}
    if "tr" in method.attributes:
        per_sample = [tr[a] for a, tr in zip(answers, scores["tr"])]
        if method.tr.threshold == "released":
            # Fitted on every token occurrence of the set (prompt and answer), as the released code does.
            cut, otsu = rules.tr_released_threshold(np.concatenate(scores["tr"]), method.tr.classes, method.tr.weight)
            splits = [v < cut for v in per_sample]
            otsu["threshold"] = cut
        else:
            flat, otsu = rules.tr_otsu_noisy(np.concatenate(per_sample), method.tr.classes, method.tr.drop)
            splits = np.split(flat, np.cumsum([len(v) for v in per_sample])[:-1])
        if "tr" in caps:
            splits = [rules.cap_tr_released(v, f, caps["tr"]) for v, f in zip(per_sample, splits)]
        noisy["tr"] = list(splits)
        info["tr"] = otsu
    for name in noisy:
        before = sum(int(m.sum()) for m in noisy[name])
        unstructural = [m & ~e for m, e in zip(noisy[name], exempt)]
        between = sum(int(m.sum()) for m in unstructural)
        noisy[name] = scatter(rows, [m & ~p for m, p in zip(unstructural, guarded)])
        flagged = sum(int(m.sum()) for m in noisy[name])
        info[name].update(flagged=flagged, exempted_structural=before - between, exempted_protected=between - flagged,
                          cap=caps.get(name))
        if flagged == 0 and rows:
            log.warning("XTF attribute %s flags no answer token of %d rows (%s): it does nothing in this run",
                        name, len(rows), {k: v for k, v in info[name].items() if k in ("k", "scale", "threshold")})
    return noisy, info


def mask(rows, scores, method, seed, special=frozenset()):
    """XTF: an answer token is noise if any enabled attribute flags it; noise keeps its place, gets no loss."""
    noisy, info = xtf_noisy(rows, scores, method, special)
    keeps = [answer(r) & ~rules.union([noisy[a][i] for a in noisy]) for i, r in enumerate(rows)]
    return keeps, noisy, info


def keys(method) -> frozenset[str]:
    """method.attributes, the cap, and the section of each enabled attribute (method.ri only with "ri" enabled)."""
    return frozenset(("attributes", "cap", *method.attributes))


def detection_score(method) -> str | None:
    """One attribute ranks by its own score; several are a union of thresholded flags: no single score."""
    return method.attributes[0] if len(method.attributes) == 1 else None


def _spec(name: str, summary: str) -> Method:
    return Method(name=name, kind="offline", summary=summary, needs=lambda method: tuple(method.attributes),
                  keys=keys, mask=mask, detection_score=detection_score)


METHODS = (_spec("xtf", "mask the answer tokens any enabled attribute (RI, KN, TR) flags"),
           _spec("xtf_official", "XTF with the released code's RI definition, TR threshold and per-attribute caps"))
