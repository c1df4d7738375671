"""Masks: which answer tokens get a loss. A pure function of the tokenised rows, the cached scores and the method
config (the numeric rules are in xtf.rules), so a threshold sweep re-masks cached scores and never re-scores.

A keep mask is a bool array aligned to `input_ids` (see xtf.data): keep[t] is True iff token t is an answer
token that is trained on. Prompt tokens and position 0 are never kept.

`METHODS` maps `method.name` to (scores it needs, function). Each function is
    fn(rows, scores, method, seed, special) -> (keeps, noisy_by_attribute, info)
`special` is the set of structural token ids (EOS, end-of-turn, other special tokens, `structural_ids`): with
`method.exempt_special` (the default) no attribute ever flags one — a model that never gets a loss on EOS
stops learning to stop. xtf_official sets it false: the released code has no such exemption.
Protected tokens (a row's `protected`, xtf.data: the task's answer format, e.g. GSM8K's "#### N" line and the EOS)
are exempt from every token-level method under `method.protect_answer` (the default): no attribute flags them, no
ranking or random draw masks them. DF drops whole samples and is unaffected. xtf_official sets it false.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from xtf import detection as det
from xtf import online, rules

log = logging.getLogger(__name__)
MASK_VERSION = 5  # bump when any mask rule changes behaviour (5: protected answer tokens)


def structural_ids(tokenizer) -> frozenset[int]:
    """Ids of the tokenizer's special tokens: the named ones (bos, eos, pad, ...), the additional ones, and every
    added token marked special (Llama 3's <|eot_id|>, chat-template turn markers)."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return frozenset(ids)


def _structural(row: dict, special: frozenset[int]) -> np.ndarray:
    """(L,) bool aligned to input_ids: True at structural tokens."""
    return np.isin(np.asarray(row["input_ids"]), np.fromiter(special, dtype=np.int64, count=len(special)))


def _protected(row: dict, method) -> np.ndarray:
    """(L,) bool aligned to input_ids: the row's protected answer tokens under method.protect_answer; all False when
    the switch is off (or there is no method) or the row has none."""
    if "protected" not in row or not getattr(method, "protect_answer", False):
        return np.zeros(len(row["input_ids"]), dtype=bool)
    return np.asarray(row["protected"], dtype=bool)


def _answer(row: dict) -> np.ndarray:
    return np.asarray(row["response_mask"], dtype=bool)


def _scatter(rows: list[dict], per_sample: list[np.ndarray]) -> list[np.ndarray]:
    """Answer-token arrays (one per row) → bool arrays aligned to input_ids (False off the answer)."""
    out = []
    for row, values in zip(rows, per_sample):
        full = np.zeros(len(row["input_ids"]), dtype=bool)
        full[_answer(row)] = values
        out.append(full)
    return out


# ------------------------------------------------------------------------------------------------ methods
def keep_all_answer_tokens(rows, scores, method, seed, special=frozenset()):
    """normal / normal_x2 / none / da, and the online methods (xtf.online: they select tokens per batch during
    training)."""
    return [_answer(r) for r in rows], {}, {}


def xtf_noisy(rows, scores, method, special: frozenset[int] = frozenset()) -> tuple[dict[str, list], dict]:
    """Per enabled attribute, the noisy answer tokens (aligned to input_ids) and the thresholds used.

    method=xtf: RI below the per-sample fence on `ri.scale`; KN above the threshold; TR in the dropped Multi-Otsu
    cluster(s) of the answer tokens. method=xtf_official (cap set, tr.threshold=released): the released rules
    of xtf.rules (cap_*_released, tr_released_threshold). info[attr]["flagged"] counts the flagged answer tokens;
    an attribute that flags nothing is logged as a warning (e.g. a fence that never fires)."""
    noisy, info = {}, {}
    caps = dict(zip(("ri", "kn", "tr"), rules.RELEASED_PERCENTAGES[method.cap])) if method.cap else {}
    answers = [_answer(r) for r in rows]
    exempt = ([_structural(r, special)[a] for r, a in zip(rows, answers)] if method.exempt_special and special
              else [np.zeros(int(a.sum()), dtype=bool) for a in answers])
    protected = [_protected(r, method)[a] for r, a in zip(rows, answers)]
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
        noisy[name] = _scatter(rows, [m & ~p for m, p in zip(unstructural, protected)])
        flagged = sum(int(m.sum()) for m in noisy[name])
        info[name].update(flagged=flagged, exempted_structural=before - between, exempted_protected=between - flagged,
                          cap=caps.get(name))
        if flagged == 0 and rows:
            log.warning("XTF attribute %s flags no answer token of %d rows (%s): it does nothing in this run",
                        name, len(rows), {k: v for k, v in info[name].items() if k in ("k", "scale", "threshold")})
    return noisy, info


def xtf(rows, scores, method, seed, special=frozenset()):
    """XTF: an answer token is noise if any enabled attribute flags it; noise keeps its place, gets no loss."""
    noisy, info = xtf_noisy(rows, scores, method, special)
    keeps = [_answer(r) & ~rules.union([noisy[a][i] for a in noisy]) for i, r in enumerate(rows)]
    return keeps, noisy, info


def tc(rows, scores, method, seed, special=frozenset()):
    """Token Cleaning: score = base-model loss − reference-model loss per answer token (in float64, as TC's
    np.array(loss1) - np.array(loss2) of the stored float32 losses); keep the top `keep_ratio` (globally or per
    sample, xtf.rules.top_k_keep). High score = the reference learned it from the data: informative. Protected
    tokens of a ranked row are kept whatever their rank (method.protect_answer)."""
    per_sample = [tc_scores(r, nll, ref) for r, nll, ref in zip(rows, scores["nll"], scores["ref_nll"])]
    protected = [_protected(r, method)[_answer(r)] for r in rows]
    info = {"keep_ratio": method.keep_ratio, "scope": method.scope, "rounds": method.rounds,
            "evolve": method.evolve if method.rounds > 1 else None}
    if method.rounds > 1 and method.evolve == "chain":
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
                kept[i] = k | protected[i]
        info.update(warmup_rows=len(parts[0]), rows_outside_parts=len(outside))
    else:
        kept = [k | p for k, p in zip(rules.top_k_keep(per_sample, method.keep_ratio, method.scope), protected)]
    return _scatter(rows, kept), {}, info


def tc_scores(row: dict, nll, ref_nll) -> np.ndarray:
    """TC's per-token score of one row's answer tokens: base loss − reference loss, in float64."""
    return (np.asarray(nll, dtype=np.float64) - np.asarray(ref_nll, dtype=np.float64))[_answer(row)]


def df(rows, scores, method, seed, special=frozenset()):
    """DF, sample-level filtering: drop the `drop_ratio` of samples with the highest mean answer-token loss
    under the base model (the samples it finds most anomalous); keep every answer token of the others. A dropped
    sample is dropped whole, protected tokens too: DF judges samples, not tokens."""
    mean_loss = np.array([nll[_answer(r)].mean() for r, nll in zip(rows, scores["nll"])])
    keep_sample = rules.df_keep_samples(mean_loss, method.drop_ratio)
    keeps = [_answer(r) & keep for r, keep in zip(rows, keep_sample)]
    return keeps, {}, {"drop_ratio": method.drop_ratio, "dropped_samples": int((~keep_sample).sum())}


def random_control(rows, scores, method, seed, special=frozenset()):
    """random: in each sample, mask as many answer tokens as `method.match` masks there (at random positions),
    or a fixed `ratio` of the maskable ones; seeded by the run seed. Separates denoising from "less data". Drawn
    among the answer tokens that are not protected (method.protect_answer)."""
    n_answer = [int(_answer(r).sum()) for r in rows]
    maskable = [_answer(r) & ~_protected(r, method) for r in rows]
    n_maskable = [int(m.sum()) for m in maskable]
    if method.match is not None:
        _, fn = METHODS[method.match]
        matched, _, _ = fn(rows, scores, method, seed, special)
        wanted = [a - int(k.sum()) for a, k in zip(n_answer, matched)]
        n_mask = [min(w, n) for w, n in zip(wanted, n_maskable)]  # match=df drops protected tokens with a sample
        drawn = rules.random_matched(n_mask, n_maskable, seed)
    else:
        wanted = n_mask = []
        drawn = rules.random_ratio(n_maskable, method.ratio, seed)
    keeps = []
    for r, m, d in zip(rows, maskable, drawn):
        keep = _answer(r).copy()
        keep[m] = d
        keeps.append(keep)
    return keeps, {}, {"match": method.match, "ratio": method.ratio if method.match is None else None,
                       "protected_unmatched": sum(wanted) - sum(n_mask)}


def stm(rows, scores, method, seed, special=frozenset()):
    """STM: mask the answer tokens whose base-model perplexity exp(nll) is above `method.stm.threshold`
    (direction mask_higher; mask_lower masks the complement, exp(nll) <= threshold). Per token: the perplexity of
    one token is exp of its NLL. Structural tokens are exempt under method.exempt_special, protected ones under
    method.protect_answer."""
    keeps, flagged, exempted, protected = [], 0, 0, 0
    for r, nll in zip(rows, scores["nll"]):
        answer = _answer(r)
        above = np.exp(np.asarray(nll, dtype=np.float64)) > method.stm.threshold
        noisy = answer & (above if method.stm.direction == "mask_higher" else ~above)
        if method.exempt_special and special:
            exempted += int((noisy & _structural(r, special)).sum())
            noisy &= ~_structural(r, special)
        protected += int((noisy & _protected(r, method)).sum())
        noisy &= ~_protected(r, method)
        flagged += int(noisy.sum())
        keeps.append(answer & ~noisy)
    return keeps, {}, {"threshold": method.stm.threshold, "direction": method.stm.direction, "flagged": flagged,
                       "exempted_structural": exempted, "exempted_protected": protected}


def oracle(rows, scores, method, seed, special=frozenset()):
    """oracle (tasks with injected noise: synth, GSM8K noise_*_rate): mask exactly the injected noise — the ceiling
    any filter can reach."""
    if not any("truth" in r for r in rows):
        raise ValueError("method=oracle needs ground-truth noise: task=synth with a task.options.*_rate > 0 "
                         "or task=gsm8k with a task.options.noise_*_rate > 0")
    keeps = []
    for r in rows:
        injected = np.zeros(len(r["input_ids"]), dtype=bool)
        for flags in r.get("truth", {}).values():
            injected |= np.asarray(flags, dtype=bool)
        keeps.append(_answer(r) & ~(injected & ~_protected(r, method)))
    return keeps, {}, {}


# name → (scores it needs, mask function). XTF's scores: ri, kn, tr; losses: nll (base), ref_nll (reference).
METHODS = {
    "normal": ((), keep_all_answer_tokens),       # fine-tune on all answer tokens
    "normal_x2": ((), keep_all_answer_tokens),    # same, for twice the epochs (method.epochs_factor = 2)
    "none": ((), keep_all_answer_tokens),         # no fine-tuning: the base model is evaluated (the paper's "CA")
    "xtf": (None, xtf),                           # needs method.attributes
    "xtf_official": (None, xtf),                  # the released code's RI definition and per-sample caps
    "tc": (("nll", "ref_nll"), tc),                 # "nll" first: the self-evolving reference needs it
    "df": (("nll",), df),
    # per-batch selection in xtf.train with ref_nll; nll (base losses) only for the detection report's excess loss
    "slm": (("ref_nll", "nll"), keep_all_answer_tokens),
    "random": (None, random_control),
    "oracle": ((), oracle),
    "stm": (("nll",), stm),
    "da": ((), keep_all_answer_tokens),           # all tokens of the augmented set (xtf.augment)
}
# Online methods (xtf.online.ONLINE) choose tokens per batch during training: offline they keep every answer token.
METHODS.update({name: (entry["needs"], keep_all_answer_tokens) for name, entry in online.ONLINE.items()
                if name not in METHODS})


# name → the MethodConfig keys it reads besides COMMON_KEYS (xtf.unread refuses an override of any other): None
# for the attribute methods (method.attributes and the sections of the attributes named there). A method that
# needs the reference losses ("ref_nll") also reads the reference model's keys (REFERENCE_KEYS).
COMMON_KEYS = frozenset({"name", "finetune", "epochs_factor", "exempt_special", "protect_answer", "protocol"})
REFERENCE_KEYS = ("reference_warmup", "reference_lora_r", "reference_lora_alpha", "reference_lora_dropout",
                  "reference_lr", "reference_warmup_ratio")
KEYS = {"normal": (), "normal_x2": (), "none": (), "xtf": None, "xtf_official": None,
        "tc": ("keep_ratio", "scope", "rounds", "evolve"), "df": ("drop_ratio",), "random": ("match",),
        "oracle": (), "stm": ("stm",), "da": ("da",)}
KEYS.update({name: entry["keys"] for name, entry in online.ONLINE.items() if name not in KEYS})


def method_keys(method) -> frozenset[str]:
    """The MethodConfig fields `method` reads (top level: "ri" stands for method.ri.*), under its own settings:
    XTF reads method.ri only with "ri" in method.attributes; random reads `ratio` without `match`, else what the
    matched method reads."""
    keys = KEYS[method.name]
    own = set(COMMON_KEYS) | set(("attributes", "cap", *method.attributes) if keys is None else keys)
    if "ref_nll" in (METHODS[method.name][0] or ()):
        own |= set(REFERENCE_KEYS)
    if method.name == "random":  # the registry's own entry: random borrows the keys of the method it matches
        own |= {"ratio"} if method.match is None else method_keys(dataclasses.replace(method, name=method.match))
    return frozenset(own)


def scores_needed(method) -> tuple[str, ...]:
    """The scores `method` reads: its own, or for `random` those of the method it matches (none for a ratio)."""
    name = method.match if method.name == "random" else method.name
    if name is None:
        return ()
    needs, _ = METHODS[name]
    return tuple(method.attributes) if needs is None else needs


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
    _, fn = METHODS[method.name]
    keeps, noisy, info = fn(rows, scores, method, seed, special)
    stats = mask_stats(rows, keeps, noisy)
    if method.protect_answer:
        stats["protected_tokens"] = int(sum(int((_protected(r, method) & _answer(r)).sum()) for r in rows))
    return keeps, noisy, {**stats, "rule": info}


# Which side of each score means "noise" (for AUROC against the injected truth): RI low (nothing builds on it),
# KN = PCP high (nothing new), TR low (off-domain), NLL high (the base finds it unlikely), tc = base loss minus
# reference loss low (TC keeps the top; SLM's excess loss at step 0, whose low end SLM drops).
NOISE_SIDE = {"ri": "low", "kn": "high", "tr": "low", "nll": "high", "tc": "low"}


def method_score(method) -> str | None:
    """The raw score a method ranks tokens by (a key of NOISE_SIDE), or None when it has no single one (normal,
    random, oracle, XTF with several attributes: a union of thresholded flags)."""
    if method is None:
        return None
    if method.name in ("xtf", "xtf_official"):
        return method.attributes[0] if len(method.attributes) == 1 else None
    return {"tc": "tc", "slm": "tc", "df": "nll"}.get(method.name)


def detection(rows: list[dict], keeps: list[np.ndarray], noisy: dict, scores: dict, method=None) -> dict | None:
    """How well the mask and each raw score find the injected noise (None without ground truth): AUROC of each
    score (with its orientation), precision / recall / F1 of the mask and of each attribute's own noisy set, per
    noise type and overall, over all answer tokens (xtf.detection). With `method`, each entry also gets
    "method_score": {"name", "orientation", "auroc"} for the score that method ranks by (`method_score`), so a
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
    own = method_score(method)
    if own in flat_scores:
        for entry in report.values():
            entry["method_score"] = {"name": own, "orientation": NOISE_SIDE[own], "auroc": entry[own]["auroc"]}
    return report
