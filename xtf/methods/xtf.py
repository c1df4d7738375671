"""XTF (the paper) and xtf_official (the released code's rules): an answer token is noise if any enabled attribute
flags it — reasoning importance (RI), knowledge novelty (KN), task relevance (TR); noise keeps its place and gets no
loss. The attributes' numeric rules are in xtf.rules; their scores come from xtf.scoring; their keys (method.ri.*,
method.kn.*, method.tr.*) are RIConfig, KNConfig and TRConfig below.

    python run.py method=xtf                                  # all three attributes (method.attributes)
    python run.py method=xtf method.attributes=[ri,kn]        # any subset (the paper's Table 2 ablation)
    python run.py method=xtf_official task=gsm8k              # the released protocol (xtf.official)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from xtf import rules
from xtf.methods.registry import Method
from xtf.methods.tokens import answer, protected, scatter, structural

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RIConfig:
    """Reasoning importance: attention a token receives from later tokens (DESIGN.md §5)."""
    definition: Literal["received", "official"] = "received"  # official: the released code's first-layer row mean
    layers: tuple[int, ...] = ()       # layer indices averaged (negative counts from the end); () = every layer
    k: float = 1.5                     # Tukey fence: noisy if RI < Q1 - k·IQR over the sample's answer tokens
    scale: Literal["raw", "log"] = "raw"  # the scale the fence is computed on (xtf.rules.ri_scaled): on raw RI
                                       # the fence falls below 0 and never fires; log makes it reachable
    query_chunk: int = 64              # queries per chunk when reducing attention (bounds peak memory; 64 fits
                                       # CPU caches: measured faster than 256 or 1024 in make bench-scoring)


@dataclass(frozen=True)
class KNConfig:
    """Knowledge novelty: PCP = P(gold token | prefix) under the base model."""
    threshold: float = 0.95            # noisy if PCP > threshold (the model already knows the token)


@dataclass(frozen=True)
class TRConfig:
    """Task relevance: cosine(context-free hidden state of the token, domain vector of the expert words)."""
    classes: int = 5                   # Multi-Otsu classes over the answer-token scores
    drop: Literal["second_lowest", "lowest", "two_lowest"] = "second_lowest"  # which cluster(s) are noise
    # The released code (xtf_official): "released" scorer = each token run ALONE (no special tokens), one score
    # per decoded stripped text, the first token seen with that text wins; "released" threshold = Multi-Otsu
    # over every token occurrence (prompt + answer) at skimage's bin centres, the class picked by the
    # cumulative-proportion test against `weight` (xtf.rules.tr_released_threshold).
    scorer: Literal["bos", "released"] = "bos"   # bos: [bos, token] per unique token id
    threshold: Literal["otsu", "released"] = "otsu"
    weight: float = 1.0                # the released TR score weight (only for threshold=released)


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
