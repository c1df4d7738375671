"""The explanation report (xtf.explain): escaping, every token shown faithfully, masked tokens marked with the
reason, histograms written, methods without attributes, and a real headless-browser render (Debian chromium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from xtf import explain

IN_CI = os.environ.get("CI", "").lower() == "true"
CHROMIUM = "/usr/bin/chromium"

PROMPT = ["<s>", "Question:", " Ann", " has", " 3 < 5", " & 'apples'", "\n", "Answer:"]
ANSWER = [" 3", " +", " 2", " =", " 5", ".", "\n\n", "<script>alert(1)</script>", " &amp;", "  ", '"q"', " so",
          " um", " the", " answer", " is", " 5", "\n", "</span>", "</s>"]


def make_sample(sid: str, rng: np.random.Generator, attrs=("ri", "kn", "tr"), truth=True) -> dict:
    tokens = PROMPT + ANSWER
    n, p = len(tokens), len(PROMPT)
    resp = [0] * p + [1] * (n - p)
    scores = {a: [None] * p + [round(float(x), 4) for x in rng.random(n - p)] for a in attrs}
    noisy = {a: [0] * n for a in attrs}
    if "ri" in attrs:
        noisy["ri"][p + 7] = 1  # the <script> token: flagged by RI alone
    if "kn" in attrs:
        noisy["kn"][p + 8] = noisy["kn"][p + 12] = 1  # " &amp;" by KN; " um" by KN and TR
        scores["kn"][p + 12] = 0.99
    if "tr" in attrs:
        noisy["tr"][p + 12] = 1
    keep = [int(r and not any(noisy[a][t] for a in attrs)) for t, r in enumerate(resp)]
    s = {"id": sid, "tokens": tokens, "response_mask": resp, "keep": keep, "scores": scores, "noisy": noisy}
    if truth:
        s["truth"] = {"filler": [int(t == p + 12) for t in range(n)]}
    return s


def make_run(root: Path, attrs=("ri", "kn", "tr"), truth=True, method="xtf") -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    samples = [make_sample(f"s{i}", rng, attrs, truth) for i in range(3)]
    (root / "token_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    hist = {"counts": [5, 9, 14, 7, 3], "edges": [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]}
    spec = {
        "ri": {"label": "reasoning importance (RI)", "direction": "below", "threshold": None,
               "thresholds": [0.1, 0.15, 0.2], "interval": None, "note": "per-sample fences: 5/50/95 % quantiles"},
        "kn": {"label": "knowledge novelty (KN)", "direction": "above", "threshold": 0.95, "thresholds": None,
               "interval": None},
        "tr": {"label": "task relevance (TR)", "direction": "interval", "threshold": None,
               "thresholds": [0.2, 0.45, 0.7], "interval": [0.2, 0.45]},
    }
    summary = {"method": method, "run_id": "abc123<x>", "task": "synth", "model": "tiny-llama",
               "kept_fraction": 0.9,
               "attributes": {a: {**spec[a], "histogram": hist, "noisy_fraction": 0.05} for a in attrs}}
    if truth:
        summary["detection"] = {"filler": {"precision": 0.5, "recall": 1.0, "f1": 0.667, "auroc": 0.9}}
        summary["overlaps"] = {"kn&tr": 0.02, "ri&kn": 0.0}
    (root / "score_summary.json").write_text(json.dumps(summary))
    return root


class TokenSpans(HTMLParser):
    """Collects (class, title, text) of the token <span>s inside each sample <section>."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.samples: list[list[dict]] = []
        self.current: dict | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and a.get("class") == "sample":
            self.samples.append([])
        elif tag == "span" and self.samples and "title" in a:
            self.current = {"class": a.get("class", "").split(), "title": a["title"], "text": ""}
            self.samples[-1].append(self.current)

    def handle_endtag(self, tag):
        if tag == "span":
            self.current = None

    def handle_data(self, data):
        if self.current is not None:
            self.current["text"] += data


