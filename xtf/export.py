"""The filtered dataset out: a finished run's decision as a dataset other trainers load with no custom code.

    python -m xtf.export results/<experiment>/<run_id> [--out DIR]   (xtf-export; DIR defaults to <run folder>/export)
    python run.py ... export.enabled=true [export.dir=DIR]           (the pipeline exports after writing the record)

Reads only the run folder (results.json; decisions.npz and examples.jsonl, xtf.decisions; selection.npz of an
online method) and the tokenizer at record["weights"]. Writes DIR atomically (a temp folder renamed into place) and
deterministically (the same run gives byte-identical files, wherever DIR is):

    DIR/dataset/     datasets.load_from_disk(DIR/dataset)   (save_to_disk: data-00000-of-00001.arrow, state.json, ...)
    DIR/data.parquet the same rows: datasets.load_dataset(DIR) (the card's `configs` point at it), pandas, polars
    DIR/README.md    the dataset card (xtf.export_card); DIR is laid out as a Hub dataset repository

One row per training example of the run, in the run's order (rows dropped at tokenisation as too long are absent;
the card counts them). Per-token lists are aligned to input_ids (xtf.data). Columns:
    id                 the example id
    <original fields>  the user's row (task=sft), else the example's prompt / response / answer (/ messages); a
                       field that Arrow cannot type is stored as JSON text, one named like a column below as
                       original_<name> (the card lists both)
    input_ids, attention_mask
    labels             input_ids where the method keeps the token, -100 elsewhere (prompt, context turns, masked)
    completion_mask    1 on kept tokens: TRL's SFTTrainer folds it (and assistant_masks) into labels when a
                       pre-tokenised dataset has no labels column; with labels it uses labels as they are
    assistant_masks    (conversations only) the same kept-token mask, under the name TRL reads for chat data
    response_mask      1 on answer tokens before masking
    score_<name>       each score the method read (xtf.scoring: nll, kn, ri, tr, ref_nll, ...); null off the answer
    selected_share     (online methods, after training) the share of its training steps that selected the token
    masked_spans       [{turn, start, end, text, reason, token_start, token_end}]: consecutive masked tokens of one
                       turn merged into one span; turn = message index (chat), 0 for a prompt/response example
                       (offsets into its response); start/end = character offsets into that turn's text (start ==
                       end for an end-of-turn token); reason = the attributes that flagged them (the method's name
                       for a method without attributes); token_start/token_end index input_ids
    kept_fraction      kept / answer tokens of the row (0.0: the row is dropped from training; TRL drops it too)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from xtf import data, decisions, export_card, models
from xtf.decisions import DecisionsError

EXPORT_VERSION = 1            # bump when the columns or the card change
PARQUET_FILE, DATASET_DIR = "data.parquet", "dataset"
TOKEN_COLUMNS = ("input_ids", "attention_mask", "labels", "completion_mask", "assistant_masks", "response_mask")
OWN_COLUMNS = ("id", *TOKEN_COLUMNS, "selected_share", "masked_spans", "kept_fraction")
IGNORE = -100


class ExportError(ValueError):
    """The run cannot be exported; the message names the file or folder and what to do."""


def original_fields(example: dict) -> dict:
    """The fields a user knows the example by: their own row (task=sft keeps it as example["row"]), else the
    example's prompt / response / answer (and messages)."""
    if isinstance(example.get("row"), dict):
        return example["row"]
    return {k: example[k] for k in ("prompt", "response", "answer", "messages") if k in example}


def turn_text(example: dict, turn: int) -> str:
    """The text a span's character offsets point into (xtf.data.answer_char_spans' contract)."""
    return example["messages"][turn]["content"] if "messages" in example else example["response"]


def masked_spans(example: dict, char_spans: list, masked: np.ndarray, reasons: dict[int, list[str]]) -> list[dict]:
    """Consecutive masked tokens of one turn, merged: [{turn, start, end, text, reason, token_start, token_end}].
    char_spans: per position (turn, start, end) or None (xtf.data.answer_char_spans); masked: [L] bool; reasons:
    masked position → the attributes that flagged it (in attribute order)."""
    spans: list[dict] = []
    for t in np.flatnonzero(masked).tolist():
        if char_spans[t] is None:
            raise AssertionError(f"example {example.get('id')}: masked position {t} is not an answer token")
        turn, start, end = char_spans[t]
        last = spans[-1] if spans else None
        if last is not None and last["token_end"] == t and last["turn"] == turn:
            last.update(start=min(last["start"], start), end=max(last["end"], end), token_end=t + 1)
            last["reason"] += [r for r in reasons[t] if r not in last["reason"]]
        else:
            spans.append({"turn": int(turn), "start": int(start), "end": int(end), "reason": list(reasons[t]),
                          "token_start": t, "token_end": t + 1})
    for s in spans:
        s["text"] = turn_text(example, s["turn"])[s["start"]:s["end"]]
    return [{k: s[k] for k in ("turn", "start", "end", "text", "reason", "token_start", "token_end")} for s in spans]


