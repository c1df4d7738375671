"""PubMedQA PQA-L: 1,000 expert-labelled yes/no/maybe questions about PubMed abstracts.

Sources:
  * local `<data_dir>/pubmedqa/ori_pqal.json` (PMID → item) and `test_ground_truth.json` (PMID → label of the
    official 500-item test set): test = those 500 PMIDs, train = the other 500 (the official CV pool).
  * else the Hub dataset "qiaojin/PubMedQA", config "pqa_labeled" (one "train" split of 1,000). The official test
    set is re-derived with the algorithm of pubmedqa's `preprocess/split_dataset.py` (random.seed(0), per-label
    shuffle, second half of each label = test) and accepted only if its PMIDs hash to OFFICIAL_TEST_SHA256; if the
    rows arrive in another order, a deterministic 500/500 split is used instead and TaskData.notes says so.

Example:
    prompt    "<contexts, one per line>\n\nQuestion: <question>\nAnswer with yes, no or maybe.\nAnswer:"
    response  " <LONG_ANSWER (the abstract's conclusion)> The answer is yes."
              (the conclusion is the reasoning; the closing sentence puts the decision last, where the extractor
              looks for it)
    answer    "yes" | "no" | "maybe"
"""

from __future__ import annotations

import hashlib
import math
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
    read_json,
    sha256_examples,
    sha256_file,
)
from xtf.tasks.medqa import EXPERT_WORDS as MEDQA_EXPERT_WORDS

HUB_ID = "qiaojin/PubMedQA"
HUB_CONFIG = "pqa_labeled"
DECISIONS = ("yes", "no", "maybe")
EXTRACT_VERSION = 1
EXPERT_WORDS: tuple[str, ...] = MEDQA_EXPERT_WORDS  # the paper's medicine words, shared by both medical tasks
# sha256 of ",".join(sorted(official test PMIDs)), computed from pubmedqa's test_ground_truth.json.
OFFICIAL_TEST_SHA256 = "849f8c5496168d4bc2080ca64fc87ee1f431024600118eb171427c73a0331b6d"


@dataclass
class Options:
    """PubMedQA has no task-specific knobs (the split is the official one)."""


_DECISION = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)


def extract_decision(text: str) -> Optional[str]:
    """The last yes/no/maybe word in the text, lower-cased (the response format ends with the decision)."""
    found = _DECISION.findall(text)
    return found[-1].lower() if found else None


EXTRACTORS: dict[str, Callable[[str], Optional[str]]] = {"decision": extract_decision}
# The closing sentence make_example writes: the same words in every row, so KN calls them "known" (PCP ≈ 1) as it
# does GSM8K's "#### ", yet a model never trained on them may not close with a decision for the extractor to read.
_CLOSING = re.compile(r"The answer is (yes|no|maybe)\.\s*$")


def protected_spans(example: dict) -> list[tuple[int, int]]:
    """The answer format, never noise (xtf.tasks.common): the closing sentence "The answer is <decision>." and the
    end of sequence; a response without that sentence (a paraphrase, method=da) protects the decision word the
    extractor reads (the last yes/no/maybe) instead."""
    response = example["response"]
    end = len(response)
    closing = _CLOSING.search(response)
    if closing:
        return [(closing.start(), end), (end, end)]
    words = list(_DECISION.finditer(response))
    return [words[-1].span(1), (end, end)] if words else [(end, end)]

# Evaluation protocol (xtf.lmeval): greedy generation + extract_decision (eval/xtf_pubmedqa.yaml).
EVALUATION = "lm_eval"
LM_EVAL_METRICS: dict[str, tuple[str, str]] = {
    "accuracy_decision": ("xtf_pubmedqa", "exact_match,decision"),
}
LM_EVAL_TASKS: tuple[str, ...] = ("xtf_pubmedqa",)


def make_example(pmid: str, question: str, contexts: list, long_answer: str, decision: str) -> dict:
    context = "\n".join(c.strip() for c in contexts)
    return {
        "id": pmid,
        "prompt": f"{context}\n\nQuestion: {question.strip()}\nAnswer with yes, no or maybe.\nAnswer:",
        "response": f" {long_answer.strip()} The answer is {decision}.",
        "answer": decision,
    }