def parse(html: str) -> list[list[dict]]:
    p = TokenSpans()
    p.feed(html)
    return p.samples


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_escapes_shows_every_token_and_marks_masks(tmp_path):
    run = make_run(tmp_path / "run")
    path = explain.write_report(run)
    assert path == run / "explain" / "index.html"
    html = path.read_text()
    # escaping: the only <script> tag is the page's own; token text and the run id are escaped
    assert html.count("<script>") == 1 and "<script>alert" not in html and "&lt;script&gt;alert(1)" in html
    assert "&amp;amp;" in html and "abc123&lt;x&gt;" in html and "</span></span></span>" not in html
    assert "white-space:pre-wrap" in html
    assert "http://" not in html and "https://" not in html  # self-contained: nothing fetched
    samples = [json.loads(line) for line in (run / "token_samples.jsonl").read_text().splitlines()]
    spans = parse(html)
    assert len(spans) == len(samples)
    for sample, sp in zip(samples, spans):
        assert [s["text"] for s in sp] == sample["tokens"]  # every token, in order, whitespace intact
        for t, s in enumerate(sp):
            if not sample["response_mask"][t]:
                assert "p" in s["class"] and "prompt" in s["title"]
            elif sample["keep"][t]:
                assert "m" not in s["class"] and "kept" in s["title"]
            else:
                assert "m" in s["class"] and "MASKED" in s["title"]
            if sample["response_mask"][t]:
                assert "reasoning importance (RI):" in s["title"] and "truth:" in s["title"]
        p = len(PROMPT)
        assert "reason: reasoning importance (RI)" in sp[p + 7]["title"]
        assert "reason: knowledge novelty (KN)" in sp[p + 8]["title"]
        um = sp[p + 12]
        assert "reason: knowledge novelty (KN), task relevance (TR)" in um["title"]
        assert "truth: filler" in um["title"] and "gt" in um["class"] and "0.99 (noisy)" in um["title"]
    # header, controls, tables
    assert 'data-colour="ri"' in html and 'name="colour" value="kn"' in html and 'id="show-truth"' in html
    assert "Detection of injected noise" in html and "auroc" in html and "kn&amp;tr" in html
    for a in ("ri", "kn", "tr"):
        png = run / "explain" / f"hist_{a}.png"
        assert is_png(png) and f'src="hist_{a}.png"' in html
        import matplotlib.image

        img = matplotlib.image.imread(png)
        assert img.ndim == 3 and img.shape[0] > 100 and len(np.unique(img.reshape(-1, img.shape[2]), axis=0)) > 20


def test_method_without_attributes(tmp_path):
    run = make_run(tmp_path / "run", attrs=(), truth=False, method="normal")
    html = explain.write_report(run).read_text()
    spans = parse(html)
    assert len(spans) == 3 and all("m" not in s["class"] for sp in spans for s in sp)
    assert [s["text"] for s in spans[0]] == PROMPT + ANSWER
    assert not list((run / "explain").glob("*.png")) and "<img" not in html
    assert "computes no token attributes" in html and 'data-colour="none"' in html


def test_partial_attributes_and_cli(tmp_path, capsys):
    run = make_run(tmp_path / "run", attrs=("kn",), truth=False)
    summary = json.loads((run / "score_summary.json").read_text())
    del summary["attributes"]["kn"]["histogram"], summary["kept_fraction"]
    (run / "score_summary.json").write_text(json.dumps(summary))
    explain.main([str(run)])
    assert capsys.readouterr().out.strip() == str(run / "explain" / "index.html")
    html = (run / "explain" / "index.html").read_text()
    assert not (run / "explain" / "hist_kn.png").exists() and 'id="show-truth"' not in html
    assert 'name="colour" value="ri"' not in html and "kept: <b>" in html


def test_misaligned_lists_are_rejected(tmp_path):
    run = make_run(tmp_path / "run")
    lines = (run / "token_samples.jsonl").read_text().splitlines()
    bad = json.loads(lines[0])
    bad["scores"]["kn"].pop()
    (run / "token_samples.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match="scores.kn"):
        explain.write_report(run)


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90)


