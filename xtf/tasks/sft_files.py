"""Reading a user's SFT data (task=sft): rows from a file, a `datasets` folder or the Hub, each with where it came
from ("file:line" or "file row N"), so that every problem with a row can be named.

    data.train_file / data.eval_file:
        my.jsonl  my.jsonl.gz     one JSON object per line (where: file:line)
        my.json                   a JSON list of objects, or {"<key>": [objects]} with one list (where: file row N)
        my.csv                    a header line, then one row per line; a cell holding a JSON list (chat
                                  messages, noise spans) is parsed (where: file:line)
        my.parquet                (where: file row N)
        folder/                   a `datasets` folder written by save_to_disk: a Dataset, or a DatasetDict whose
                                  split task.options.train_split / eval_split is read (where: folder[split] row N)
        hub:owner/name            a Hugging Face Hub dataset (or paths.hub_mirror), split train_split / eval_split,
                                  config task.options.hub_config
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Optional

from xtf.tasks.common import (
    BAD_LINE,
    DataError,
    RowChecker,
    load_hub_split,
    read_json,
    read_jsonl,
    sha256_examples,
    sha256_file,
)

HUB_PREFIX = "hub:"
SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet")


def describe_problem(source: str) -> Optional[str]:
    """Why `source` cannot be read (checked by xtf.config before any work), or None."""
    if source.startswith(HUB_PREFIX):
        return None if source[len(HUB_PREFIX):].strip() else "names no dataset after 'hub:'"
    path = Path(source)
    if path.is_dir():
        if not any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json", "state.json")):
            return "is a folder but not one written by datasets' save_to_disk (no dataset_info.json / " \
                   "dataset_dict.json)"
        return None
    if not path.is_file():
        return "does not exist"
    if not str(path).endswith(SUFFIXES):
        return f"has an unknown file type; use one of {list(SUFFIXES)}, a save_to_disk folder, or hub:<dataset id>"
    return None


def read_rows(source: str, split: str, hub_config: Optional[str], hub_mirror: Optional[str],
              checker: RowChecker) -> tuple[Iterator[tuple[str, Any]], str, str]:
    """(rows as (where, row) pairs, source label, sha256 of the file or rows) for `source` (module docstring).
    `split` is the split read from a DatasetDict folder or the Hub."""
    if source.startswith(HUB_PREFIX):
        hub_id = source[len(HUB_PREFIX):]
        rows, label = load_hub_split(hub_id, hub_config, split, hub_mirror)
        return ((f"{hub_id}[{split}] row {i}", r) for i, r in enumerate(rows)), label, sha256_examples(rows)
    path = Path(source)
    if path.is_dir():
        return _read_folder(path, split)
    name = str(path)
    checksum = sha256_file(path)
    if name.endswith((".jsonl", ".jsonl.gz")):
        return read_jsonl(path, checker), f"local:{path}", checksum
    if name.endswith(".json"):
        return _read_json_list(path), f"local:{path}", checksum
    if name.endswith(".csv"):
        return _read_csv(path, checker), f"local:{path}", checksum
    return _read_parquet(path), f"local:{path}", checksum


def _read_json_list(path: Path) -> Iterator[tuple[str, Any]]:
    doc = read_json(path)
    if isinstance(doc, dict):
        lists = [v for v in doc.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON list of rows, or an object holding exactly one list; got an "
                            f"object with keys {sorted(doc)[:10]}")
        doc = lists[0]
    if not isinstance(doc, list):
        raise DataError(f"{path}: expected a JSON list of rows, got {type(doc).__name__}")
    return ((f"{path} row {i}", row) for i, row in enumerate(doc))


def _cell(value: str) -> Any:
    """A CSV cell: a JSON list or object (chat messages, noise spans) is parsed, anything else stays a string."""
    text = value.strip()
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return value
    return value


def _read_csv(path: Path, checker: RowChecker) -> Iterator[tuple[str, Any]]:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise DataError(f"{path}: no header line (the first line names the columns)")
            start = reader.line_num + 1
            for row in reader:
                where = f"{path}:{start}"
                start = reader.line_num + 1   # a quoted cell may span several lines
                if None in row or None in row.values():
                    checker.fail(where, f"the line has a different number of cells than the header "
                                        f"({len(reader.fieldnames)} columns)")
                    yield where, BAD_LINE
                    continue
                yield where, {k: _cell(v) for k, v in row.items()}
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte offset {e.start}); the file must be UTF-8 CSV") from None
    except csv.Error as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None


def _read_parquet(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a bad file; say which file
        raise DataError(f"{path}: not a readable Parquet file ({type(e).__name__}: {e})") from None
    return ((f"{path} row {i}", row) for i, row in enumerate(table.to_pylist()))


def _read_folder(path: Path, split: str) -> tuple[Iterator[tuple[str, Any]], str, str]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # noqa: BLE001 - datasets raises several types; say which folder
        raise DataError(f"{path}: not a readable datasets folder ({type(e).__name__}: {e})") from None
    label = f"local:{path}"
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise DataError(f"{path} is a DatasetDict without a split '{split}'; its splits: {sorted(ds)} "
                            f"(task.options.train_split / eval_split choose)")
        ds, label = ds[split], f"local:{path}[{split}]"
    files = sorted(f for f in path.rglob("*") if f.is_file())
    checksum = hashlib.sha256("".join(f"{f.relative_to(path)}:{sha256_file(f)};" for f in files).encode()).hexdigest()
    return ((f"{path}[{split}] row {i}", dict(r)) for i, r in enumerate(ds)), label, checksum
