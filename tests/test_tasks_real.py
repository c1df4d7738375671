"""The real-benchmark tasks (gsm8k, code, medqa, pubmedqa) on the local files in ../shared/data: row counts, the
first examples, the extractors, and malformed-row handling (error naming file:line, or skip and count)."""

from __future__ import annotations

import dataclasses
import gzip
import json
import typing
from pathlib import Path

import pytest
from conftest import require_shared_data

from xtf.config import DataConfig, PathsConfig
from xtf.tasks import code, gsm8k, medqa, pubmedqa
from xtf.tasks.common import DataError

TASKS = {"gsm8k": gsm8k, "code": code, "medqa": medqa, "pubmedqa": pubmedqa}


requires_shared_data = require_shared_data  # skip on a user's clone, fail under CI=true (conftest)


@pytest.fixture(scope="module")
def real_paths() -> PathsConfig:
    return PathsConfig(data_dir=str(requires_shared_data()))


# ---------------------------------------------------------------------------------------------- module contract
@pytest.mark.parametrize("name", sorted(TASKS))
def test_module_contract(name):
    mod = TASKS[name]
    assert dataclasses.is_dataclass(mod.Options)
    for f in dataclasses.fields(mod.Options):  # only flat, config-validatable knob types
        tp = typing.get_type_hints(mod.Options)[f.name]
        assert tp in (str, int, float, bool) or typing.get_origin(tp) in (typing.Literal, typing.Union), (name, tp)
        assert f.default is not dataclasses.MISSING
    assert mod.EXTRACTORS and all(callable(fn) for fn in mod.EXTRACTORS.values())
    assert mod.EXTRACT_VERSION == (2 if name == "gsm8k" else 1)  # gsm8k 2: lm-eval's strict/flexible filters
    assert mod.EXPERT_WORDS and all(isinstance(w, str) and w for w in mod.EXPERT_WORDS)


def test_expert_words():
    assert gsm8k.EXPERT_WORDS[:10] == tuple(str(i) for i in range(1, 11))
    assert {"+", "-", "*", "/", "=", "maths"} <= set(gsm8k.EXPERT_WORDS)
    assert {"def", "return", "for", "class"} <= set(code.EXPERT_WORDS)
    assert medqa.EXPERT_WORDS == pubmedqa.EXPERT_WORDS and len(medqa.EXPERT_WORDS) >= 25
    assert {"patient", "diagnosis", "treatment", "disease", "clinical"} <= set(medqa.EXPERT_WORDS)


# -------------------------------------------------------------------------------------------------- extractors
def test_gsm8k_extractors():
    """strict and flexible are lm-eval's gsm8k filters (their full table: tests/test_faithful.py)."""
    strict, flexible = gsm8k.EXTRACTORS["strict"], gsm8k.EXTRACTORS["flexible"]
    assert list(gsm8k.EXTRACTORS) == ["strict", "flexible", "released"]  # strict is the primary metric
    assert strict("She pays 1,000 + 234 = 1,234 dollars.\n#### 1,234") == "1234"
    assert flexible("She pays 1,000 + 234 = 1,234 dollars.\n#### 1,234") == "1234"
    assert strict("so 5 apples... 12") is None
    assert flexible("so 5 apples... 12") == "12"
    assert strict("####-3") is None and strict("#### $1,500.50") is None   # lm-eval's strict-match rejects both
    assert flexible("no numbers here") is None
    assert flexible("It is 12.") == "12"


def test_code_extractor():
    body = "    return a + b\n"
    ext = code.EXTRACTORS["completion"]
    assert ext(body) == body
    assert ext(body + "\ndef other():\n    pass\n") == body
    assert ext(body + "\n# test\nprint(add(1, 2))") == body
    assert ext(body + "\nif __name__ == '__main__':\n    main()") == body
    inner = "    x = 1\n    # an indented comment is not a stop\n    return x"
    assert ext(inner + "\nprint(x)") == inner