def check_item(item: dict, where: str, checker: RowChecker, fields: dict, contexts_of: Callable) -> bool:
    """Field types, then the decision's value and the contexts (a list of strings) – row-level problems."""
    if not checker.ok(item, fields, where):
        return False
    if item["final_decision"] not in DECISIONS:
        return checker.fail(where, f"field 'final_decision' must be one of {list(DECISIONS)}, "
                                   f"got {item['final_decision']!r}")
    contexts = contexts_of(item)
    if not isinstance(contexts, list) or not all(isinstance(c, str) for c in contexts):
        return checker.fail(where, "the contexts must be a list of strings")
    return True


def official_test_pmids(items: list[tuple[str, str]]) -> Optional[set[str]]:
    """Re-run pubmedqa's split_dataset.py on (pmid, decision) pairs in source order; the 500 test PMIDs if they
    match the official set (OFFICIAL_TEST_SHA256), else None."""
    rng = random.Random(0)  # split_dataset.py: random.seed(0), then random.shuffle per label in yes/no/maybe order
    by_label: dict[str, list[str]] = {d: [] for d in DECISIONS}
    for pmid, decision in items:
        by_label[decision].append(pmid)
    test: list[str] = []
    for pmids in by_label.values():
        rng.shuffle(pmids)
        test += pmids[math.ceil(len(pmids) / 2):]  # split(dataset, 2): second fold of each label is the test set
    digest = hashlib.sha256(",".join(sorted(test)).encode()).hexdigest()
    return set(test) if digest == OFFICIAL_TEST_SHA256 else None


def load(opts: Options, data: DataConfig, paths: PathsConfig) -> TaskData:
    checker = RowChecker(data.on_bad_row)
    folder = local_dir(paths.data_dir, "pubmedqa")
    examples: list[dict] = []
    notes: list[str] = []
    if folder is not None:
        items_path, truth_path = folder / "ori_pqal.json", folder / "test_ground_truth.json"
        for p in (items_path, truth_path):
            if not p.is_file():
                raise DataError(f"{p} is missing (the local PubMedQA folder needs ori_pqal.json and its test labels)")
        items, truth = read_json(items_path), read_json(truth_path)
        if not isinstance(items, dict) or not isinstance(truth, dict):
            raise DataError(f"{items_path} and {truth_path} must each hold one JSON object keyed by PMID")
        fields = {"QUESTION": str, "CONTEXTS": list, "LONG_ANSWER": str, "final_decision": str}
        for pmid, item in items.items():
            # A JSON object has no row per line: name the item by its PMID key instead.
            if check_item(item, f'{items_path}["{pmid}"]', checker, fields, lambda it: it["CONTEXTS"]):
                examples.append(
                    make_example(pmid, item["QUESTION"], item["CONTEXTS"], item["LONG_ANSWER"], item["final_decision"])
                )
        missing = sorted(set(truth) - set(items))
        if missing:
            raise DataError(f"{truth_path}: {len(missing)} test PMIDs are not in {items_path}, e.g. {missing[:3]}")
        test_ids = set(truth)
        source = f"local:{folder}"
        checksums = {f"pubmedqa/{p.name}": sha256_file(p) for p in (items_path, truth_path)}
    else:
        rows, source = load_hub_split(HUB_ID, HUB_CONFIG, "train", paths.hub_mirror)
        fields = {"pubid": int, "question": str, "context": dict, "long_answer": str, "final_decision": str}
        for i, row in enumerate(rows):
            if check_item(row, f"{HUB_ID}[train] row {i}", checker, fields, lambda r: r["context"].get("contexts")):
                examples.append(make_example(str(row["pubid"]), row["question"], row["context"]["contexts"],
                                             row["long_answer"], row["final_decision"]))
        test_ids = official_test_pmids([(e["id"], e["answer"]) for e in examples])
        if test_ids is None:
            # Not the official order/content: split 500/500 (half/half) by a seeded permutation of sorted PMIDs.
            order = sorted(e["id"] for e in examples)
            random.Random(0).shuffle(order)
            test_ids = set(order[len(order) // 2:])
            notes.append("official PubMedQA test PMIDs could not be re-derived from the Hub rows; "
                         "used a seeded half/half split instead (not comparable to published numbers)")
        checksums = {f"{HUB_ID}/{HUB_CONFIG}/train": sha256_examples(rows)}
    splits = {
        "train": [e for e in examples if e["id"] not in test_ids],
        "test": [e for e in examples if e["id"] in test_ids],
    }
    return TaskData(splits=splits, source=source, checksums=checksums, skipped_rows=checker.skipped,
                    skipped=checker.where_skipped, notes=notes)
