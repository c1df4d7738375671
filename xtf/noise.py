"""Controlled noise for real text: inject noise lines and wrong numbers into a solution written as a list of
lines, and know the character span of every injected piece (ground truth for noise detection).

    python run.py model=smollm2_135m task=gsm8k task.options.noise_filler_rate=0.2 method=oracle

Pure functions on a list of lines; the task decides what a line is and how lines are joined (GSM8K: the
rationale's newline-separated steps, then the fixed "#### N" line; xtf/tasks/gsm8k.py). Kinds (NOISE_KINDS):

    filler      a chat-boilerplate sentence ("I hope this helps!") on its own line: nothing to learn
                (knowledge novelty, KN: the base predicts it well).
    offtopic    an off-topic sentence (weather, cooking, travel, history): task relevance (TR).
    corruption  label noise: a step's result "= 24" becomes a wrong value "= 21" (24 ± 1..5, >= 0, never 24);
                the later steps still use 24 and the final answer is unchanged, so only the wrong number's
                characters are noise. Loss-based scorers (TC, SLM, NLL) are the natural detectors.
    duplicate   the step before the insertion point repeated verbatim (a copy-paste / scraping defect): every
                token is predictable from the context (KN) and nothing builds on it (RI).
    leak        a line "Answer: X" with the final answer X of some OTHER problem (a record-concatenation defect:
                the answer of a neighbouring row leaks into this one), X drawn from ANSWER_RANGE.

Rates are probabilities per eligible point: `corruption` per step line with an integer result ("= N"); the
insertion kinds per gap, a gap being the point after a step line that is followed by another line (a step or a
fixed tail line such as "#### N"; nothing is inserted before the first line or after the last). A gap can
receive several kinds, in the order INSERTED (duplicate first, so it sits right after the step it copies).
Duplicates copy the CLEAN step (never a corrupted one), so no token is of two kinds.

Determinism and nesting: each kind draws from its own RNG stream, random.Random(f"{key}-{kind}") (the task makes
`key` from its noise seed and the example's source index), and every eligible point draws its candidate and
its uniform number whatever the rate. So the noise of one example does not depend on the other examples, on
the data size or on the other kinds' rates, and raising a rate only adds injections (noisy sets are nested).
With every rate 0 `inject` returns the lines unchanged and `assemble` rebuilds the clean text exactly.

Spans: `assemble` returns [[start, end, kind], ...], half-open character offsets into the assembled text,
sorted by start; text[start:end] is exactly the injected line (without the separator) or the wrong number's
digits (xtf.data.span_labels maps them to tokens through the tokenizer's offsets).
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Optional

NOISE_KINDS = ("filler", "offtopic", "corruption", "duplicate", "leak")
INSERTED = ("duplicate", "filler", "offtopic", "leak")   # the kinds inserted in a gap, in this order
NOISE_VERSION = 1   # bump when the injected text changes for the same (key, rates)

FILLER = (
    "Let's think step by step.", "I hope this helps!", "Great question!", "Sure, here is the answer.",
    "Let me know if you have any other questions.", "Thank you for asking.", "Let's break this down.",
    "That's a good one!", "Here is how to solve it.", "I'm happy to help with this.",
    "Feel free to ask if anything is unclear.", "This is a fun problem to work through.",
)
OFFTOPIC = (
    "The weather in Paris is sunny today.", "To make soup, you need onions, carrots and salt.",
    "The train to Rome leaves early in the morning.", "Many people visit Tokyo in the spring.",
    "The old castle near Dublin was built long ago.", "Cook the rice for ten minutes, then add the butter.",
    "It will be rainy in Oslo tomorrow.", "The history of Cairo goes back many centuries.",
    "She packed a bag for her trip to Madrid.", "Penguins cannot fly, but they swim very well.",
    "The museum is closed on Mondays.", "Bananas are a good source of potassium.",
    "The river flows slowly through the valley.", "He likes to read mystery novels before bed.",
)
CORRUPTION_DELTAS = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)
ANSWER_RANGE = (2, 200)     # leaked answers: integers in this range (inclusive), like most GSM8K answers
# A step's result: the last "= N" of the line, N an integer (optionally after "$"), not the start of a decimal
# or of a number with thousands separators ("= 0.2", "= 1,000" are left alone).
_RESULT = re.compile(r"=\s*\$?(\d+)(?![\d.,]*\d)")

Piece = tuple[str, Optional[tuple[int, int, str]]]   # (line text, (start, end, kind) within it, or None)


def result_span(line: str) -> Optional[tuple[int, int]]:
    """(start, end) of the integer result of a step line ("... = 24 clips." → the "24"), or None when the line
    has no "= N" with an integer N (e.g. "= 0.2", "= 1,000", or no "=" at all)."""
    found = list(_RESULT.finditer(line))
    if not found:
        return None
    return found[-1].start(1), found[-1].end(1)


def wrong_value(rng: random.Random, value: int) -> int:
    """A wrong result near `value`: value ± 1..5, never negative, never `value`."""
    return rng.choice([value + d for d in CORRUPTION_DELTAS if value + d >= 0])


def check_rates(rates: Mapping[str, float]) -> None:
    """ValueError for an unknown kind or a rate outside [0, 1] (NaN included)."""
    for kind, rate in rates.items():
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise kind {kind!r} is unknown; choose from {list(NOISE_KINDS)}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"the {kind} noise rate {rate} is out of range; must be in [0, 1]")


def inject(steps: Sequence[str], rates: Mapping[str, float], key: str, tail: Sequence[str] = ()) -> list[Piece]:
    """The noisy lines of one solution: `steps` (may be corrupted, gaps after them may receive lines) then `tail`
    (never changed, e.g. ["#### 72"]). `rates`: kind → rate (a missing kind is 0). Returns pieces (text, span
    within the text or None) in order; `assemble` joins them. See the module docstring for the draws."""
    check_rates(rates)
    streams = {k: random.Random(f"{key}-{k}") for k in NOISE_KINDS}
    rng = streams["corruption"]
    body: list[Piece] = []
    for line in steps:
        span = result_span(line)
        if span is None:
            body.append((line, None))
            continue
        start, end = span
        wrong = str(wrong_value(rng, int(line[start:end])))
        if rng.random() < rates.get("corruption", 0.0):
            body.append((line[:start] + wrong + line[end:], (start, start + len(wrong), "corruption")))
        else:
            body.append((line, None))
    pieces: list[Piece] = []
    following = [*steps[1:], *tail]
    for clean, piece, nxt in zip(steps, body, following + [None]):
        pieces.append(piece)
        if nxt is None:
            break   # the last line of all: no gap after it
        candidates = {"duplicate": clean, "filler": streams["filler"].choice(FILLER),
                      "offtopic": streams["offtopic"].choice(OFFTOPIC),
                      "leak": f"Answer: {streams['leak'].randint(*ANSWER_RANGE)}"}
        for kind in INSERTED:
            take = streams[kind].random() < rates.get(kind, 0.0)
            if take and candidates[kind].strip():   # an empty line is never "duplicated" as noise
                pieces.append((candidates[kind], (0, len(candidates[kind]), kind)))
    pieces.extend((line, None) for line in tail)
    return pieces


def assemble(pieces: Sequence[Piece], prefix: str = "", sep: str = "\n") -> tuple[str, list[list]]:
    """(prefix + sep.join(piece texts), spans [[start, end, kind], ...] into that text, sorted by start)."""
    spans, pos = [], len(prefix)
    for text, span in pieces:
        if span is not None:
            spans.append([pos + span[0], pos + span[1], span[2]])
        pos += len(text) + len(sep)
    return prefix + sep.join(text for text, _ in pieces), spans
