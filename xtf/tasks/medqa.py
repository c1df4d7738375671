"""MedQA-USMLE, 4 options (English): multiple-choice medical board questions.

Sources:
  * local `<data_dir>/medqa/phrases_no_exclude_test.jsonl`: only the official *test* file (1,273 rows) exists
    locally, so a deterministic SMOKE split is carved out of it (see `Options`). Numbers on it are not comparable
    to published MedQA results; TaskData.notes says so.
  * else the Hub dataset "GBaker/MedQA-USMLE-4-options" with its real train (10,178) and test (1,273) splits.
Both have `question`, `options` ({"A".."D": text}), `answer_idx` ("A".."D") and `answer` (the correct text).

Example:
    prompt    "<question>\nA. <text>\nB. <text>\nC. <text>\nD. <text>\nAnswer:"
    response  " B. <text of option B>"
    answer    "B"
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

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

HUB_ID = "GBaker/MedQA-USMLE-4-options"
LOCAL_FILE = "phrases_no_exclude_test.jsonl"
LETTERS = ("A", "B", "C", "D")
EXTRACT_VERSION = 1
SMOKE_NOTE = "smoke split carved from the MedQA test file; not comparable to published numbers"

# Common biomedical words: the XTF paper's medicine domain words (shared with pubmedqa).
EXPERT_WORDS: tuple[str, ...] = (
    "patient", "diagnosis", "treatment", "disease", "clinical", "symptoms", "therapy", "infection",
    "blood", "cancer", "drug", "dose", "syndrome", "chronic", "acute", "pain", "surgery", "hospital",
    "medical", "medication", "heart", "cell", "tumor", "pressure", "risk", "physician", "examination",
    "laboratory", "fever", "serum", "cardiac", "lesion",
)  # fmt: skip


@dataclass
class Options:
    # Only used with the local (test-only) file: the rows are shuffled with random.Random(split_seed), the first
    # `smoke_train_fraction` of that permutation becomes "train" and the rest "test" (each kept in file order).
    # Ignored when the Hub's real train/test splits are used.
    split_seed: int = 0
    smoke_train_fraction: float = 0.6


_LETTER = re.compile(r"\b([A-D])\b")


def extract_letter(text: str) -> Optional[str]:
    """The first standalone capital A–D in the text ("B. Tell the attending…" → "B"), or None."""
    m = _LETTER.search(text)
    return m.group(1) if m else None


EXTRACTORS: dict[str, Callable[[str], Optional[str]]] = {"letter": extract_letter}


def protected_spans(example: dict) -> list[tuple[int, int]]:
    """The answer format, never noise (xtf.tasks.common): the answer letter the extractor reads (the first standalone
    A–D, when it is the gold letter: " B. <text>" → "B"; the option's text is data, not format) and the end of
    sequence."""
    response = example["response"]
    end = len(response)
    m = _LETTER.search(response)
    return [m.span(1), (end, end)] if m and m.group(1) == example.get("answer") else [(end, end)]

# Evaluation protocol (xtf.lmeval): multiple choice by log-likelihood of each full answer " X. <text>"
# (eval/xtf_medqa_mc.yaml; primary) and greedy generation + extract_letter (eval/xtf_medqa_gen.yaml).
EVALUATION = "lm_eval"
LM_EVAL_METRICS: dict[str, tuple[str, str]] = {
    "accuracy_mc": ("xtf_medqa_mc", "acc,none"),
    "accuracy_mc_norm": ("xtf_medqa_mc", "acc_norm,none"),
    "accuracy_generative": ("xtf_medqa_gen", "exact_match,letter"),
}
LM_EVAL_TASKS: tuple[str, ...] = ("xtf_medqa_mc", "xtf_medqa_gen")


def convert(row: dict, ex_id: str, where: str, checker: RowChecker) -> Optional[dict]:
    """One source row → example, or None if the row is malformed (and the policy is "skip")."""
    if not checker.ok(row, {"question": str, "options": dict, "answer_idx": str}, where):
        return None
    options = row["options"]
    for letter in LETTERS:
        text = options.get(letter)
        if not isinstance(text, str) or not text.strip():
            checker.fail(where, f"field 'options' needs a non-empty string for '{letter}', got {text!r}")
            return None
    letter = row["answer_idx"].strip()
    if letter not in LETTERS:
        checker.fail(where, f"field 'answer_idx' must be one of {list(LETTERS)}, got {letter!r}")
        return None
    lines = [row["question"].strip()] + [f"{k}. {options[k].strip()}" for k in LETTERS] + ["Answer:"]
    return {
        "id": ex_id,
        "prompt": "\n".join(lines),
        "response": f" {letter}. {options[letter].strip()}",
        "answer": letter,
        "options": {k: options[k] for k in LETTERS},
        "meta_info": str(row.get("meta_info", "")),
    }


def smoke_split(examples: list[dict], seed: int, train_fraction: float) -> tuple[list[dict], list[dict]]:
    """Deterministic train/test partition of one list: seeded permutation, first `train_fraction` is train."""
    if not 0.0 < train_fraction < 1.0:
        raise DataError(f"task.options.smoke_train_fraction={train_fraction} must be in (0, 1)")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_train = round(train_fraction * len(examples))
    train_idx = set(order[:n_train])
    # Keep file order inside each split, so data.limit ("first N in source order") stays meaningful.
    train = [e for i, e in enumerate(examples) if i in train_idx]
    test = [e for i, e in enumerate(examples) if i not in train_idx]
    return train, test


def load(opts: Options, data: DataConfig, paths: PathsConfig) -> TaskData:
    checker = RowChecker(data.on_bad_row)
    folder = local_dir(paths.data_dir, "medqa")
    if folder is not None:
        path = folder / LOCAL_FILE
        if not path.is_file():
            raise DataError(f"{path} is missing (the local MedQA folder needs {LOCAL_FILE})")
        examples = []
        for idx, (where, row) in enumerate(read_jsonl(path, checker)):
            ex = convert(row, f"medqa-test-{idx}", where, checker)
            if ex is not None:
                examples.append(ex)
        train, test = smoke_split(examples, opts.split_seed, opts.smoke_train_fraction)
        return TaskData(
            splits={"train": train, "test": test},
            source=f"local:{folder}",
            checksums={f"medqa/{LOCAL_FILE}": sha256_file(path)},
            skipped_rows=checker.skipped, skipped=checker.where_skipped,
            notes=[SMOKE_NOTE],
        )

    splits: dict[str, list[dict]] = {}
    checksums: dict[str, str] = {}
    source = ""
    for split in ("train", "test"):
        rows, source = load_hub_split(HUB_ID, None, split, paths.hub_mirror)
        checksums[f"{HUB_ID}/{split}"] = sha256_examples(rows)
        examples = [convert(r, f"medqa-{split}-{i}", f"{HUB_ID}[{split}] row {i}", checker) for i, r in enumerate(rows)]
        splits[split] = [ex for ex in examples if ex is not None]
    return TaskData(splits=splits, source=source, checksums=checksums, skipped_rows=checker.skipped,
                    skipped=checker.where_skipped)