def _per_token_scores(values: np.ndarray, answer: np.ndarray) -> list:
    """Floats on answer tokens, None elsewhere and where a score has no value (NaN)."""
    return [float(v) if a and np.isfinite(v) else None for v, a in zip(values.tolist(), answer.tolist())]


def _selection(folder: Path, lengths: list[int]) -> list[np.ndarray] | None:
    """An online method's share of training steps that selected each token (selection.npz, xtf.explain), per row."""
    path = folder / "selection.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        share, saved = z["share"], z["lengths"].tolist()
    if saved != lengths:
        raise ExportError(f"{path} does not match {decisions.DECISIONS_FILE} row by row; rerun the run with force=true")
    return np.split(share, np.cumsum(saved)[:-1]) if saved else []


def build_columns(record: dict, dec: decisions.Decisions, tokenizer, selection) -> tuple[dict, dict]:
    """{column: per-row values} (module docstring) and what the card reports about them."""
    chat_template = bool(record["config"]["model"].get("chat_template"))
    method = record["method"]
    cols: dict[str, list] = {c: [] for c in ("id", *TOKEN_COLUMNS, "masked_spans", "kept_fraction")}
    scores = {f"score_{n}": [] for n in dec.score_names}
    originals = [original_fields(r["example"]) for r in dec.rows]
    for row in dec.rows:
        ex, ids = row["example"], row["input_ids"]
        full = data.tokenize_example(tokenizer, ex, 10**9, chat_template)[0]
        if list(full[:len(ids)]) != ids.tolist():
            raise ExportError(f"example {row['id']}: the tokenizer at {record['weights']} does not reproduce the "
                              f"run's input_ids (were the weights or the tokenizer changed since the run?)")
        answer, keep = row["response_mask"], row["keep"]
        masked = answer & ~keep
        reasons = {t: [a for a in dec.attributes if row["noisy"][a][t]] or [method]
                   for t in np.flatnonzero(masked).tolist()}
        char_spans = data.answer_char_spans(tokenizer, ex, chat_template)[:len(ids)]
        cols["id"].append(row["id"])
        cols["input_ids"].append(ids.tolist())
        cols["attention_mask"].append([1] * len(ids))
        cols["labels"].append(np.where(keep, ids, IGNORE).tolist())  # as xtf.train.make_labels
        cols["completion_mask"].append(keep.astype(int).tolist())
        cols["assistant_masks"].append(keep.astype(int).tolist())
        cols["response_mask"].append(answer.astype(int).tolist())
        for n in dec.score_names:
            scores[f"score_{n}"].append(_per_token_scores(row["scores"][n], answer))
        cols["masked_spans"].append(masked_spans(ex, char_spans, masked, reasons))
        cols["kept_fraction"].append(float(keep.sum() / max(int(answer.sum()), 1)))
    chat = any("messages" in r["example"] for r in dec.rows)
    if not chat:
        del cols["assistant_masks"]
    own = set(OWN_COLUMNS) | set(scores)
    names: dict[str, str] = {}  # original field → its column (original_<name> when it collides with ours)
    for o in originals:
        for k in o:
            names.setdefault(k, f"original_{k}" if k in own else k)
    if len(set(names.values())) != len(names) or set(names.values()) & own:
        raise ExportError(f"the original fields {sorted(names)} collide with the export's columns even after "
                          f"renaming to original_<name>; rename them in your data")
    fields = {col: [o.get(k) for o in originals] for k, col in names.items()}
    columns = {"id": cols.pop("id"), **fields, **{c: cols[c] for c in TOKEN_COLUMNS if c in cols}, **scores}
    if selection is not None:
        columns["selected_share"] = [_per_token_scores(s, r["response_mask"]) for s, r in zip(selection, dec.rows)]
    columns["masked_spans"], columns["kept_fraction"] = cols["masked_spans"], cols["kept_fraction"]
    stats = {"chat": chat, "renamed_fields": sorted(k for k, c in names.items() if c != k),
             "original_fields": list(fields),
             "score_columns": list(scores), "selected_share": selection is not None}
    return columns, stats


def _kind(value) -> str:
    return ("none" if value is None else "bool" if isinstance(value, bool) else
            "number" if isinstance(value, (int, float)) else type(value).__name__)


def _typable(value):
    """`value` with each list that mixes kinds of items (a noise span [start, end, "type"]) as JSON text, so that
    Arrow can type the rest (a conversation whose turns carry spans stays a list of structs)."""
    if isinstance(value, dict):
        return {k: _typable(v) for k, v in value.items()}
    if isinstance(value, list):
        if len({_kind(v) for v in value} - {"none"}) > 1:
            return json.dumps(value, ensure_ascii=False)
        return [_typable(v) for v in value]
    return value


