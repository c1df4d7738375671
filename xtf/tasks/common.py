"""What every task shares: the example schema, the result of `load`, row validation with file:line errors,
and the two data sources (a local data directory first, else the Hugging Face Hub or a local mirror of it).

Example schema (a plain dict; tasks may add extra keys such as `test` or `options`):
    id        str   unique within its split
    prompt    str   the raw prompt (question + instruction); chat templates are applied later, in tokenize()
    response  str   the training target (answer tokens); "" allowed only in test splits
    answer    str   the gold final answer used by evaluation (e.g. "72", "B", "yes")

Protected spans (optional): a task whose answers have a fixed format its extractor reads defines
    protected_spans(example) -> [(start, end), ...]
half-open character offsets into `response` of the text no method may mask (GSM8K's "#### N" line, MedQA's answer
letter, PubMedQA's closing "The answer is yes."). A zero-width span at len(response) stands for the end of
sequence: it protects the EOS that tokenisation appends. Found in the response text, not stored with the example
(examples, their checksums and the run ids stay as they were). xtf.data maps the spans onto a per-token
`protected` array; xtf.masking exempts those tokens from every method under method.protect_answer (the default).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from xtf.cache import sha256_file  # noqa: F401 - re-exported: the tasks record the checksum of each file read
from xtf.errors import DataError  # noqa: F401 - re-exported: the tasks raise it from here
from xtf.hub import hub_reachable


@dataclass
class TaskData:
    splits: dict[str, list[dict]]                       # "train", "dev", "test" → examples
    source: str                                         # "local:<dir>", "hub:<id>", "mirror:<dir>", "generated"
    checksums: dict[str, str] = field(default_factory=dict)  # file or split name → sha256 (provenance)
    skipped_rows: int = 0                               # malformed rows skipped under data.on_bad_row=skip
    skipped: list[str] = field(default_factory=list)    # "file:line: problem" of each skipped row (the first 100)
    notes: list[str] = field(default_factory=list)      # e.g. "smoke split carved from the test file"
    locations: dict[str, str] = field(default_factory=dict)  # example id → "file:line" (task=sft), for messages


# Stands for a line that is not a row at all (invalid JSON or not UTF-8) and was already counted as skipped.
# `read_jsonl` yields it in the line's place, so that ids which count source rows do not shift.
BAD_LINE = object()
MAX_LISTED = 100  # skipped rows named one by one in TaskData.skipped (all are counted)


class RowChecker:
    """Validates rows; raises DataError naming `where` (file:line) or, under policy "skip", counts the row and
    remembers where it was and why (`where_skipped`)."""

    def __init__(self, policy: str):
        assert policy in ("error", "skip"), policy
        self.policy = policy
        self.skipped = 0
        self.where_skipped: list[str] = []

    def ok(self, row: Any, fields: dict[str, type], where: str) -> bool:
        """True if `row` is a dict whose `fields` have the right types and non-empty strings."""
        if row is BAD_LINE:
            return False  # counted when the line was read
        problem = None
        if not isinstance(row, dict):
            problem = f"expected a JSON object, got {type(row).__name__}"
        else:
            for name, tp in fields.items():
                if name not in row:
                    problem = f"missing field '{name}'"
                elif not isinstance(row[name], tp):
                    problem = f"field '{name}' must be {tp.__name__}, got {type(row[name]).__name__}"
                elif tp is str and not row[name].strip():
                    problem = f"field '{name}' is empty"
                if problem:
                    break
        return True if problem is None else self.fail(where, problem)

    def fail(self, where: str, problem: str) -> bool:
        """Report a row-level problem found by task-specific parsing (same policy as `ok`)."""
        if self.policy == "error":
            raise DataError(f"{where}: {problem} (set data.on_bad_row=skip to skip and count such rows)")
        self.skipped += 1
        if len(self.where_skipped) < MAX_LISTED:
            self.where_skipped.append(f"{where}: {problem}")
        return False


def read_jsonl(path: Path, checker: Optional[RowChecker] = None) -> Iterator[tuple[str, Any]]:
    """Yield (where, row) for each non-blank line of a .jsonl (or .jsonl.gz) file; `where` is "file:line".
    A line that is not UTF-8 or not JSON raises DataError naming file:line, or, when `checker` skips bad rows,
    is counted there and yielded as BAD_LINE (which `RowChecker.ok` rejects without counting it twice)."""
    checker = checker or RowChecker("error")
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                checker.fail(where, f"not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1})")
                yield where, BAD_LINE
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                checker.fail(where, f"invalid JSON ({e.msg})")
                yield where, BAD_LINE


def read_json(path: Path) -> Any:
    """One JSON document; invalid JSON or bytes that are not UTF-8 raise DataError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte offset {e.start}); the file must be UTF-8 JSON") from None


def sha256_examples(examples: list[dict]) -> str:
    """Content hash of a list of examples (order matters)."""
    return hashlib.sha256(json.dumps(examples, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def local_dir(data_dir: Optional[str], sub: str) -> Optional[Path]:
    """`<data_dir>/<sub>` if data_dir is set and that folder exists, else None (→ use the Hub). A data_dir that
    does not exist is an error, never a silent fall-back to the Hub."""
    if not data_dir:
        return None
    if not Path(data_dir).is_dir():
        raise DataError(f"paths.data_dir={data_dir} does not exist (or is not a folder); point it (XTF_DATA_DIR) at "
                        f"the local benchmark files, or set it to null to use the Hugging Face Hub")
    d = Path(data_dir) / sub
    return d if d.is_dir() else None


def load_hub_split(hub_id: str, config: Optional[str], split: str, hub_mirror: Optional[str]) -> tuple[list[dict], str]:
    """Rows of a Hub dataset split as plain dicts, and the source label.

    With `hub_mirror` set, `<hub_mirror>/<hub_id>` (a folder laid out like the Hub repository: data files that
    `datasets` can read) is loaded instead, with the same code path; that is how tests and air-gapped clusters
    exercise the Hub branch. Without it, the real Hub is used (honours HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    import datasets

    if hub_mirror:
        where = Path(hub_mirror) / hub_id
        if not where.is_dir():
            raise DataError(f"hub mirror has no folder for '{hub_id}': {where} does not exist")
        ds = datasets.load_dataset(str(where), config, split=split)
        return [dict(r) for r in ds], f"mirror:{where}"
    if os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1":
        # datasets would otherwise fail with a long, generic trace; say what to do instead.
        try:
            ds = datasets.load_dataset(hub_id, config, split=split)
        except Exception as e:  # noqa: BLE001 - re-raised with the fix
            raise DataError(
                f"dataset '{hub_id}' is not available offline ({type(e).__name__}). Point paths.data_dir "
                f"(XTF_DATA_DIR) at the local benchmark files, or paths.hub_mirror at a local Hub mirror."
            ) from e
    else:
        # datasets would retry for minutes and then print a long trace: check the Hub within seconds first.
        if not hub_reachable():
            endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
            raise DataError(
                f"dataset '{hub_id}' is not local and the Hugging Face Hub ({endpoint}) is unreachable. Point "
                f"paths.data_dir (XTF_DATA_DIR) at the local benchmark files, paths.hub_mirror at a local Hub "
                f"mirror, or set HF_DATASETS_OFFLINE=1 to use the datasets cache.")
        ds = datasets.load_dataset(hub_id, config, split=split)
    return [dict(r) for r in ds], f"hub:{hub_id}"
