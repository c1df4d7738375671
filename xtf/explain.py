"""The explanation report: why each answer token was kept or masked, the "explainable" in XTF.

    python -m xtf.explain <run dir>          # writes <run dir>/explain/index.html (+ hist_<attr>.png)

Reads two files that the pipeline writes into the run dir (xtf.explain_inputs.write_inputs):

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

The page is a jinja2 template with autoescape on (xtf/templates/explain/report.html.j2, with report.css and
report.js, package data); this module turns the two files into the plain values the template shows.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import shutil
from pathlib import Path

import jinja2
import numpy as np
from markupsafe import Markup

# The producer side lives in xtf.explain_inputs; its entry points stay importable from here (xtf.pipeline calls
# explain.write_inputs, xtf.summary uses most_common_tokens).
from xtf.explain_inputs import KNOWN_ORDER, most_common_tokens, write_inputs  # noqa: F401

# 10 light colours, index 0 = the "noise" side (warm), 9 = the clean side (cool); dark text stays readable.
PALETTE = ("#f4a582", "#f7b799", "#f9c9b0", "#fbdbc8", "#fdeee3", "#eef3f8", "#dde9f3", "#cbdfee", "#b9d4e9",
           "#a7cae4")
NBINS = len(PALETTE)


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


def _table_view(d: dict) -> dict:
    """A dict as a table: nested dicts become rows × columns, scalars a two-column list."""
    if d and all(isinstance(v, dict) for v in d.values()):
        cols = list(dict.fromkeys(k for v in d.values() for k in v))
        return {"columns": [str(c) for c in cols],
                "rows": [(str(k), [_fmt(v.get(c)) for c in cols]) for k, v in d.items()]}
    return {"columns": None, "rows": [(str(k), [_fmt(v)]) for k, v in d.items()]}


def _token_view(s: dict, t: int, attrs: list[str], labels: dict, bins: dict) -> dict:
    """One token's span: {text, cls (space-separated classes), title (the hover text, one fact a line)}."""
    tok = s["tokens"][t]
    nl = " nl" if "\n" in tok else ""  # .nl draws a ↵ before a token holding a line break
    if not s["response_mask"][t]:
        return {"text": tok, "cls": f"p{nl}", "title": "prompt / context (never trained)"}
    n = len(s["tokens"])
    scores, noisy, truth = s.get("scores") or {}, s.get("noisy") or {}, s.get("truth") or {}
    lines = []
    for a in attrs:
        flag = " (noisy)" if noisy.get(a) and noisy[a][t] else ""
        lines.append(f"{labels[a]}: {_fmt(scores.get(a, [None] * n)[t])}{flag}")
    flagged = [labels[a] for a in attrs if noisy.get(a) and noisy[a][t]]
    cls = ["a"] + [f"c-{_slug(a)}-{_bin(scores.get(a, [None] * n)[t], *bins[a])}" for a in attrs]
    if (s.get("protected") or [0] * n)[t]:
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
    return {"text": tok, "cls": " ".join(cls) + nl, "title": "\n".join(lines)}


def _sample_view(s: dict, attrs: list[str], labels: dict, bins: dict) -> dict:
    """One sample: {id, facts (the heading after the id), prompt and answer (token views; the prompt is every
    token before the first answer token)}."""
    n = len(s["tokens"])
    resp = [bool(r) for r in s["response_mask"]]
    n_ans = sum(resp)
    n_kept = sum(1 for r, k in zip(resp, s["keep"]) if r and k)
    facts = [f"{n_ans} answer tokens", f"kept {n_kept} ({n_kept / n_ans:.0%})" if n_ans else "no answer tokens"]
    for a in attrs:
        flags = (s.get("noisy") or {}).get(a)
        if flags:
            facts.append(f"{labels[a]} flagged {sum(1 for r, f in zip(resp, flags) if r and f)}")
    facts += [f"injected {k}: {sum(v)}" for k, v in (s.get("truth") or {}).items()]
    first = next((t for t in range(n) if resp[t]), n)
    tokens = [_token_view(s, t, attrs, labels, bins) for t in range(n)]
    return {"id": str(s.get("id", "?")), "facts": facts, "prompt": tokens[:first], "answer": tokens[first:]}


def _legend_view(a: str, label: str, direction: str, edges: np.ndarray, vals: np.ndarray) -> dict:
    """The colour scale of one attribute: swatches from the noise side to the clean side, each titled with its
    score range; no swatches when the page has no scores for it."""
    view = {"slug": _slug(a), "label": label, "direction": direction, "swatches": []}
    if vals.size:
        bounds = [float(vals.min()), *edges.tolist(), float(vals.max())]
        order = range(NBINS - 1, -1, -1) if direction == "above" else range(NBINS)
        view["swatches"] = [(PALETTE[c], f"{bounds[i]:.4g} – {bounds[i + 1]:.4g}") for i, c in enumerate(order)]
        view.update(low=f"{bounds[0]:.4g}", high=f"{bounds[-1]:.4g}")
    return view


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


