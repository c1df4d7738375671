"""The explanation report: why each answer token was kept or masked, the "explainable" in XTF.

    python -m xtf.explain <run dir>          # writes <run dir>/explain/index.html (+ hist_<attr>.png)

Reads two files that the pipeline writes into the run dir:

- `token_samples.jsonl`, one line per sample shown: {id, tokens (decoded text per token, aligned to input_ids),
  response_mask, keep, scores: {attr: [float|null]}, noisy: {attr: [0|1]}, truth (optional): {type: [0|1]},
  protected (optional, under method.protect_answer): [0|1], the task's answer format that no method masks}.
  Only the attributes the method computed are present (none for `normal`).
- `score_summary.json`: {method, run_id, task, model, kept_fraction, attributes: {attr: {label, direction
  ("below"|"above"|"interval"), threshold, thresholds, interval, histogram: {counts, edges}, noisy_fraction,
  note (optional)}}, overlaps (optional), detection (optional)}.

The page is self-contained (no external CSS, JS or fonts). Each answer token is a <span> coloured by one
attribute's score (a radio control switches attributes; without JS the first attribute colours), masked tokens
are struck through and underlined in red, and the hover title gives every score, the reason for the mask and the
injected-noise label when the synthetic task provides one; protected tokens (the answer format) are outlined in
green. Colour = score decile among the answer tokens on the page, oriented so that the warm end is the side where
the attribute calls a token noise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
from html import escape
from pathlib import Path

import numpy as np

from xtf.cache import atomic_write_text

KNOWN_ORDER = ("ri", "kn", "tr")
# 10 light colours, index 0 = the "noise" side (warm), 9 = the clean side (cool); dark text stays readable.
PALETTE = ("#f4a582", "#f7b799", "#f9c9b0", "#fbdbc8", "#fdeee3", "#eef3f8", "#dde9f3", "#cbdfee", "#b9d4e9",
           "#a7cae4")
NBINS = len(PALETTE)

CSS = """
body{font:14px/1.45 "DejaVu Sans","Liberation Sans",sans-serif;color:#222;margin:0;background:#fafafa}
header{background:#263238;color:#eceff1;padding:14px 24px}header h1{margin:0 0 6px;font-size:19px}
header .meta{display:flex;flex-wrap:wrap;gap:2px 18px}header .meta span{white-space:nowrap}header b{color:#fff}
main{padding:12px 24px;max-width:1200px}h2{font-size:16px;margin:18px 0 8px}
.panel{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:10px 0}
.sticky{position:sticky;top:0;z-index:2;box-shadow:0 2px 6px rgba(0,0,0,.06)}
.controls label{margin-right:14px;cursor:pointer}body:not([data-js]) .js{display:none}
.leg{display:none;align-items:center;gap:2px;margin-top:6px;font-size:12px}
.leg i{width:26px;height:14px;display:inline-block}
.keys span{margin-right:14px}.hists{display:flex;flex-wrap:wrap;gap:10px}.hists figure{margin:0}
.hists figcaption{font-size:12px;color:#555;max-width:370px}table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ddd;padding:2px 8px;text-align:right}th{background:#f0f0f0}
.sample{background:#fff;border:1px solid #ddd;border-radius:6px;margin:12px 0;padding:8px 14px}
.sample h3{font-size:13px;margin:0 0 6px;color:#37474f;font-weight:normal}.sample h3 b{color:#000}
.text{font:13px/1.7 "DejaVu Sans Mono","Liberation Mono",monospace;white-space:pre-wrap;word-break:break-word}
details.prompt{margin-bottom:6px}details.prompt summary{font-size:12px;color:#888;cursor:pointer}
.p{color:#9e9e9e;font-size:11px}.a{border-radius:2px;box-shadow:inset -1px 0 0 #fff}
.m{text-decoration:line-through;text-decoration-color:#333;
box-shadow:inset 0 -2px 0 #d32f2f,inset -1px 0 0 #fff;opacity:.85}
body.show-truth .gt{outline:1px dashed #6a1b9a;outline-offset:-1px}.pr{outline:2px solid #2e7d32;outline-offset:-2px}
.nl::before{content:"\\21b5";color:#b0b0b0;font-size:10px}
"""

JS = """(function(){var b=document.body;b.setAttribute('data-js','1');
document.querySelectorAll('input[name=colour]').forEach(function(r){r.addEventListener('change',function(){
b.setAttribute('data-colour',r.value);});});var t=document.getElementById('show-truth');
if(t){t.addEventListener('change',function(){b.classList.toggle('show-truth',t.checked);});}})();"""


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", name.lower())


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def load_run(run_dir: Path) -> tuple[dict, list[dict]]:
    """The summary and the samples, checked for alignment (every per-token list as long as `tokens`)."""
    summary = json.loads((run_dir / "score_summary.json").read_text())
    samples = []
    with open(run_dir / "token_samples.jsonl") as f:
        for line in f:
            if not line.strip():
                continue
            s = json.loads(line)
            n = len(s["tokens"])
            lists = {"response_mask": s["response_mask"], "keep": s["keep"], **(
                {"protected": s["protected"]} if "protected" in s else {})}
            for group in ("scores", "noisy", "truth"):
                lists.update({f"{group}.{k}": v for k, v in (s.get(group) or {}).items()})
            for name, v in lists.items():
                if len(v) != n:
                    raise ValueError(f"sample {s.get('id')}: {name} has {len(v)} entries, tokens has {n}")
            samples.append(s)
    return summary, samples


def _attributes(summary: dict, samples: list[dict]) -> list[str]:
    names = list((summary.get("attributes") or {}).keys())
    for s in samples:
        names += [a for a in (s.get("scores") or {}) if a not in names]
    return sorted(names, key=lambda a: (KNOWN_ORDER.index(a) if a in KNOWN_ORDER else len(KNOWN_ORDER), names.index(a)))


def _answer_scores(samples: list[dict], attr: str) -> np.ndarray:
    vals = [v for s in samples for v, r in zip((s.get("scores") or {}).get(attr, []), s["response_mask"])
            if r and v is not None and math.isfinite(v)]
    return np.asarray(vals, dtype=float)


def _bin_edges(vals: np.ndarray) -> np.ndarray:
    """Inner decile edges of the page's answer-token scores (ties go to the upper bin)."""
    if vals.size == 0:
        return np.zeros(NBINS - 1)
    return np.quantile(vals, np.arange(1, NBINS) / NBINS)


def _bin(v, edges: np.ndarray, direction: str) -> str:
    if v is None or not math.isfinite(v):
        return "na"
    b = int(np.searchsorted(edges, v, side="right"))
    return str(NBINS - 1 - b if direction == "above" else b)  # index 0 = the side that is noise


def plot_histogram(attr: str, info: dict, out: Path) -> bool:
    """One histogram in the paper's Fig. 3 style: the score distribution with the threshold(s) drawn on it."""
    hist = info.get("histogram") or {}
    counts, edges = hist.get("counts"), hist.get("edges")
    if not counts or not edges or len(edges) != len(counts) + 1:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(3.7, 2.4), dpi=100)
    ax.stairs(counts, edges, fill=True, color="#90a4ae", alpha=0.9)
    if info.get("interval") and None not in info["interval"]:
        lo, hi = info["interval"]
        ax.axvspan(lo, hi, color="#d32f2f", alpha=0.18, label=f"dropped [{lo:.3g}, {hi:.3g}]")
    for i, t in enumerate(info.get("thresholds") or []):
        ax.axvline(t, color="#e57373", lw=1, ls="--", label="thresholds" if i == 0 else None)
    if info.get("threshold") is not None:
        ax.axvline(info["threshold"], color="#c62828", lw=1.6, label=f"threshold {info['threshold']:.3g}")
    ax.set_title(f"{info.get('label', attr.upper())} — noise {info.get('direction', '?')}", fontsize=9)
    ax.set_xlabel("score", fontsize=8)
    ax.set_ylabel("answer tokens", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.spines[["top", "right"]].set_visible(False)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return True


def _table(d: dict) -> str:
    """A dict as a table: nested dicts become rows × columns, scalars a two-column list."""
    if d and all(isinstance(v, dict) for v in d.values()):
        cols = list(dict.fromkeys(k for v in d.values() for k in v))
        head = "".join(f"<th>{escape(str(c))}</th>" for c in cols)
        rows = "".join(f"<tr><th>{escape(str(k))}</th>" + "".join(f"<td>{escape(_fmt(v.get(c)))}</td>" for c in cols)
                       + "</tr>" for k, v in d.items())
        return f"<table><tr><th></th>{head}</tr>{rows}</table>"
    return "<table>" + "".join(f"<tr><th>{escape(str(k))}</th><td>{escape(_fmt(v))}</td></tr>"
                               for k, v in d.items()) + "</table>"


def _token_span(s: dict, t: int, attrs: list[str], labels: dict, bins: dict) -> str:
    tok = s["tokens"][t]
    text = escape(tok, quote=True)
    nl = " nl" if "\n" in tok else ""
    if not s["response_mask"][t]:
        return f'<span class="p{nl}" title="prompt / context (never trained)">{text}</span>'
    scores, noisy, truth = s.get("scores") or {}, s.get("noisy") or {}, s.get("truth") or {}
    lines = []
    for a in attrs:
        v = scores.get(a, [None] * len(s["tokens"]))[t]
        flag = " (noisy)" if noisy.get(a) and noisy[a][t] else ""
        lines.append(f"{labels[a]}: {_fmt(v)}{flag}")
    flagged = [labels[a] for a in attrs if noisy.get(a) and noisy[a][t]]
    cls = ["a"] + [f"c-{_slug(a)}-{_bin(scores.get(a, [None] * len(s['tokens']))[t], *bins[a])}" for a in attrs]
    if (s.get("protected") or [0] * len(s["tokens"]))[t]:
        cls.append("pr")
        lines.append("protected: the task's answer format, never masked (method.protect_answer)")
    if s["keep"][t]:
        lines.append("kept" + (f" (flagged by {', '.join(flagged)} but kept)" if flagged else ""))
    else:
        cls.append("m")
        reason = ", ".join(flagged) if flagged else "the method (no attribute flagged it)"
        lines.append(f"MASKED — reason: {reason}")
    if truth:
        types = [k for k, v in truth.items() if v[t]]
        lines.append("truth: " + (", ".join(types) + " (injected noise)" if types else "clean"))
        if types:
            cls.append("gt")
    title = escape("\n".join(lines), quote=True)
    return f'<span class="{" ".join(cls)}{nl}" title="{title}">{text}</span>'


def _sample_html(s: dict, attrs: list[str], labels: dict, bins: dict) -> str:
    n = len(s["tokens"])
    resp = [bool(r) for r in s["response_mask"]]
    n_ans = sum(resp)
    n_kept = sum(1 for r, k in zip(resp, s["keep"]) if r and k)
    facts = [f"<b>{escape(str(s.get('id', '?')))}</b>", f"{n_ans} answer tokens",
             f"kept {n_kept} ({n_kept / n_ans:.0%})" if n_ans else "no answer tokens"]
    for a in attrs:
        flags = (s.get("noisy") or {}).get(a)
        if flags:
            facts.append(f"{escape(labels[a])} flagged {sum(1 for r, f in zip(resp, flags) if r and f)}")
    for k, v in (s.get("truth") or {}).items():
        facts.append(f"injected {escape(k)}: {sum(v)}")
    first = next((t for t in range(n) if resp[t]), n)
    spans = [_token_span(s, t, attrs, labels, bins) for t in range(n)]
    prompt = ""
    if first:
        prompt = (f'<details class="prompt"><summary>prompt ({first} tokens, context only)</summary>'
                  f'<div class="text">{"".join(spans[:first])}</div></details>')
    return (f'<section class="sample"><h3>{" · ".join(facts)}</h3>{prompt}'
            f'<div class="text">{"".join(spans[first:])}</div></section>')


def _colour_css(attrs: list[str]) -> str:
    rules = []
    for a in attrs:
        sel = f'body[data-colour="{_slug(a)}"]'
        rules += [f"{sel} .c-{_slug(a)}-{i}{{background:{c}}}" for i, c in enumerate(PALETTE)]
        rules.append(f"{sel} .c-{_slug(a)}-na{{background:repeating-linear-gradient(45deg,#eee 0 3px,#fff 3px 6px)}}")
        rules.append(f'{sel} .leg[data-for="{_slug(a)}"]{{display:flex}}')
    return "\n".join(rules)


def _legend(a: str, label: str, direction: str, edges: np.ndarray, vals: np.ndarray) -> str:
    if vals.size == 0:
        return f'<div class="leg" data-for="{_slug(a)}">{escape(label)}: no scores on this page</div>'
    bounds = [float(vals.min()), *edges.tolist(), float(vals.max())]
    order = range(NBINS - 1, -1, -1) if direction == "above" else range(NBINS)
    sw = "".join(f'<i style="background:{PALETTE[c]}" title="{bounds[i]:.4g} – {bounds[i + 1]:.4g}"></i>'
                 for i, c in enumerate(order))
    return (f'<div class="leg" data-for="{_slug(a)}">{escape(label)}: low {bounds[0]:.4g} {sw} '
            f'{bounds[-1]:.4g} high &nbsp;(score deciles on this page; warm = the side where it is noise: '
            f'"{escape(direction)}")</div>')


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


def write_inputs(run_dir: Path, rows: list[dict], tokenizer, keeps: list, noisy: dict, scores: dict, mask_stats: dict,
                 header: dict, detection: dict | None = None, n_samples: int = 30,
                 selection: dict | None = None) -> None:
    """The producer side: token_samples.jsonl (the first `n_samples` rows) and score_summary.json (histograms over
    ALL answer tokens, thresholds from the mask rule), in the formats documented at the top of this module.
    `selection` (an online method's xtf.online.selection_shares): each token's share of training steps in which
    it was selected becomes the "selected" score of the page, and selection.npz (share per token, visits per
    row, flat with row lengths) is saved with the run."""
    attrs = [a for a in KNOWN_ORDER if a in noisy]
    if selection is not None:
        scores = {**scores, SELECTED: selection["share"]}
        lengths = [len(s) for s in selection["share"]]
        final = Path(run_dir) / "selection.npz"
        part = final.with_name(f".{final.name}.{os.getpid()}.part")  # whole or absent: renamed when written
        with open(part, "wb") as f:
            np.savez(f, share=np.concatenate(selection["share"]) if lengths else np.zeros(0), lengths=lengths,
                     visits=np.asarray(selection["visits"]))
        os.replace(part, final)
    lines = []
    for i, row in enumerate(rows[:n_samples]):
        answer = np.asarray(row["response_mask"], bool)

        def per_token(values, answer=answer):
            return [round(float(v), 5) if a and math.isfinite(float(v)) else None for v, a in zip(values, answer)]

        lines.append(json.dumps({
            "id": row["id"],
            "tokens": [tokenizer.decode([t]) for t in row["input_ids"]],
            "response_mask": answer.astype(int).tolist(),
            "keep": np.asarray(keeps[i]).astype(int).tolist(),
            "scores": {a: per_token(scores[a][i]) for a in attrs + ([SELECTED] if selection is not None else [])},
            "noisy": {a: np.asarray(noisy[a][i]).astype(int).tolist() for a in attrs},
            **({"truth": {k: np.asarray(v).astype(int).tolist() for k, v in row["truth"].items()}}
               if "truth" in row else {}),
            **({"protected": np.asarray(row["protected"]).astype(int).tolist()}
               if "protected" in row and "protected_tokens" in mask_stats else {}),  # the switch was on
        }))
    atomic_write_text(Path(run_dir) / "token_samples.jsonl", "\n".join(lines) + "\n")
    rule = mask_stats.get("rule", {})
    summary_attrs = {}
    for a in attrs:
        vals = np.concatenate([np.asarray(v)[np.asarray(r["response_mask"], bool)] for v, r in zip(scores[a], rows)])
        vals = vals[np.isfinite(vals)]
        counts, edges = np.histogram(vals, bins=40) if vals.size else (np.zeros(0), np.zeros(0))
        entry = {"label": ATTRIBUTE_LABELS[a], "direction": DIRECTIONS[a], "threshold": None, "thresholds": None,
                 "interval": None, "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
                 "noisy_fraction": mask_stats.get(f"noisy_fraction_{a}")}
        info = rule.get(a, {})
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
        entry["most_flagged"] = most_common_tokens(rows, noisy[a], tokenizer)
        summary_attrs[a] = entry
    if selection is not None:
        vals = np.concatenate([np.asarray(v)[np.asarray(r["response_mask"], bool)]
                               for v, r in zip(scores[SELECTED], rows)])
        vals = vals[np.isfinite(vals)]
        counts, edges = np.histogram(vals, bins=20, range=(0, 1)) if vals.size else (np.zeros(0), np.zeros(0))
        summary_attrs[SELECTED] = {"label": ATTRIBUTE_LABELS[SELECTED], "direction": DIRECTIONS[SELECTED],
                                   "threshold": None, "thresholds": None, "interval": None,
                                   "histogram": {"counts": counts.tolist(), "edges": edges.tolist()},
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


def write_report(run_dir: Path) -> Path:
    """Write <run_dir>/explain/index.html and hist_<attr>.png; return the HTML path. The folder is written beside
    (.explain-<pid>) and renamed into place when whole: a full disk or a kill leaves the previous report or none,
    never a partial page."""
    run_dir = Path(run_dir)
    final = run_dir / "explain"
    work = run_dir / f".explain-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        _write_report(run_dir, work)
        old = run_dir / f".explain-old-{os.getpid()}"
        if final.exists():
            final.rename(old)
        work.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return final / "index.html"


def _write_report(run_dir: Path, out: Path) -> None:
    summary, samples = load_run(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = summary.get("attributes") or {}
    attrs = _attributes(summary, samples)
    labels = {a: (info.get(a) or {}).get("label") or a.upper() for a in attrs}
    directions = {a: (info.get(a) or {}).get("direction") or "below" for a in attrs}
    vals = {a: _answer_scores(samples, a) for a in attrs}
    bins = {a: (_bin_edges(vals[a]), directions[a]) for a in attrs}

    n_ans = sum(sum(1 for r in s["response_mask"] if r) for s in samples)
    n_kept = sum(sum(1 for r, k in zip(s["response_mask"], s["keep"]) if r and k) for s in samples)
    kept = summary.get("kept_fraction", n_kept / n_ans if n_ans else None)
    meta = [("run", summary.get("run_id")), ("task", summary.get("task")), ("model", summary.get("model")),
            ("method", summary.get("method")), ("kept", f"{kept:.1%}" if isinstance(kept, float | int) else None)]
    for a in attrs:
        nf = (info.get(a) or {}).get("noisy_fraction")
        meta.append((f"{labels[a]} noisy", f"{nf:.1%}" if isinstance(nf, float | int) else None))
    header = "".join(f"<span>{escape(k)}: <b>{escape(_fmt(v))}</b></span>" for k, v in meta)

    has_truth = any(s.get("truth") for s in samples)
    radios = "".join(f'<label><input type="radio" name="colour" value="{_slug(a)}"{" checked" if i == 0 else ""}> '
                     f"{escape(labels[a])}</label>" for i, a in enumerate(attrs))
    controls = ""
    if attrs:
        controls = (f'<div class="controls"><b>colour by</b> {radios}<label class="js"><input type="radio" '
                    f'name="colour" value="none"> none</label></div>')
    if has_truth:
        controls += ('<div class="controls js"><label><input type="checkbox" id="show-truth" checked> outline '
                     "injected noise (ground truth)</label></div>")
    legends = "".join(_legend(a, labels[a], directions[a], bins[a][0], vals[a]) for a in attrs)
    keys = ('<div class="keys"><span class="text"><span class="a" style="background:#dde9f3">kept</span></span>'
            '<span class="text"><span class="a m" style="background:#f9c9b0">masked</span></span>'
            '<span class="text"><span class="p">prompt</span></span>'
            + ('<span class="text"><span class="a gt" style="outline:1px dashed #6a1b9a">injected noise</span></span>'
               if has_truth else "")
            + ('<span class="text"><span class="a pr">protected (answer format)</span></span>'
               if any(any(s.get("protected") or ()) for s in samples) else "")
            + "<span>hover a token for its scores and the reason</span></div>")
    if not attrs:
        keys += "<p>This method computes no token attributes: every answer token is shown as the method kept it.</p>"

    figs = []
    for a in attrs:
        png = out / f"hist_{_slug(a)}.png"
        if plot_histogram(a, info.get(a) or {}, png):
            note = (info.get(a) or {}).get("note")
            cap = f"{labels[a]} over all answer tokens" + (f" — {note}" if note else "")
            figs.append(f'<figure><img src="{png.name}" alt="histogram of {escape(labels[a])}">'
                        f"<figcaption>{escape(cap)}</figcaption></figure>")
    extra = ""
    if figs:
        extra += f'<h2>Score distributions</h2><div class="panel hists">{"".join(figs)}</div>'
    tops = {"masked (any attribute)": summary.get("most_masked")}
    tops.update({f"{labels[a]} ({(info.get(a) or {}).get('flagged')} flagged)": (info.get(a) or {}).get("most_flagged")
                 for a in attrs})
    rows_html = "".join(f"<tr><th>{escape(k)}</th><td>"
                        f"{escape(', '.join(f'{t} ×{n} ({share:.0%})' for t, n, share in v))}</td></tr>"
                        for k, v in tops.items() if v)
    if rows_html:
        extra += ('<h2>Most-masked tokens</h2><div class="panel"><p>token ×times flagged (share of its answer '
                  f'occurrences)</p><table>{rows_html}</table></div>')
    for key, title in (("detection", "Detection of injected noise"), ("overlaps", "Overlaps between attributes")):
        if summary.get(key):
            extra += f'<h2>{title}</h2><div class="panel">{_table(summary[key])}</div>'

    body = "".join(_sample_html(s, attrs, labels, bins) for s in samples)
    first = _slug(attrs[0]) if attrs else "none"
    title = f"XTF explanation — {summary.get('run_id', run_dir.name)}"
    html = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(str(title))}</title>
<style>{CSS}{_colour_css(attrs)}</style></head>
<body data-colour="{first}"{' class="show-truth"' if has_truth else ""}>
<header><h1>{escape(str(title))}</h1><div class="meta">{header}</div></header>
<main><div class="panel sticky">{controls}{legends}{keys}</div>{extra}
<h2>Samples ({len(samples)})</h2>{body}</main>
<script>{JS}</script></body></html>
"""
    (out / "index.html").write_text(html, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run_dir", type=Path, help="a run dir holding token_samples.jsonl and score_summary.json")
    run_dir = p.parse_args(argv).run_dir
    missing = [n for n in ("score_summary.json", "token_samples.jsonl") if not (run_dir / n).is_file()]
    if not run_dir.is_dir() or missing:  # one line and exit 2, as argparse does for a bad argument
        what = "is not a directory" if not run_dir.is_dir() else f"has no {' or '.join(missing)}"
        p.exit(2, f"xtf.explain: error: {run_dir} {what}; give a run dir, results/<experiment>/<run_id>/ "
                  f"(every complete run writes both files)\n")
    try:
        print(write_report(run_dir))
    except (OSError, ValueError, KeyError) as e:  # unreadable, malformed or misaligned files (load_run names them)
        p.exit(2, f"xtf.explain: error: {run_dir}: malformed run files ({type(e).__name__}: {e}); rerun the run "
                  f"with run.py force=true to rewrite them\n")


if __name__ == "__main__":
    main()