def test_renders_in_headless_chromium(tmp_path):
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        msg = f"{CHROMIUM} is absent (apt-get install chromium); the browser rendering test needs it"
        if IN_CI:
            pytest.fail(msg + " — required under CI=true")
        pytest.skip(msg)
    from PIL import Image

    run = make_run(tmp_path / "run")
    url = explain.write_report(run).resolve().as_uri()
    shot = tmp_path / "shot.png"
    r = run_chromium([f"--screenshot={shot}", "--window-size=1280,1600", url], tmp_path / "profile1")
    assert r.returncode == 0 and is_png(shot), r.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 1600)
    colours = img.getcolors(maxcolors=1 << 22)
    assert colours is not None and len(colours) > 200  # text, tokens coloured, histograms: far from blank
    present = {c for _, c in colours}
    palette = {tuple(int(h[i:i + 2], 16) for i in (1, 3, 5)) for h in explain.PALETTE}
    assert len(present & palette) >= 3  # token backgrounds are drawn in the score colours
    if os.environ.get("XTF_EXPLAIN_SHOT"):
        shutil.copy(shot, os.environ["XTF_EXPLAIN_SHOT"])
    # JS ran: the page's script marks <body>
    r = run_chromium(["--dump-dom", url], tmp_path / "profile2")
    assert r.returncode == 0 and 'data-js="1"' in r.stdout, r.stderr[-2000:]


class Elements(HTMLParser):
    """Every element's (tag, attributes) and the text of <script> elements, as a browser would parse the page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.scripts: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self.in_script = tag == "script"
        if self.in_script:
            self.scripts.append("")

    def handle_endtag(self, tag):
        self.in_script = False

    def handle_data(self, data):
        if self.in_script:
            self.scripts[-1] += data


def test_run_data_is_escaped_everywhere(tmp_path):
    """Text from the run's files (tokens, ids, labels, notes, table keys) cannot add markup to the page: the
    template's autoescape turns <, >, & and both quotes into entities, in text and in attribute values."""
    evil = "<script>alert(\"x\")</script> & 'q' \" onmouseover=\"alert(2)"
    run = make_run(tmp_path / "run")
    lines = [json.loads(line) for line in (run / "token_samples.jsonl").read_text().splitlines()]
    for s in lines:
        s["id"] = evil
        s["tokens"][len(PROMPT)] = evil  # an answer token: its text and its hover title (via the label) carry it
        s["tokens"][1] = evil  # a prompt token
    (run / "token_samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in lines))
    summary = json.loads((run / "score_summary.json").read_text())
    summary["run_id"] = evil
    summary["attributes"]["ri"]["label"] = evil
    summary["attributes"]["ri"]["note"] = evil
    summary["most_masked"] = [[evil, 3, 0.5]]
    summary["detection"] = {evil: {evil: 1.0}}
    (run / "score_summary.json").write_text(json.dumps(summary))
    html = explain.write_report(run).read_text()
    assert "<script>alert" not in html and 'onmouseover="' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &#39;q&#39;" in html
    parsed = Elements()
    parsed.feed(html)
    assert [tag for tag, _ in parsed.elements].count("script") == 1  # the page's own script, nothing else
    assert "alert" not in parsed.scripts[0]
    assert not [a for _, attrs in parsed.elements for a in attrs if a.startswith("on")]  # no handler injected
    spans = parse(html)
    for sample, sp in zip(lines, spans):
        assert [s["text"] for s in sp] == sample["tokens"]  # the text reads back exactly as the run wrote it
        assert sp[len(PROMPT)]["title"].startswith(evil + ": ")  # the label, whole, inside the title attribute
    figure = [a for tag, a in parsed.elements if tag == "img" and a["src"] == "hist_ri.png"]
    assert figure and figure[0]["alt"] == f"histogram of {evil}"
