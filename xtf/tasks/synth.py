"""Synthetic multi-step arithmetic word problems, generated from a seed (no download).

    Question: Ann has 12 apples. She buys 7 more apples. Then she gives 5 apples to Ben. How many apples
    does Ann have now?
    Answer: Ann starts with 12 apples. 12 + 7 = 19. 19 - 5 = 14. The answer is 14.

Every intermediate value stays in [0, max_value]. The response is built as a list of sentences joined by " "
(`join_sentences`), so that noise injection can insert or corrupt whole sentences and know their character
spans. The test split is drawn first, from its own RNG stream, so it depends only on (seed, n_test, the
problem options); the training split comes from a second stream and skips every prompt already drawn, so the
two splits never share a prompt and the first N training examples do not depend on n_train.

`pretraining_corpus` generates the text the tiny base model (xtf.tiny) is pre-trained on: arithmetic facts and
narrative sentences in this task's surface form, chat boilerplate and off-task sentences, but no solved problem.

Controlled noise (ground truth for noise detection; the XTF paper never checks that its scores find real noise).
Three rates in Options (default 0.0: the task is clean) inject noise into the TRAINING split only; test problems
are always clean. Each type is aimed at one of XTF's attributes:

    filler      a chat-boilerplate sentence from BOILERPLATE ("Let's think step by step.", "I hope this helps!",
                ...), which the base model saw in pre-training: knowledge novelty (KN; high PCP = nothing new).
    distractor  an off-task sentence (weather, cooking, travel, history; the corpus's `_offtask` generator):
                task relevance (TR; far from the arithmetic domain vector).
    corruption  label noise: in a step sentence "12 + 7 = 19." the RESULT is replaced by a wrong value
                ("12 + 7 = 21."), c ± 1..5 kept in [0, max_value] and never c. The next step still starts from
                the correct value and "The answer is N." stays correct, so the problem and its answer do not
                change: only the wrong number's tokens are noise. No XTF attribute is designed for label errors;
                the nearest is reasoning importance (RI: no later token builds on the wrong value), and the
                loss-based methods (TC, SLM) are the natural detectors.

Rates: `filler_rate` and `distractor_rate` are probabilities per insertion point, the gaps between consecutive
solution sentences (a response with k steps has k + 2 sentences and k + 1 gaps; nothing is inserted before the
first or after the last sentence); a gap can receive a filler and a distractor (filler first). `corruption_rate`
is the probability per step sentence. Draws are independent, so the expected number of injections is rate × the
number of eligible points. Noise comes from its own RNG streams, one per (seed, training index, type), so the
clean problems are identical whatever the rates, the noise of example i does not depend on n_train or on the
other types' rates, and every draw is made whatever the rate, so raising a rate only adds injections (the noisy
sets are nested).

Spans: when any rate > 0, every training example gets "noise_spans": [[start, end, type], ...] (type is one of
NOISE_TYPES), half-open character offsets into `response`, sorted by start: response[start:end] is exactly the
injected sentence (without the joining space before it) or exactly the wrong number's digits. Clean training
examples get [], test examples never get the key, and with all rates 0 no example gets it (the output, and its
checksums, are byte-identical to the clean task): consumers treat a missing key as [].
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from typing import Optional

from xtf.errors import ConfigError
from xtf.tasks.common import TaskData, sha256_examples

NAMES = (("Ann", "she"), ("Ben", "he"), ("Cara", "she"), ("Dan", "he"), ("Eva", "she"), ("Finn", "he"),
         ("Gina", "she"), ("Hugo", "he"), ("Ivy", "she"), ("Jack", "he"), ("Lena", "she"), ("Max", "he"),
         ("Nora", "she"), ("Omar", "he"), ("Pia", "she"), ("Sam", "he"))
OBJECTS = ("apples", "pencils", "stickers", "marbles", "cookies", "books", "stamps", "shells", "cards",
           "coins", "balloons", "oranges")
# (sentence template, op, operand rule): {P} pronoun, {n} operand, {o} object, {other} another name.
ADD = ("{P} buys {n} more {o}.", "{P} finds {n} more {o}.", "{other} gives {p_obj} {n} {o}.",
       "{P} gets {n} more {o} from {other}.")
SUB = ("{P} gives {n} {o} to {other}.", "{P} loses {n} {o}.", "{P} sells {n} {o}.",
       "{P} gives away {n} {o}.")
MUL = {2: ("{P} doubles the number of {o} {p} has.", "The number of {o} {p} has doubles."),
       3: ("{P} triples the number of {o} {p} has.", "The number of {o} {p} has triples.")}
START = ("{name} has {n} {o}.", "{name} starts the day with {n} {o}.", "There are {n} {o} in {name}'s bag.")
QUESTION = ("How many {o} does {name} have now?", "How many {o} does {name} have in the end?",
            "How many {o} does {name} have after that?")
OBJ_PRONOUN = {"she": "her", "he": "him"}
SYMBOL = {"add": "+", "sub": "-", "mul": "*"}


@dataclass
class Options:
    seed: int = 1234
    n_train: int = 2000
    n_test: int = 200
    min_steps: int = 2
    max_steps: int = 3
    max_value: int = 50     # every intermediate value stays in [0, max_value]
    # Controlled noise in the training split (see the module docstring); 0.0 = clean.
    filler_rate: float = 0.0        # per gap between solution sentences: insert a BOILERPLATE sentence
    distractor_rate: float = 0.0    # per gap between solution sentences: insert an off-task sentence
    corruption_rate: float = 0.0    # per step sentence: replace its result with a wrong number


NOISE_TYPES = ("filler", "distractor", "corruption")
CORRUPTION_DELTAS = (-5, -4, -3, -2, -1, 1, 2, 3, 4, 5)


def check_options(opts: Options) -> None:
    if opts.n_train < 1 or opts.n_test < 1:
        raise ConfigError("task.options.n_train and task.options.n_test must be >= 1")
    if not 1 <= opts.min_steps <= opts.max_steps:
        raise ConfigError("task.options must satisfy 1 <= min_steps <= max_steps")
    if opts.max_value < 10:
        raise ConfigError(f"task.options.max_value={opts.max_value} is out of range; must be >= 10")
    for t in NOISE_TYPES:
        rate = getattr(opts, f"{t}_rate")
        if not 0.0 <= rate <= 1.0:   # also rejects NaN
            raise ConfigError(f"task.options.{t}_rate={rate} is out of range; must be in [0, 1]")


def join_sentences(sentences: list[str]) -> str:
    """The response text: a leading space, then the sentences separated by single spaces."""
    return " " + " ".join(sentences)


def make_problem(rng: random.Random, min_steps: int = 2, max_steps: int = 3, max_value: int = 50) -> dict:
    """One problem: {"prompt", "response", "answer", "sentences"} where response == join_sentences(sentences)
    and the last sentence is "The answer is N."."""
    name, p = rng.choice(NAMES)
    other = rng.choice([n for n, _ in NAMES if n != name])
    obj = rng.choice(OBJECTS)
    fill = {"name": name, "P": p.capitalize(), "p": p, "p_obj": OBJ_PRONOUN[p], "o": obj, "other": other}
    value = rng.randint(2, max_value - 2)
    story = [rng.choice(START).format(n=value, **fill)]
    solution = [f"{name} starts with {value} {obj}."]
    for i in range(rng.randint(min_steps, max_steps)):
        ops = []  # operands are >= 2 so that "{n} {objects}" reads right
        if value <= max_value - 2:
            ops.append("add")
        if value >= 3:
            ops.append("sub")
        if 1 < value and value * 2 <= max_value:
            ops.append("mul")
        op = rng.choice(ops)
        if op == "add":
            n = rng.randint(2, min(max_value - value, max(10, max_value // 3)))
            template, new = rng.choice(ADD), value + n
        elif op == "sub":
            n = rng.randint(2, value - 1) if rng.random() < 0.97 else value  # rarely subtract everything
            template, new = rng.choice(SUB), value - n
        else:
            n = 3 if value * 3 <= max_value and rng.random() < 0.4 else 2
            template, new = rng.choice(MUL[n]), value * n
        sentence = template.format(n=n, **fill)
        if i > 0:  # "She buys ..." -> "Then she buys ..."; "Ben gives ..." -> "Then Ben gives ..."
            first, rest = sentence.split(" ", 1)
            sentence = f"Then {first.lower() if first in ('She', 'He', 'The') else first} {rest}"
        story.append(sentence)
        solution.append(f"{value} {SYMBOL[op]} {n} = {new}.")
        value = new
    story.append(rng.choice(QUESTION).format(**fill))
    solution.append(f"The answer is {value}.")
    return {"prompt": "Question: " + " ".join(story) + "\nAnswer:", "response": join_sentences(solution),
            "answer": str(value), "sentences": solution}


def inject_noise(sentences: list[str], seed: int, index: int, opts: Options) -> tuple[str, list[list]]:
    """The noisy response of training example `index` (whose clean solution is `sentences`, as make_problem
    returns them) and its noise spans [[start, end, type], ...] into that response (see the module docstring)."""
    streams = {t: random.Random(f"synth-noise-{seed}-{index}-{t}") for t in NOISE_TYPES}
    # Corruption: every step sentence "a op b = c." draws (u, wrong value); kept if u < rate.
    rng = streams["corruption"]
    body: list[tuple[str, Optional[tuple[int, int, str]]]] = [(sentences[0], None)]
    for sentence in sentences[1:-1]:
        head, result = sentence[:-1].rsplit(" = ", 1)
        c = int(result)
        wrong = rng.choice([c + d for d in CORRUPTION_DELTAS if 0 <= c + d <= opts.max_value])
        if rng.random() < opts.corruption_rate:
            start = len(head) + 3
            body.append((f"{head} = {wrong}.", (start, start + len(str(wrong)), "corruption")))
        else:
            body.append((sentence, None))
    body.append((sentences[-1], None))
    # Insertions: every gap between consecutive sentences draws a filler and a distractor candidate.
    pieces = body[:1]
    for nxt in body[1:]:
        filler = streams["filler"].choice(BOILERPLATE)
        if streams["filler"].random() < opts.filler_rate:
            pieces.append((filler, (0, len(filler), "filler")))
        distractor = _offtask(streams["distractor"], opts.max_value)
        if streams["distractor"].random() < opts.distractor_rate:
            pieces.append((distractor, (0, len(distractor), "distractor")))
        pieces.append(nxt)
    response = join_sentences([text for text, _ in pieces])
    spans, pos = [], 1      # join_sentences: a leading space, then single spaces between sentences
    for text, span in pieces:
        if span is not None:
            spans.append([pos + span[0], pos + span[1], span[2]])
        pos += len(text) + 1
    return response, spans


def _draw(rng: random.Random, n: int, opts: Options, taken: set[str], split: str) -> list[dict]:
    noisy = split == "train" and any(getattr(opts, f"{t}_rate") > 0 for t in NOISE_TYPES)
    out: list[dict] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise ConfigError(f"could not draw {n} distinct {split} problems; raise task.options.max_value "
                              "or max_steps, or lower n_train/n_test")
        prob = make_problem(rng, opts.min_steps, opts.max_steps, opts.max_value)
        if prob["prompt"] in taken:
            continue
        taken.add(prob["prompt"])
        example = {"id": f"synth-{split}-{len(out):05d}", "prompt": prob["prompt"],
                   "response": prob["response"], "answer": prob["answer"]}
        if noisy:
            example["clean_response"] = example["response"]  # a row carved off for dev is judged on this (xtf.data)
            example["response"], example["noise_spans"] = inject_noise(prob["sentences"], opts.seed, len(out),
                                                                       opts)
        out.append(example)
    return out


def load(opts: Options, data=None, paths=None) -> TaskData:
    """Generate the splits; `data` and `paths` are unused (nothing is read from disk)."""
    check_options(opts)
    taken: set[str] = set()
    test = _draw(random.Random(f"synth-test-{opts.seed}"), opts.n_test, opts, taken, "test")
    train = _draw(random.Random(f"synth-train-{opts.seed}"), opts.n_train, opts, taken, "train")
    return TaskData(splits={"train": train, "test": test}, source="generated",
                    checksums={"train": sha256_examples(train), "test": sha256_examples(test)})


# ---- evaluation ---------------------------------------------------------------------------------------------
_STRICT = re.compile(r"The answer is\s*\$?\s*(-?\d[\d,]*)")
_INT = re.compile(r"-?\d[\d,]*")


def _norm(num: str) -> Optional[str]:
    num = num.replace(",", "").rstrip(".")
    try:
        return str(int(num))
    except ValueError:
        return None


def extract_strict(text: str) -> Optional[str]:
    """The number right after the first "The answer is" (the format the training responses use)."""
    m = _STRICT.search(text)
    return _norm(m.group(1)) if m else None


def extract_flexible(text: str) -> Optional[str]:
    """The last integer anywhere in the text."""
    found = _INT.findall(text)
    return _norm(found[-1]) if found else None


EXTRACTORS = {"strict": extract_strict, "flexible": extract_flexible}
EXTRACT_VERSION = 1
EXPERT_WORDS = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "+", "-", "*", "/", "=", "maths")


# ---- pre-training corpus for the tiny base model -------------------------------------------------------------
# Proportions of corpus lines by kind (each line is 1-4 sentences of one kind).
CORPUS_MIX = {"arithmetic": 0.30, "boilerplate": 0.25, "offtask": 0.20, "narrative": 0.25}
BOILERPLATE = ("Let's think step by step.", "I hope this helps!", "Great question!", "Sure, here is the answer.",
               "Let me know if you have any other questions.", "Thank you for asking.")
_OFFTASK = (
    "The weather in {city} is {weather} today.", "It will be {weather} in {city} tomorrow.",
    "To make {dish}, you need {food} and {food2}.", "Cook the {food} for ten minutes, then add the {food2}.",
    "The train to {city} leaves in the morning.", "Many people visit {city} in the {season}.",
    "The old castle near {city} was built long ago.", "The history of {city} goes back many centuries.",
    "In the {season}, the days in {city} are {weather}.", "She packed a bag for her trip to {city}.",
)
_FILL = {"city": ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Tokyo", "Dublin", "Madrid"),
         "weather": ("sunny", "rainy", "windy", "cold", "warm", "cloudy"),
         "dish": ("soup", "bread", "a salad", "a cake", "pasta"),
         "food": ("rice", "onions", "butter", "flour", "carrots", "tomatoes"),
         "food2": ("salt", "garlic", "milk", "sugar", "pepper", "eggs"),
         "season": ("spring", "summer", "autumn", "winter")}


def _fact(rng: random.Random, max_value: int) -> str:
    op = rng.choice(("add", "add", "sub", "sub", "mul"))
    if op == "add":
        a = rng.randint(0, max_value)
        b = rng.randint(0, max_value - a)
        return f"{a} + {b} = {a + b}."
    if op == "sub":
        a = rng.randint(0, max_value)
        b = rng.randint(0, a)
        return f"{a} - {b} = {a - b}."
    k = rng.choice((2, 3))
    a = rng.randint(0, max_value // k)
    return f"{a} * {k} = {a * k}."


def _boilerplate(rng: random.Random, max_value: int) -> str:
    if rng.random() < 0.3:
        return f"The answer is {rng.randint(0, max_value)}."
    return rng.choice(BOILERPLATE)


def _offtask(rng: random.Random, _max_value: int) -> str:
    return rng.choice(_OFFTASK).format(**{k: rng.choice(v) for k, v in _FILL.items()})


def _narrative(rng: random.Random, max_value: int) -> str:
    """One sentence of a word problem or of its solution's opening, with unrelated numbers (nothing solved)."""
    name, p = rng.choice(NAMES)
    fill = {"name": name, "P": p.capitalize(), "p": p, "p_obj": OBJ_PRONOUN[p], "o": rng.choice(OBJECTS),
            "other": rng.choice([n for n, _ in NAMES if n != name]), "n": rng.randint(2, max_value)}
    kind = rng.random()
    if kind < 0.3:
        return rng.choice(START).format(**fill)
    if kind < 0.45:
        return "{name} starts with {n} {o}.".format(**fill)
    if kind < 0.85:
        return rng.choice(ADD + SUB + MUL[2] + MUL[3]).format(**fill)
    return rng.choice(QUESTION).format(**fill)


_KINDS = {"arithmetic": _fact, "boilerplate": _boilerplate, "offtask": _offtask, "narrative": _narrative}


def pretraining_corpus(n_lines: int, seed: int, max_value: int = 50) -> list[str]:
    """`n_lines` lines, each 1-4 sentences of one kind drawn with the CORPUS_MIX proportions: arithmetic facts
    ("12 + 7 = 19."), chat boilerplate ("Let's think step by step."), off-task sentences (weather, cooking,
    travel, history) and word-problem narrative sentences ("Ann has 12 apples.") — never a solved problem."""
    rng = random.Random(f"synth-corpus-{seed}")
    kinds, weights = list(CORPUS_MIX), list(CORPUS_MIX.values())
    lines = []
    for _ in range(n_lines):
        make = _KINDS[rng.choices(kinds, weights)[0]]
        lines.append(" ".join(make(rng, max_value) for _ in range(rng.randint(1, 4))))
    return lines
