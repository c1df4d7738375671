"""Every training row's decision, stored in the run folder: what an export (xtf.export) reads, with nothing but the
run folder and the tokenizer at record["weights"]. Written by xtf.pipeline for every run (score-only or not), before
results.json.

    <run folder>/decisions.npz    flat arrays, row after row (row i has lengths[i] tokens; aligned to input_ids,
                                  xtf.data's convention), N rows, T tokens in all:
        lengths        [N] int64   tokens of each row (after data.max_len)
        example_index  [N] int64   the row's line in examples.jsonl (rows dropped at tokenisation have none)
        ids            [N] str     the example ids
        input_ids      [T] int64
        response_mask  [T] bool    answer tokens (trainable before masking)
        keep           [T] bool    the method's decision: answer tokens that get a loss
        noisy__<attr>  [T] bool    each attribute's flags (XTF: ri, kn, tr; methods without attributes have none)
        score__<name>  [T] float   each score the method read (xtf.scoring: nll, kn, ri, tr, ref_nll, ...);
                                   NaN where a score has no value
    <run folder>/examples.jsonl   the training examples the run used (after augmentation), one JSON object a line

    from xtf import decisions
    d = decisions.read(run_folder)      # d.rows[i] = {"id", "example", "input_ids", "response_mask", "keep",
                                        #              "noisy": {attr: [L] bool}, "scores": {name: [L] float}}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xtf.cache import atomic_write_text

DECISIONS_FILE, EXAMPLES_FILE = "decisions.npz", "examples.jsonl"
DECISIONS_VERSION = 1  # bump when the layout above changes


class DecisionsError(ValueError):
    """A run folder holds no (readable) decisions; the message says which file and what to do."""


def example_index(examples: list[dict], rows: list[dict]) -> list[int]:
    """The index in `examples` of each row: rows are the examples in order, less those dropped at tokenisation
    (xtf.data.tokenize), so one forward walk matches them even when two examples share an id."""
    out, j = [], 0
    for row in rows:
        while j < len(examples) and examples[j]["id"] != row["id"]:
            j += 1
        if j == len(examples):
            raise AssertionError(f"row {row['id']} is not among the examples in order")
        out.append(j)
        j += 1
    return out


def write(folder: Path, examples: list[dict], rows: list[dict], keeps: list, noisy: dict, scores: dict) -> None:
    """decisions.npz and examples.jsonl (module docstring) in `folder`, each written to a temp file and renamed."""
    folder = Path(folder)
    atomic_write_text(folder / EXAMPLES_FILE,
                      "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))

    def flat(per_row, dtype) -> np.ndarray:
        return (np.concatenate([np.asarray(v, dtype=dtype) for v in per_row]) if per_row
                else np.zeros(0, dtype=dtype))

    arrays = {
        "version": np.asarray(DECISIONS_VERSION),
        "lengths": np.asarray([len(r["input_ids"]) for r in rows], dtype=np.int64),
        "example_index": np.asarray(example_index(examples, rows), dtype=np.int64),
        "ids": np.asarray([str(r["id"]) for r in rows], dtype=str),
        "input_ids": flat([r["input_ids"] for r in rows], np.int64),
        "response_mask": flat([r["response_mask"] for r in rows], bool),
        "keep": flat(keeps, bool),
        **{f"noisy__{a}": flat(masks, bool) for a, masks in noisy.items()},
        **{f"score__{name}": flat(values, np.asarray(values[0]).dtype if len(values) else np.float32)
           for name, values in scores.items()},
    }
    total = int(arrays["lengths"].sum())
    bad = [k for k, v in arrays.items() if v.ndim == 1 and k not in ("lengths", "example_index", "ids")
           and len(v) != total]
    if bad:
        raise AssertionError(f"decisions arrays {bad} are not aligned to input_ids ({total} tokens)")
    tmp = folder / f".{DECISIONS_FILE}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, folder / DECISIONS_FILE)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@dataclass
class Decisions:
    rows: list[dict]           # per row: id, example, input_ids, response_mask, keep, noisy, scores (docstring)
    attributes: list[str]      # the noisy__ arrays, in file order
    score_names: list[str]     # the score__ arrays, in file order


def read(folder: Path) -> Decisions:
    """The decisions of the run in `folder`; DecisionsError naming the file when it is missing or unreadable."""
    folder = Path(folder)
    path, ex_path = folder / DECISIONS_FILE, folder / EXAMPLES_FILE
    if not path.is_file() or not ex_path.is_file():
        raise DecisionsError(f"{folder} has no {DECISIONS_FILE} / {EXAMPLES_FILE}: the run was recorded before every "
                             f"row's decision was stored (or is not complete); rerun it with force=true")
    try:
        arrays = dict(np.load(path, allow_pickle=False))
        examples = [json.loads(line) for line in ex_path.read_text(encoding="utf-8").splitlines() if line]
    except (OSError, ValueError) as e:
        raise DecisionsError(f"{path} (or {EXAMPLES_FILE} beside it) cannot be read ({e}); rerun the run with "
                             f"force=true") from None
    if int(arrays.get("version", -1)) != DECISIONS_VERSION:
        raise DecisionsError(f"{path} has layout version {arrays.get('version')}, this code reads "
                             f"{DECISIONS_VERSION}; rerun the run with force=true")
    attributes = [k[len("noisy__"):] for k in arrays if k.startswith("noisy__")]
    score_names = [k[len("score__"):] for k in arrays if k.startswith("score__")]
    offsets = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    rows = []
    for i, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        rows.append({
            "id": str(arrays["ids"][i]), "example": examples[int(arrays["example_index"][i])],
            "input_ids": arrays["input_ids"][a:b], "response_mask": arrays["response_mask"][a:b],
            "keep": arrays["keep"][a:b],
            "noisy": {n: arrays[f"noisy__{n}"][a:b] for n in attributes},
            "scores": {n: arrays[f"score__{n}"][a:b] for n in score_names},
        })
    return Decisions(rows, attributes, score_names)
