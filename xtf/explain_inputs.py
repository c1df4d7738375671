"""The producer side of the explanation report: the pipeline writes token_samples.jsonl, score_summary.json (and,
for an online method, selection.npz) into the run dir, in the formats documented in xtf.explain, which reads them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from xtf.cache import atomic_write_text

KNOWN_ORDER = ("ri", "kn", "tr")
SELECTED = "selected"  # online methods: each token's share of training steps in which it was selected
ATTRIBUTE_LABELS = {"ri": "reasoning importance (RI)", "kn": "knowledge novelty (KN, PCP)", "tr": "task relevance (TR)",
                    SELECTED: "selected during training (share of the row's steps)"}
DIRECTIONS = {"ri": "below", "kn": "above", "tr": "interval", SELECTED: "below"}


def detection_table(detection: dict) -> dict:
    """The nested detection report as rows (overall, each noise type) × flat, rounded columns for the page."""
    table = {}
    for kind, entry in detection.items():
        row = {"noise tokens": entry.get("n_noise_tokens")}
        for name, value in entry.items():
            if not isinstance(value, dict):
                continue
            for metric, short in (("auroc", "AUROC"), ("precision", "P"), ("recall", "R"), ("f1", "F1")):
                if value.get(metric) is not None:
                    row[f"{name} {short}"] = round(value[metric], 3)
        table[kind] = row
    return table


def most_common_tokens(rows: list[dict], flags: list, tokenizer, top: int = 15) -> list[list]:
    """[[token text (repr, so "\\n" and " " are visible), times flagged, share of that token's answer
    occurrences flagged], ...] for the `top` most often flagged token ids over all rows: a rule that collapses
    onto EOS or " =" shows up here at once."""
    flagged: dict[int, int] = {}
    seen: dict[int, int] = {}
    for row, f in zip(rows, flags):
        ids = np.asarray(row["input_ids"])
        for t in ids[np.asarray(row["response_mask"], bool)]:
            seen[int(t)] = seen.get(int(t), 0) + 1
        for t in ids[np.asarray(f, bool)]:
            flagged[int(t)] = flagged.get(int(t), 0) + 1
    order = sorted(flagged, key=lambda t: (-flagged[t], t))[:top]
    return [[repr(tokenizer.decode([t])), flagged[t], round(flagged[t] / max(seen.get(t, 0), 1), 3)] for t in order]


def _save_selection(run_dir: Path, selection: dict) -> None:
    """selection.npz: share per token (flat, with the row lengths) and visits per row; whole or absent."""
    lengths = [len(s) for s in selection["share"]]
    final = Path(run_dir) / "selection.npz"
    part = final.with_name(f".{final.name}.{os.getpid()}.part")  # renamed into place when written
    with open(part, "wb") as f:
        np.savez(f, share=np.concatenate(selection["share"]) if lengths else np.zeros(0), lengths=lengths,
                 visits=np.asarray(selection["visits"]))
    os.replace(part, final)


def _sample_line(row: dict, keep, tokenizer, scores: dict, noisy: dict, protected: bool) -> str:
    """One line of token_samples.jsonl; `scores` and `noisy` hold this row's per-token lists by attribute, scores
    only on answer tokens (None elsewhere and where not finite)."""
    answer = np.asarray(row["response_mask"], bool)

    def per_token(values):
        return [round(float(v), 5) if a and math.isfinite(float(v)) else None for v, a in zip(values, answer)]

    return json.dumps({
        "id": row["id"],
        "tokens": [tokenizer.decode([t]) for t in row["input_ids"]],
        "response_mask": answer.astype(int).tolist(),
        "keep": np.asarray(keep).astype(int).tolist(),
        "scores": {a: per_token(v) for a, v in scores.items()},
        "noisy": {a: np.asarray(v).astype(int).tolist() for a, v in noisy.items()},
        **({"truth": {k: np.asarray(v).astype(int).tolist() for k, v in row["truth"].items()}}
           if "truth" in row else {}),
        **({"protected": np.asarray(row["protected"]).astype(int).tolist()} if protected else {}),
    })


def _answer_histogram(rows: list[dict], per_row: list, **bins) -> dict:
    """np.histogram of the finite scores of every answer token over all rows, as lists ({} counts when none)."""
    vals = np.concatenate([np.asarray(v)[np.asarray(r["response_mask"], bool)] for v, r in zip(per_row, rows)])
    vals = vals[np.isfinite(vals)]
    counts, edges = np.histogram(vals, **bins) if vals.size else (np.zeros(0), np.zeros(0))
    return {"counts": counts.tolist(), "edges": edges.tolist()}


def _attribute_entry(a: str, rows: list[dict], scores: list, noisy: list, mask_stats: dict, tokenizer) -> dict:
    """score_summary.json's entry for attribute `a`: its histogram and the mask rule's thresholds on it."""
    entry = {"label": ATTRIBUTE_LABELS[a], "direction": DIRECTIONS[a], "threshold": None, "thresholds": None,
             "interval": None, "histogram": _answer_histogram(rows, scores, bins=40),
             "noisy_fraction": mask_stats.get(f"noisy_fraction_{a}")}
    info = mask_stats.get("rule", {}).get(a, {})
    if a == "kn":
        entry["threshold"] = info.get("threshold")
    elif a == "ri":
        entry["thresholds"] = info.get("fence_quantiles")
        entry["note"] = f"per-sample Tukey fences (k = {info.get('k')}): 10/50/90 % quantiles"
    elif "threshold" in info:  # the released rule: one cut, below it is noise
        entry["threshold"] = info.get("threshold")
        entry["note"] = "the released code's Multi-Otsu class choice (over every token occurrence)"
    else:
        entry["thresholds"] = info.get("cuts")
        entry["interval"] = info.get("interval")
        entry["note"] = "Multi-Otsu cut points; the shaded cluster is noise"
    entry["flagged"] = mask_stats.get(f"noisy_tokens_{a}")
    entry["most_flagged"] = most_common_tokens(rows, noisy, tokenizer)
    return entry


def write_inputs(run_dir: Path, rows: list[dict], tokenizer, keeps: list, noisy: dict, scores: dict, mask_stats: dict,
                 header: dict, detection: dict | None = None, n_samples: int = 30,
                 selection: dict | None = None) -> None:
    """The producer side: token_samples.jsonl (the first `n_samples` rows) and score_summary.json (histograms over
    ALL answer tokens, thresholds from the mask rule), in the formats documented in xtf.explain.
    `selection` (an online method's xtf.online.selection_shares): each token's share of training steps in which
    it was selected becomes the "selected" score of the page, and selection.npz (share per token, visits per
    row, flat with row lengths) is saved with the run."""
    attrs = [a for a in KNOWN_ORDER if a in noisy]
    shown = attrs
    if selection is not None:
        scores, shown = {**scores, SELECTED: selection["share"]}, attrs + [SELECTED]
        _save_selection(run_dir, selection)
    protected = "protected_tokens" in mask_stats  # the switch (method.protect_answer) was on
    lines = [_sample_line(row, keeps[i], tokenizer, {a: scores[a][i] for a in shown}, {a: noisy[a][i] for a in attrs},
                          protected and "protected" in row) for i, row in enumerate(rows[:n_samples])]
    atomic_write_text(Path(run_dir) / "token_samples.jsonl", "\n".join(lines) + "\n")
    summary_attrs = {a: _attribute_entry(a, rows, scores[a], noisy[a], mask_stats, tokenizer) for a in attrs}
    if selection is not None:
        summary_attrs[SELECTED] = {"label": ATTRIBUTE_LABELS[SELECTED], "direction": DIRECTIONS[SELECTED],
                                   "threshold": None, "thresholds": None, "interval": None,
                                   "histogram": _answer_histogram(rows, scores[SELECTED], bins=20, range=(0, 1)),
                                   "noisy_fraction": None, "note": "online selection, accumulated during training"}
    most_masked = mask_stats.get("most_masked")  # xtf.summary.most_masked, when the pipeline computed it already
    if most_masked is None:
        masked = [np.asarray(r["response_mask"], bool) & ~np.asarray(k, bool) for r, k in zip(rows, keeps)]
        most_masked = most_common_tokens(rows, masked, tokenizer)
    summary = {**header, "kept_fraction": mask_stats["kept_fraction"], "attributes": summary_attrs,
               "most_masked": most_masked}
    if "overlaps" in mask_stats:
        summary["overlaps"] = mask_stats["overlaps"]
    if detection:
        summary["detection"] = detection_table(detection)
    atomic_write_text(Path(run_dir) / "score_summary.json", json.dumps(summary, indent=1))