def test_medqa_and_pubmedqa_extractors():
    letter = medqa.EXTRACTORS["letter"]
    assert letter(" B. Tell the attending") == "B"
    assert letter("The answer is (C)") == "C"
    assert letter("none of them") is None and letter("E. other") is None
    decision = pubmedqa.EXTRACTORS["decision"]
    assert decision(" There was no effect. The answer is Yes.") == "yes"
    assert decision("Maybe; it depends") == "maybe"
    assert decision("nothing decisive") is None  # "no" inside a word does not count


# ------------------------------------------------------------------------------------------------- real files
def test_gsm8k_real(real_paths):
    td = gsm8k.load(gsm8k.Options(), DataConfig(), real_paths)
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 7473, "test": 1319}
    assert td.source.startswith("local:") and td.skipped_rows == 0 and len(td.checksums) == 2
    ex = td.splits["train"][0]
    assert ex["id"] == "gsm8k-train-0" and ex["answer"] == "72"
    assert ex["prompt"].startswith("Question: Natalia sold clips") and ex["prompt"].endswith("\nAnswer:")
    assert ex["response"] == (" Natalia sold 48/2 = 24 clips in May.\n"
                              "Natalia sold 48+24 = 72 clips altogether in April and May.\n#### 72")
    assert all("<<" not in e["response"] for e in td.splits["train"])
    assert all("," not in e["answer"] for e in td.splits["test"])
    # Every training response scores itself: the extractors are consistent with the target format.
    assert all(gsm8k.extract_strict(e["response"]) == e["answer"] for e in td.splits["train"])
    rat = gsm8k.load(gsm8k.Options(target="rationale"), DataConfig(), real_paths)
    assert rat.splits["train"][0]["response"].endswith("April and May.")
    assert all("####" not in e["response"] for e in rat.splits["train"])


def test_code_real(real_paths):
    td = code.load(code.Options(), DataConfig(), real_paths)
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 374, "test": 164}
    assert "mbpp" in td.source and "humaneval" in td.source
    train0, test0 = td.splits["train"][0], td.splits["test"][0]
    assert train0["id"] == "mbpp-601" and train0["prompt"].count("assert ") == 3 and train0["prompt"].endswith("\n")
    assert "\r" not in train0["response"] and "def max_chain_length" in train0["response"]
    assert [e["id"] for e in td.splits["train"]][-1] == "mbpp-974"
    assert test0["id"] == test0["task_id"] == "HumanEval/0" and test0["entry_point"] == "has_close_elements"
    assert test0["prompt"].startswith("from typing import List") and "def check(candidate)" in test0["test"]
    assert test0["answer"] == "" and test0["response"].startswith("    for idx, elem")
    # The canonical solution survives the completion extractor (the stop sequences never cut a real body).
    assert sum(code.extract_completion(e["response"]) == e["response"] for e in td.splits["test"]) >= 160

    alpaca = code.load(code.Options(train_source="code_alpaca"), DataConfig(), real_paths)
    assert len(alpaca.splits["train"]) == 2015  # 2,017 rows, 2 with an empty output are dropped (and noted)
    assert any("empty output" in n for n in alpaca.notes)
    assert alpaca.splits["train"][1]["prompt"] == (
        "How would you order a sequence of letters alphabetically?\n\nA, B, C, D\n")


def test_medqa_real_smoke_split(real_paths):
    td = medqa.load(medqa.Options(), DataConfig(), real_paths)
    train, test = td.splits["train"], td.splits["test"]
    assert len(train) + len(test) == 1273 and len(train) == round(0.6 * 1273)
    assert not {e["id"] for e in train} & {e["id"] for e in test}
    assert any("smoke split" in n for n in td.notes)
    again = medqa.load(medqa.Options(), DataConfig(), real_paths)
    assert again.splits == td.splits  # deterministic
    other = medqa.load(medqa.Options(split_seed=1), DataConfig(), real_paths)
    assert [e["id"] for e in other.splits["test"]] != [e["id"] for e in test]
    first = next(e for e in test + train if e["id"] == "medqa-test-0")
    assert first["answer"] == "B"
    assert first["response"] == " B. Tell the attending that he cannot fail to disclose this mistake"
    assert first["prompt"].startswith("A junior orthopaedic surgery resident")
    assert "\nA. Disclose the error" in first["prompt"]
    assert first["prompt"].endswith("\nD. Refuse to dictate the operative report\nAnswer:")
    assert all(medqa.extract_letter(e["response"]) == e["answer"] for e in train)