@functools.cache
def _environment() -> jinja2.Environment:
    """The page's templates, package data under xtf/templates/explain. autoescape=True for every template (the
    names end in .j2, which select_autoescape's defaults would not escape)."""
    return jinja2.Environment(loader=jinja2.PackageLoader("xtf", "templates/explain"), autoescape=True,
                              trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)


def _static(name: str) -> Markup:
    """A static file of the page (report.css, report.js), inserted as it is. Markup on purpose: it is the package's
    own text, never run data, and escaping would break its quotes and > selectors."""
    env = _environment()
    return Markup(env.loader.get_source(env, name)[0])


def _meta_view(summary: dict, samples: list[dict], attrs: list[str], labels: dict, info: dict) -> list[tuple]:
    """The header's (key, formatted value) pairs: the run, the kept share and each attribute's noisy share."""
    n_ans = sum(sum(1 for r in s["response_mask"] if r) for s in samples)
    n_kept = sum(sum(1 for r, k in zip(s["response_mask"], s["keep"]) if r and k) for s in samples)
    kept = summary.get("kept_fraction", n_kept / n_ans if n_ans else None)
    meta = [("run", summary.get("run_id")), ("task", summary.get("task")), ("model", summary.get("model")),
            ("method", summary.get("method")), ("kept", f"{kept:.1%}" if isinstance(kept, float | int) else None)]
    for a in attrs:
        nf = (info.get(a) or {}).get("noisy_fraction")
        meta.append((f"{labels[a]} noisy", f"{nf:.1%}" if isinstance(nf, float | int) else None))
    return [(k, _fmt(v)) for k, v in meta]


def _figures_view(out: Path, attrs: list[str], labels: dict, info: dict) -> list[dict]:
    """Plots hist_<attr>.png into `out` for each attribute with a histogram; their {src, label, caption}."""
    figures = []
    for a in attrs:
        png = out / f"hist_{_slug(a)}.png"
        if plot_histogram(a, info.get(a) or {}, png):
            note = (info.get(a) or {}).get("note")
            caption = f"{labels[a]} over all answer tokens" + (f" — {note}" if note else "")
            figures.append({"src": png.name, "label": labels[a], "caption": caption})
    return figures


def _most_flagged_view(summary: dict, attrs: list[str], labels: dict, info: dict) -> list[tuple]:
    """(heading, "token ×times (share), ...") rows: the tokens masked most, then those each attribute flagged most."""
    tops = {"masked (any attribute)": summary.get("most_masked")}
    tops.update({f"{labels[a]} ({(info.get(a) or {}).get('flagged')} flagged)": (info.get(a) or {}).get("most_flagged")
                 for a in attrs})
    return [(k, ", ".join(f"{t} ×{n} ({share:.0%})" for t, n, share in v)) for k, v in tops.items() if v]


def _write_report(run_dir: Path, out: Path) -> None:
    """Render the run's page and its histograms into the folder `out` (write_report renames it into place)."""
    summary, samples = load_run(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = summary.get("attributes") or {}
    attrs = _attributes(summary, samples)
    labels = {a: (info.get(a) or {}).get("label") or a.upper() for a in attrs}
    directions = {a: (info.get(a) or {}).get("direction") or "below" for a in attrs}
    vals = {a: _answer_scores(samples, a) for a in attrs}
    bins = {a: (_bin_edges(vals[a]), directions[a]) for a in attrs}
    tables = (("detection", "Detection of injected noise"), ("overlaps", "Overlaps between attributes"))
    page = _environment().get_template("report.html.j2").render(
        title=f"XTF explanation — {summary.get('run_id', run_dir.name)}",
        css=_static("report.css"), js=_static("report.js"), palette=PALETTE,
        attrs=[{"slug": _slug(a), "label": labels[a]} for a in attrs],
        has_truth=any(s.get("truth") for s in samples),
        has_protected=any(any(s.get("protected") or ()) for s in samples),
        meta=_meta_view(summary, samples, attrs, labels, info),
        legends=[_legend_view(a, labels[a], directions[a], bins[a][0], vals[a]) for a in attrs],
        figures=_figures_view(out, attrs, labels, info),
        most_flagged=_most_flagged_view(summary, attrs, labels, info),
        tables=[(heading, _table_view(summary[key])) for key, heading in tables if summary.get(key)],
        samples=[_sample_view(s, attrs, labels, bins) for s in samples])
    (out / "index.html").write_text(page, encoding="utf-8")


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
