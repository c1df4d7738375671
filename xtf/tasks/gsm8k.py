"""GSM8K: grade-school maths word problems (7,473 train / 1,319 test, official splits).

Sources: `<data_dir>/gsm8k/{train,test}.jsonl` (the files of openai/grade-school-math), else the Hub dataset
"openai/gsm8k", config "main". Both have the fields `question` and `answer`; `answer` is a worked rationale with
`<<expr=val>>` calculator annotations, ending in a line `#### <final answer>`.

Example:
    prompt    "Question: <question>\nAnswer:"
    response  " <rationale without calculator annotations>" (+ "\n#### 72" under target=rationale_answer)
    answer    "72"  (the number after ####, commas removed)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Optional

from xtf.config import DataConfig, PathsConfig
from xtf.tasks.common import (
    DataError,
    RowChecker,
    TaskData,
    load_hub_split,
    local_dir,
    read_jsonl,
    sha256_examples,
    sha256_file,
)

HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
EXTRACT_VERSION = 1
# The XTF paper's maths domain words.
EXPERT_WORDS: tuple[str, ...] = tuple(str(i) for i in range(1, 11)) + ("+", "-", "*", "/", "=", "maths")


@dataclass
class Options:
    # What the model is trained to produce after the prompt:
    #   "rationale_answer": the worked rationale followed by the final "#### N" line (the GSM8K convention; the
    #                       "strict" extractor then has something to find at evaluation time);
    #   "rationale":        the rationale only, without the "#### N" line (what the paper's released code trains on;
    #                       evaluate it with the "flexible" extractor).
    # Both drop the <<expr=val>> calculator annotations, which are not natural text.
    target: Literal["rationale_answer", "rationale"] = "rationale_answer"


_CALC = re.compile(r"<<[^>]*>>")
# A number as written in text: optional sign and "$", digits with thousands commas, optional decimals.
_NUM = r"-?\$?\d(?:[\d,]*\d)?(?:\.\d+)?"
_STRICT = re.compile(r"####\s*(" + _NUM + ")")
_ANY_NUM = re.compile(_NUM)


def normalize_number(s: str) -> str:
    """"$1,234.50" → "1234.5", "72.0" → "72", "12." → "12": one spelling per value, compared as strings."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


def extract_strict(text: str) -> Optional[str]:
    """The number after the first "#### " (the GSM8K answer format), or None."""
    m = _STRICT.search(text)
    return normalize_number(m.group(1)) if m else None


def extract_flexible(text: str) -> Optional[str]:
    """The last number anywhere in the text, or None (for models that do not write "####")."""
    found = _ANY_NUM.findall(text)
    return normalize_number(found[-1]) if found else None


EXTRACTORS: dict[str, Callable[[str], Optional[str]]] = {"strict": extract_strict, "flexible": extract_flexible}

# Evaluation protocol: lm-eval task eval/xtf_gsm8k.yaml (xtf.lmeval). Metric key → (lm-eval task, "metric,filter");
# the first is the primary metric ("accuracy"), in the same order as EXTRACTORS.
EVALUATION = "lm_eval"
LM_EVAL_METRICS: dict[str, tuple[str, str]] = {
    "accuracy_strict": ("xtf_gsm8k", "exact_match,strict"),
    "accuracy_flexible": ("xtf_gsm8k", "exact_match,flexible"),
}
LM_EVAL_TASKS: tuple[str, ...] = ("xtf_gsm8k",)


def convert(row: dict, idx: int, split: str, where: str, opts: Options, checker: RowChecker) -> Optional[dict]:
    """One source row → example, or None if the row is malformed (and the policy is "skip")."""
    if not checker.ok(row, {"question": str, "answer": str}, where):
        return None
    rationale, sep, final = row["answer"].partition("#### ")
    if not sep:
        checker.fail(where, "field 'answer' has no '#### <final answer>' line")
        return None
    answer = final.strip().replace(",", "")
    if not answer:
        checker.fail(where, "field 'answer' has an empty value after '#### '")
        return None
    rationale = _CALC.sub("", rationale).strip()
    response = rationale if opts.target == "rationale" else f"{rationale}\n#### {answer}"
    return {
        "id": f"gsm8k-{split}-{idx}",
        "prompt": f"Question: {row['question'].strip()}\nAnswer:",
        "response": " " + response,
        "answer": answer,
    }


def load(opts: Options, data: DataConfig, paths: PathsConfig) -> TaskData:
    checker = RowChecker(data.on_bad_row)
    splits: dict[str, list[dict]] = {}
    checksums: dict[str, str] = {}
    folder = local_dir(paths.data_dir, "gsm8k")
    source = ""
    for split in ("train", "test"):
        examples = []
        if folder is not None:
            path = folder / f"{split}.jsonl"
            if not path.is_file():
                raise DataError(f"{path} is missing (the local GSM8K folder needs train.jsonl and test.jsonl)")
            checksums[f"gsm8k/{path.name}"] = sha256_file(path)
            source = f"local:{folder}"
            rows = read_jsonl(path)
        else:
            hub_rows, source = load_hub_split(HUB_ID, HUB_CONFIG, split, paths.hub_mirror)
            checksums[f"{HUB_ID}/{split}"] = sha256_examples(hub_rows)
            rows = ((f"{HUB_ID}[{split}] row {i}", r) for i, r in enumerate(hub_rows))
        # The id counts source rows (skipped ones included), so ids do not shift when a bad row is skipped.
        for idx, (where, row) in enumerate(rows):
            ex = convert(row, idx, split, where, opts, checker)
            if ex is not None:
                examples.append(ex)
        splits[split] = examples
    return TaskData(splits=splits, source=source, checksums=checksums, skipped_rows=checker.skipped)