def test_pubmedqa_real(real_paths):
    td = pubmedqa.load(pubmedqa.Options(), DataConfig(), real_paths)
    assert {k: len(v) for k, v in td.splits.items()} == {"train": 500, "test": 500}
    truth = json.loads((Path(real_paths.data_dir) / "pubmedqa" / "test_ground_truth.json").read_text())
    assert {e["id"]: e["answer"] for e in td.splits["test"]} == truth
    assert td.splits["train"][0]["id"] == "10808977"  # both splits keep ori_pqal.json order
    ex = td.splits["test"][0]
    assert ex["id"] == "21645374" and ex["answer"] == "yes"
    assert ex["prompt"].startswith("Programmed cell death (PCD)")
    assert ex["prompt"].endswith("Question: Do mitochondria play a role in remodelling lace plant leaves during "
                                 "programmed cell death?\nAnswer with yes, no or maybe.\nAnswer:")
    assert ex["response"].startswith(" Results depicted") and ex["response"].endswith(" The answer is yes.")
    assert all(pubmedqa.extract_decision(e["response"]) == e["answer"] for e in td.splits["train"])


# ------------------------------------------------------------------------------------------------ malformed rows
GOOD_GSM8K = {"question": "What is 2+3?", "answer": "2+3 = <<2+3=5>>5\n#### 5"}
BAD_GSM8K = {
    "missing field": ({"question": "q?"}, "missing field 'answer'"),
    "empty answer": ({"question": "q?", "answer": " "}, "field 'answer' is empty"),
    "wrong type": ({"question": 3, "answer": "1\n#### 1"}, "field 'question' must be str"),
    "no final line": ({"question": "q?", "answer": "it is 5"}, "no '#### <final answer>' line"),
    "bad json": ('{"question": "q?", "answer": ', "invalid JSON"),
}


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("case", sorted(BAD_GSM8K))
def test_gsm8k_malformed_row(tmp_path, case):
    bad, message = BAD_GSM8K[case]
    write_jsonl(tmp_path / "gsm8k" / "train.jsonl", [GOOD_GSM8K, GOOD_GSM8K, bad, GOOD_GSM8K])
    write_jsonl(tmp_path / "gsm8k" / "test.jsonl", [GOOD_GSM8K])
    paths = PathsConfig(data_dir=str(tmp_path))
    with pytest.raises(DataError) as err:
        gsm8k.load(gsm8k.Options(), DataConfig(), paths)
    assert "train.jsonl:3" in str(err.value) and message in str(err.value)
    td = gsm8k.load(gsm8k.Options(), DataConfig(on_bad_row="skip"), paths)
    assert td.skipped_rows == 1 and len(td.splits["train"]) == 3
    assert [e["id"] for e in td.splits["train"]] == ["gsm8k-train-0", "gsm8k-train-1", "gsm8k-train-3"]
    assert td.splits["train"][0]["response"] == " 2+3 = 5\n#### 5" and td.splits["train"][0]["answer"] == "5"


def test_medqa_malformed_row(tmp_path):
    good = {"question": "Which?", "options": {"A": "a", "B": "b", "C": "c", "D": "d"}, "answer_idx": "C"}
    bad_letter = dict(good, answer_idx="E")
    bad_options = dict(good, options={"A": "a", "B": "b", "C": "c"})
    write_jsonl(tmp_path / "medqa" / medqa.LOCAL_FILE, [good] * 3 + [bad_letter] + [good] * 2 + [bad_options])
    paths = PathsConfig(data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"phrases_no_exclude_test\.jsonl:4: field 'answer_idx'"):
        medqa.load(medqa.Options(), DataConfig(), paths)
    td = medqa.load(medqa.Options(), DataConfig(on_bad_row="skip"), paths)
    assert td.skipped_rows == 2 and len(td.splits["train"]) + len(td.splits["test"]) == 5
    assert td.splits["train"][0]["prompt"] == "Which?\nA. a\nB. b\nC. c\nD. d\nAnswer:"
    with pytest.raises(DataError, match="smoke_train_fraction"):
        medqa.load(medqa.Options(smoke_train_fraction=1.0), DataConfig(on_bad_row="skip"), paths)