def arrow_table(columns: dict, stats: dict):
    """The columns as a pyarrow Table with fixed types (token lists int64, scores float64). An original field is
    typed by Arrow, its mixed-kind lists as JSON text (`_typable`); one that Arrow still cannot type (a field of
    another type in some rows) becomes JSON text as a whole, listed in stats["json_fields"]."""
    import pyarrow as pa

    ints, floats = pa.list_(pa.int64()), pa.list_(pa.float64())
    span = pa.struct([("turn", pa.int64()), ("start", pa.int64()), ("end", pa.int64()), ("text", pa.string()),
                      ("reason", pa.list_(pa.string())), ("token_start", pa.int64()), ("token_end", pa.int64())])
    fixed = {"id": pa.string(), **{c: ints for c in TOKEN_COLUMNS}, "masked_spans": pa.list_(span),
             "kept_fraction": pa.float64(), "selected_share": floats,
             **{c: floats for c in stats["score_columns"]}}
    arrays, stats["json_fields"] = {}, []
    for name, values in columns.items():
        if name in fixed:
            arrays[name] = pa.array(values, type=fixed[name])
            continue
        try:
            arrays[name] = pa.array([_typable(v) for v in values])
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError):
            arrays[name] = pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in values],
                                    type=pa.string())
            stats["json_fields"].append(name)
    return pa.table(arrays)


def _fingerprint(table) -> str:
    """A content hash of the table (the dataset's fingerprint in state.json: datasets would pick a random one)."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(f"xtf-export-v{EXPORT_VERSION}".encode() + sink.getvalue().to_pybytes()).hexdigest()[:16]


@contextlib.contextmanager
def _quiet_datasets():
    """No datasets progress bars for these two small writes (the pipeline prints one line instead)."""
    from datasets.utils import logging as ds_logging

    was = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            ds_logging.enable_progress_bar()


def _is_export(folder: Path) -> bool:
    card = folder / "README.md"
    return card.is_file() and export_card.MARKER in card.read_text(encoding="utf-8", errors="replace")


def _replace_folder(tmp: Path, out: Path) -> None:
    """Move the finished temp folder to `out`: readers see the old export or the new one, never half of one."""
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            stale = out.parent / f".{out.name}.stale-{os.getpid()}"
            out.rename(stale)
            tmp.rename(out)
            shutil.rmtree(stale, ignore_errors=True)
            return
    tmp.rename(out)


def load_run(run_dir: Path) -> dict:
    """The complete record of the run in `run_dir`; ExportError naming the folder otherwise."""
    path = Path(run_dir) / "results.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExportError(f"{run_dir} is not a finished run folder: {path} cannot be read ({e}); pass "
                          f"results/<experiment>/<run_id>") from None
    if record.get("status") != "complete":
        raise ExportError(f"{path} is not complete (status {record.get('status')!r}); finish the run first")
    return record


def export_run(run_dir, out_dir=None) -> Path:
    """Export the run in `run_dir` (module docstring) to `out_dir` (default <run_dir>/export); returns the folder.
    An existing export there is replaced; any other non-empty folder is refused."""
    from datasets import Dataset

    run_dir = Path(run_dir).resolve()
    out = Path(out_dir).resolve() if out_dir else run_dir / "export"
    record = load_run(run_dir)
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or _is_export(out))):
        raise ExportError(f"{out} exists and is not an xtf export; choose another folder (--out / export.dir)")
    dec = decisions.read(run_dir)
    try:
        tokenizer = models.load_tokenizer(record["weights"])
    except (OSError, ValueError) as e:
        raise ExportError(f"the run's tokenizer at {record['weights']} cannot be loaded ({e}); the export needs "
                          f"the run's weights folder") from None
    selection = _selection(run_dir, [len(r["input_ids"]) for r in dec.rows])
    columns, stats = build_columns(record, dec, tokenizer, selection)
    table = arrow_table(columns, stats)
    stats.update(export_version=EXPORT_VERSION, n_rows=len(dec.rows),
                 empty_rows=sum(k == 0.0 for k in columns["kept_fraction"]), columns=table.column_names,
                 run_dir=str(run_dir),
                 kept_tokens=int(sum(r["keep"].sum() for r in dec.rows)),
                 answer_tokens=int(sum(r["response_mask"].sum() for r in dec.rows)),
                 flagged={a: int(sum(r["noisy"][a].sum() for r in dec.rows)) for a in dec.attributes})
    dataset = Dataset(table, fingerprint=_fingerprint(table))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _quiet_datasets():
            dataset.save_to_disk(str(tmp / DATASET_DIR))
            dataset.to_parquet(str(tmp / PARQUET_FILE))
        (tmp / "README.md").write_text(export_card.card(record, stats), encoding="utf-8")
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="xtf-export", description="Export a finished run's decision as a dataset "
                                     "(datasets folder + Parquet + dataset card) that TRL and other trainers load.")
    parser.add_argument("run_dir", help="the run folder, results/<experiment>/<run_id>")
    parser.add_argument("--out", default=None, help="where to write it (default: <run_dir>/export)")
    args = parser.parse_args(argv)
    try:
        out = export_run(args.run_dir, args.out)
    except (ExportError, DecisionsError) as e:
        print(f"xtf-export: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(f"[xtf] exported: {out} (datasets.load_from_disk({out / DATASET_DIR}); {PARQUET_FILE}; README.md)")


if __name__ == "__main__":
    main()