def test_code_malformed_rows(tmp_path):
    mbpp_row = {"task_id": 601, "text": "Add.", "code": "def add(a, b):\r\n    return a + b\r\n",
                "test_list": ["assert add(1, 2) == 3"], "test_setup_code": "", "challenge_test_list": []}
    rows = [dict(mbpp_row, task_id=5), mbpp_row, dict(mbpp_row, task_id=602, code=None), dict(mbpp_row, task_id=603)]
    write_jsonl(tmp_path / "mbpp" / "mbpp.jsonl", rows)
    he = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "    return 1\n",
          "test": "def check(c):\n    assert c() == 1\n", "entry_point": "f"}
    (tmp_path / "humaneval").mkdir()
    with gzip.open(tmp_path / "humaneval" / "HumanEval.jsonl.gz", "wt") as f:
        f.write(json.dumps(he) + "\n" + json.dumps(dict(he, task_id="HumanEval/1", test=7)) + "\n")
    paths = PathsConfig(data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r"mbpp\.jsonl:3: field 'code' must be str"):
        code.load(code.Options(), DataConfig(), paths)
    td = code.load(code.Options(), DataConfig(on_bad_row="skip"), paths)
    assert td.skipped_rows == 2  # the mbpp row with code=None and the HumanEval row with an int `test`
    assert [e["id"] for e in td.splits["train"]] == ["mbpp-601", "mbpp-603"]
    assert td.splits["train"][0]["response"] == "def add(a, b):\n    return a + b"
    assert [e["id"] for e in td.splits["test"]] == ["HumanEval/0"]
    # The gzip branch names the .gz file and line too.
    with pytest.raises(DataError, match=r"HumanEval\.jsonl\.gz:2: field 'test' must be str"):
        code._load_humaneval(paths, code.RowChecker("error"), {})
    # Code Alpaca is a JSON array: rows are named by their index.
    (tmp_path / "code_alpaca").mkdir()
    alpaca = [{"instruction": "Say hi.", "input": "", "output": "print('hi')"}, {"instruction": "", "output": "x"}]
    (tmp_path / "code_alpaca" / "code_alpaca_2k.json").write_text(json.dumps(alpaca))
    with pytest.raises(DataError, match=r"code_alpaca_2k\.json\[1\]: field 'instruction' is empty"):
        code.load(code.Options(train_source="code_alpaca"), DataConfig(), paths)


def test_pubmedqa_malformed_item(tmp_path):
    item = {"QUESTION": "Does it?", "CONTEXTS": ["Some context."], "LONG_ANSWER": "It does.", "final_decision": "yes"}
    items = {"1": item, "2": dict(item, final_decision="perhaps"), "3": dict(item, CONTEXTS="flat"), "4": item}
    (tmp_path / "pubmedqa").mkdir()
    (tmp_path / "pubmedqa" / "ori_pqal.json").write_text(json.dumps(items))
    (tmp_path / "pubmedqa" / "test_ground_truth.json").write_text(json.dumps({"4": "yes"}))
    paths = PathsConfig(data_dir=str(tmp_path))
    with pytest.raises(DataError, match=r'ori_pqal\.json\["2"\]: field \'final_decision\''):
        pubmedqa.load(pubmedqa.Options(), DataConfig(), paths)
    td = pubmedqa.load(pubmedqa.Options(), DataConfig(on_bad_row="skip"), paths)
    assert td.skipped_rows == 2
    assert [e["id"] for e in td.splits["train"]] == ["1"] and [e["id"] for e in td.splits["test"]] == ["4"]
    assert td.splits["test"][0]["prompt"] == (
        "Some context.\n\nQuestion: Does it?\nAnswer with yes, no or maybe.\nAnswer:")
    assert td.splits["test"][0]["response"] == " It does. The answer is yes."
    (tmp_path / "pubmedqa" / "test_ground_truth.json").write_text("{bad")
    with pytest.raises(DataError, match=r"test_ground_truth\.json:1: invalid JSON"):
        pubmedqa.load(pubmedqa.Options(), DataConfig(on_bad_row="skip"), paths)
