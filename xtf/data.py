"""Splitting and tokenisation: examples → `input_ids` + `response_mask`, cached on disk.

ALIGNMENT CONVENTION (the one place it is written down; scores, masks and labels all follow it):
    Every per-token array is aligned to `input_ids`: position t holds the value *for the token at t*, which
    the model predicts from tokens < t. `response_mask[t]` is True iff token t belongs to the answer (the
    training target, including the final EOS). Position 0 (BOS or the first prompt token) and every prompt
    token are never trainable. The shift between a position and the logits that predict it (logits[t-1]
    predict token t) happens in exactly one function: `xtf.train.token_nll`.

    Example, prompt "Q: 2+2?" → [bos, Q:, 2+2?], response " 4" → [ 4, eos]:
        t              0     1     2      3     4
        input_ids      bos   Q:    2+2?   ␣4    eos
        response_mask  0     0     0      1     1

PROTECTED TOKENS (`protected`, optional, aligned like response_mask; absent when none): answer tokens in a span the
task declares its answer format (`protected_spans(example)`, xtf.tasks.common: GSM8K's "#### N" line, the EOS, ...);
xtf.masking exempts them from every method under method.protect_answer. Chat examples (task=sft) have none.

TRUNCATION POLICY (`data.max_len`, `data.truncation`): an example longer than max_len is either cut at
max_len, which removes the *tail of the answer* and keeps the whole prompt ("right"), or dropped ("drop").
An example whose prompt alone fills max_len has no answer token left and is dropped. Both are counted in
the tokenisation statistics recorded with every result.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm.auto import tqdm

from xtf import cache, chat, tasks
from xtf.detection import span_labels as overlap_labels
from xtf.errors import ConfigError
from xtf.identity import stat_key
from xtf.tasks.common import DataError, TaskData, sha256_examples

log = logging.getLogger(__name__)

TOKENIZE_VERSION = 3  # bump when tokenize() changes its output for the same inputs (3: rows get `protected`)
ProtectRule = Optional[Callable[[dict], list]]


def carve_dev(train: list[dict], dev_size: int, split_seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Split `dev_size` examples off the training data (never the test split) for threshold selection.
    The dev set depends only on `split_seed`, not on the run seed, so every seed tunes on the same dev set."""
    if dev_size == 0:
        return train, []
    if dev_size >= len(train):
        raise ValueError(f"data.dev_size={dev_size} leaves no training data ({len(train)} training examples)")
    order = list(range(len(train)))
    random.Random(split_seed).shuffle(order)
    dev_idx = set(order[:dev_size])
    return [e for i, e in enumerate(train) if i not in dev_idx], [train[i] for i in sorted(dev_idx)]


@dataclasses.dataclass(frozen=True)
class Selection:
    """The examples one run uses, and where they came from."""
    task_data: TaskData
    train: list[dict]       # after carving dev and data.limit: what is tokenised, scored and trained on
    dev: list[dict]         # carved from the training data (data.dev_size)
    test: list[dict]        # the test split after data.eval_limit
    eval: list[dict]        # what is evaluated: test, or dev under eval.split=dev (after data.eval_limit)
    short: tuple[str, ...] = ()  # "data.limit=100000: 7473 rows available" for a limit above what the split holds

    def checksum(self) -> str:
        """sha256 of the rows actually used (training rows and evaluation rows): the data's part of a run id."""
        return cache.key_of({"train": sha256_examples(self.train), "eval": sha256_examples(self.eval)})


_selections: OrderedDict = OrderedDict()  # a few Selections per process: run_id and the pipeline share one load


def _files_stamp(where) -> list:
    """xtf.identity.stat_key (inode, size, mtime, ctime) of the file `where`, or of every file below the folder:
    part of the memo key, so a file changed in place is read again, even with its mtime set back."""
    if where and Path(where).is_file():  # data.train_file / data.eval_file
        return [stat_key(Path(where))]
    folder = where
    if not folder or not Path(folder).is_dir():
        return []
    return sorted(stat_key(p) for p in Path(folder).rglob("*") if p.is_file())


def select(cfg) -> Selection:
    """Load the task's data and pick the rows the run uses (load → carve dev → data.limit / data.eval_limit).
    Remembered per process by the config keys that decide it, so asking again (run ids) costs nothing.
    Raises DataError for an empty training set or an empty evaluation set."""
    key = cache.key_of({"task": dataclasses.asdict(cfg.task), "data": dataclasses.asdict(cfg.data),
                        "data_dir": cfg.paths.data_dir, "hub_mirror": cfg.paths.hub_mirror,
                        "split": cfg.eval.split, "eval": cfg.eval.enabled,
                        "files": [_files_stamp(f) for f in (cfg.paths.data_dir, cfg.paths.hub_mirror,
                                                            cfg.data.train_file, cfg.data.eval_file)]})
    if key in _selections:
        _selections.move_to_end(key)
        return _selections[key]
    task_data = tasks.TASKS[cfg.task.name].load(tasks.task_options(cfg), cfg.data, cfg.paths)
    skipped = f" ({task_data.skipped_rows} malformed rows skipped)" if task_data.skipped_rows else ""
    if not task_data.splits["train"]:
        raise DataError(f"the training split of task={cfg.task.name} is empty: {task_data.source} has no training "
                        f"example{skipped}")
    train, dev = carve_dev(task_data.splits["train"], cfg.data.dev_size)
    # Injected noise is noise in the TRAINING answers: a row carved off for dev is judged against its clean answer.
    train, dev = [without_clean_answer(e) for e in train[: cfg.data.limit]], [as_clean(e) for e in dev]
    test = task_data.splits["test"][: cfg.data.eval_limit]
    # Thresholds are chosen on dev (carved from training data); test is reported once, with the chosen values.
    evaluated = dev[: cfg.data.eval_limit] if cfg.eval.split == "dev" else test
    if cfg.eval.enabled and not evaluated:
        raise DataError(f"the {cfg.eval.split} split of task={cfg.task.name} is empty ({task_data.source}"
                        f"{skipped}); nothing to evaluate (eval.enabled=false skips evaluation)")
    found = Selection(task_data, train, dev, test, evaluated, limits_not_met(cfg, len(train), len(test)))
    for line in found.short:
        log.warning("%s (task=%s): the run uses them all", line, cfg.task.name)
    _selections[key] = found
    while len(_selections) > 4:
        _selections.popitem(last=False)
    return found


def limits_not_met(cfg, n_train: int, n_test: int) -> tuple[str, ...]:
    """A line per limit above the rows its split holds (after the dev carve), e.g. "data.limit=100000: 7473 training
    rows available": printed and recorded (the record's data.limits_not_met), never silently shortened."""
    out = []
    if cfg.data.limit is not None and n_train < cfg.data.limit:
        out.append(f"data.limit={cfg.data.limit}: {n_train} training rows available")
    if cfg.eval.split == "test" and cfg.data.eval_limit is not None and n_test < cfg.data.eval_limit:
        out.append(f"data.eval_limit={cfg.data.eval_limit}: {n_test} test rows available")
    return tuple(out)


def as_clean(example: dict) -> dict:
    """The example with its clean answer: a task that injects noise into a training example keeps the clean
    response beside it ("clean_response") and marks the noise ("noise_spans"); a clean example is returned as is."""
    if "clean_response" not in example:
        return example
    clean = {k: v for k, v in example.items() if k not in ("clean_response", "noise_spans")}
    clean["response"] = example["clean_response"]
    return clean


def without_clean_answer(example: dict) -> dict:
    """A training example as it is trained on: without the clean response a noisy example carries for dev use (so
    training rows, their tokenisation and their checksums are those of the noisy answer alone)."""
    if "clean_response" not in example:
        return example
    return {k: v for k, v in example.items() if k != "clean_response"}


def duplicates(examples: list[dict]) -> list[str]:
    """"<id> repeats <first id>" for each example whose prompt and response both equal an earlier one's."""
    first: dict[tuple, str] = {}
    out = []
    for ex in examples:
        key = (ex["prompt"], ex["response"])
        if key in first:
            out.append(f"{ex['id']} repeats {first[key]}")
        else:
            first[key] = ex["id"]
    return out


def record_section(sel: Selection, eval_split: str) -> dict:
    """The record's "data" entry: source, file checksums, the checksum of the rows used, skipped malformed rows
    (file:line and why) and duplicated training rows (counted and named, not removed: removing them would change
    what the run trains on)."""
    td = sel.task_data
    repeated = duplicates(sel.train)
    if repeated:
        log.warning("%d duplicated training rows (same prompt and response), e.g. %s", len(repeated), repeated[:3])
    return {
        "source": td.source, "checksums": td.checksums, "rows_checksum": sel.checksum(),
        "skipped_rows": td.skipped_rows, "skipped": td.skipped, "notes": td.notes,
        "duplicate_train_rows": len(repeated), "duplicates": repeated[:100],
        "n_train": len(sel.train), "n_dev": len(sel.dev), "n_test": len(sel.test),
        "eval_split": eval_split, "n_eval": len(sel.eval), "limits_not_met": list(sel.short),
    }


def render_prompt(tokenizer, prompt: str, chat_template: bool) -> str:
    """The prompt text the model sees: the tokenizer's chat template (user turn + generation prompt), or raw."""
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("model.chat_template=true but the tokenizer has no chat template; set it to false")
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def prompt_ids(tokenizer, prompt: str, chat_template: bool) -> list[int]:
    """Token ids of the rendered prompt, with BOS exactly when the tokenizer adds one to plain text."""
    text = render_prompt(tokenizer, prompt, chat_template)
    # A chat template usually writes BOS itself; don't add a second one.
    add_special = not (chat_template and tokenizer.bos_token and text.startswith(tokenizer.bos_token))
    return tokenizer(text, add_special_tokens=add_special)["input_ids"]


def tokenize_example(tokenizer, example: dict, max_len: int, chat_template: bool) -> tuple[list[int], list[bool], int]:
    """(input_ids, response_mask, n_answer_tokens_before_truncation) for one example. Prompt and response are
    tokenised separately and concatenated, so the prompt/answer boundary is exact whatever the tokenizer. A chat
    example (`messages`, task=sft) is cut into turns the same way (xtf.chat): every assistant turn is an answer."""
    if "messages" in example:
        ids, mask, _ = chat.encode(tokenizer, example["messages"], chat_template)
        return ids[:max_len], mask[:max_len], sum(mask)
    p_ids = prompt_ids(tokenizer, example["prompt"], chat_template)
    r_ids = tokenizer(example["response"], add_special_tokens=False)["input_ids"]
    if example.get("eos", True):  # an example may opt out (GSM8K format=released: the released code has no EOS)
        r_ids = r_ids + [tokenizer.eos_token_id]
    ids = p_ids + r_ids
    mask = [False] * len(p_ids) + [True] * len(r_ids)
    mask[0] = False  # position 0 has no prefix to be predicted from
    return ids[:max_len], mask[:max_len], len(r_ids)


def answer_char_spans(tokenizer, example: dict, chat_template: bool) -> list[Optional[tuple[int, int, int]]]:
    """Where each answer token's text lies, aligned to the UNTRUNCATED input_ids of `tokenize_example`: (turn, start,
    end) at every answer position, None elsewhere. turn = index into example["messages"] for a chat example, 0 for a
    prompt/response example (offsets into example["response"]); start == end for an EOS / end-of-turn token, which
    has no text. Needs a fast tokenizer (offset mapping)."""
    if "messages" in example:
        return chat.encode(tokenizer, example["messages"], chat_template)[2]
    ids, mask, n_answer = tokenize_example(tokenizer, example, 10**9, chat_template)
    enc = tokenizer(example["response"], add_special_tokens=False, return_offsets_mapping=True)
    spans: list = [(0, int(a), int(b)) for a, b in enc["offset_mapping"]]
    if len(spans) < n_answer:  # the appended EOS
        spans.append((0, len(example["response"]), len(example["response"])))
    out = [None] * (len(ids) - n_answer) + spans
    return [s if m else None for s, m in zip(out, mask)]


def chat_truth(example: dict, spans: list) -> dict[str, list[bool]]:
    """Ground-truth noise of a chat example, {type: [bool]} aligned to input_ids (`spans`: xtf.chat.encode's): an
    assistant turn may carry `noise_spans` [[start, end, type], ...] (character offsets into its content); a token is
    noise of a type when its characters overlap a span of that type (xtf.detection.span_labels)."""
    kinds = sorted({s[2] for m in example["messages"] for s in m.get("noise_spans", [])})
    truth = {k: [False] * len(spans) for k in kinds}
    for i, m in enumerate(example["messages"]):
        if not m.get("noise_spans"):
            continue
        positions = [t for t, s in enumerate(spans) if s is not None and s[0] == i and s[1] < s[2]]
        labels = overlap_labels([spans[t][1:] for t in positions], m["noise_spans"], kinds)
        for k, flags in labels.items():
            for t, flag in zip(positions, flags.tolist()):
                truth[k][t] = truth[k][t] or bool(flag)
    return truth


def span_labels(tokenizer, response: str, spans: list, n_tokens: int) -> dict[str, list[bool]]:
    """Ground-truth noise per response token: {type: [bool] * n_tokens}, from the character spans and the
    tokenizer's offsets (overlap rule: xtf.detection.span_labels). Needs a fast tokenizer."""
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) != n_tokens:
        raise AssertionError("offset tokenisation differs from the training tokenisation")
    kinds = sorted({kind for _, _, kind in spans})
    return {k: v.tolist() for k, v in overlap_labels(enc["offset_mapping"], spans, kinds).items()}


def protected_flags(tokenizer, response: str, spans: list, n_answer: int) -> list[bool]:
    """Per answer token (the response's, then the appended EOS if any): True where its text overlaps a protected span
    [start, end); a token without text (the EOS: (L, L)) is in a span with start <= L <= end: (L, L) protects it."""
    offsets = [(int(a), int(b)) for a, b in
               tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    offsets += [(len(response), len(response))] * (n_answer - len(offsets))  # the appended EOS
    if len(offsets) != n_answer:
        raise AssertionError("offset tokenisation differs from the training tokenisation")
    return [any((s < end and e > start) or (s == e and start <= s <= end) for start, end in spans)
            for s, e in offsets]


def tokenize(tokenizer, examples: list[dict], max_len: int, truncation: str, chat_template: bool,
             locations: Optional[dict] = None, protect: ProtectRule = None) -> tuple[list[dict], dict]:
    """Tokenise examples into rows {id, input_ids, response_mask[, truth]}; returns (rows, stats). See the module
    docstring for the alignment and truncation conventions. Examples with `noise_spans` (injected noise or a user's
    annotations: character offsets into `response`, or into an assistant turn's content for a chat example) get
    `truth`: {noise type: [bool]} aligned to input_ids. truncation="error": an example longer than max_len raises
    DataError naming it (`locations`: example id → "file:line", from TaskData.locations). `protect`: the task's
    protected_spans; rows with a protected answer token get `protected` (module docstring)."""
    rows, n_truncated, n_dropped, answer_tokens_cut = [], 0, 0, 0
    for ex in tqdm(examples, desc="tokenize", unit="ex", disable=len(examples) < 2000):
        truth = None
        if "messages" in ex:  # one rendering gives the tokens and where each answer token's text lies
            ids, mask, spans = chat.encode(tokenizer, ex["messages"], chat_template)
            n_answer_full = sum(mask)
            truth = chat_truth(ex, spans) if any("noise_spans" in m for m in ex["messages"]) else None
        else:
            ids, mask, n_answer_full = tokenize_example(tokenizer, ex, 10**9, chat_template)
        if "noise_spans" in ex and "messages" not in ex:
            n_prompt = len(ids) - n_answer_full
            labels = span_labels(tokenizer, ex["response"], ex["noise_spans"], n_answer_full - 1)  # EOS excluded
            truth = {k: [False] * n_prompt + v + [False] for k, v in labels.items()}
        spans = protect(ex) if protect is not None and "messages" not in ex else []
        protected = [m and f for m, f in zip(mask, [False] * (len(ids) - n_answer_full) + protected_flags(
            tokenizer, ex["response"], spans, n_answer_full))] if spans else None
        if len(ids) > max_len and truncation == "error":
            where = (locations or {}).get(ex["id"], f"example {ex['id']}")
            raise DataError(f"{where}: the example is {len(ids)} tokens long ({n_answer_full} of them answer), over "
                            f"data.max_len={max_len}. Raise data.max_len, or set data.truncation=right (cut the "
                            f"answer's tail) or data.truncation=drop (skip such examples); both are counted in the "
                            f"record")
        if len(ids) > max_len:
            if truncation == "drop" or not any(mask[:max_len]):  # the prompt alone fills max_len
                n_dropped += 1
                continue
            n_truncated += 1
            answer_tokens_cut += sum(mask[max_len:])
            ids, mask = ids[:max_len], mask[:max_len]
        row = {"id": ex["id"], "input_ids": ids, "response_mask": mask}
        if truth is not None:  # a type with no token left (none injected, or truncated away) is omitted
            row["truth"] = {k: v[: len(ids)] for k, v in truth.items() if any(v[: len(ids)])}
        if protected is not None and any(protected[: len(ids)]):
            row["protected"] = protected[: len(ids)]
        rows.append(row)
    stats = {
        "n_examples": len(examples),
        "n_rows": len(rows),
        "n_truncated": n_truncated,
        "n_dropped_too_long": n_dropped,
        "answer_tokens_cut": answer_tokens_cut,
        "answer_tokens": int(sum(sum(r["response_mask"]) for r in rows)),
        "protected_tokens": int(sum(sum(r.get("protected", ())) for r in rows)),
        "tokens": int(sum(len(r["input_ids"]) for r in rows)),
    }
    return rows, stats


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's behaviour-defining state (vocab, merges, specials, chat template)."""
    state = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else repr(tokenizer)
    extra = json.dumps([tokenizer.bos_token, tokenizer.eos_token, getattr(tokenizer, "chat_template", None)])
    return cache.key_of({"state": state, "extra": extra})


def tokenize_cached(tokenizer, examples: list[dict], max_len: int, truncation: str, chat_template: bool,
                    cache_dir: str, split: str, locations: Optional[dict] = None, protect: ProtectRule = None
                    ) -> tuple[list[dict], dict]:
    """`tokenize` behind the content-addressed cache (key: tokenizer, examples, max_len, policy, spans, version)."""
    spec = {
        "version": TOKENIZE_VERSION, "tokenizer": tokenizer_fingerprint(tokenizer), "split": split,
        "examples": sha256_examples(examples), "max_len": max_len, "truncation": truncation,
        "chat_template": chat_template,
        # the spans themselves (a regex pass over the responses): a changed rule is a new key, no version to bump
        "protected": None if protect is None else cache.key_of(
            {"spans": [[] if "messages" in ex else protect(ex) for ex in examples]}),
    }

    def build(tmp: Path) -> None:
        rows, stats = tokenize(tokenizer, examples, max_len, truncation, chat_template, locations, protect)
        lengths = np.array([len(r["input_ids"]) for r in rows], dtype=np.int64)
        ids = np.array([t for r in rows for t in r["input_ids"]], dtype=np.int64)
        mask = np.array([m for r in rows for m in r["response_mask"]], dtype=bool)
        # Ground truth (synthetic noise): one flat bool array per noise type, False where a row has none.
        kinds = sorted({k for r in rows for k in r.get("truth", {})})
        truth = {f"truth__{k}": np.array([f for r in rows for f in r.get("truth", {}).get(k, [False] * len(
            r["input_ids"]))], dtype=bool) for k in kinds}
        protected = np.array([f for r in rows for f in r.get("protected", [False] * len(r["input_ids"]))], dtype=bool)
        np.savez(tmp / "tokens.npz", lengths=lengths, input_ids=ids, response_mask=mask, protected=protected, **truth)
        has_truth = [int("truth" in r) for r in rows]
        (tmp / "meta.json").write_text(json.dumps({"ids": [r["id"] for r in rows], "stats": stats,
                                                  "truth_kinds": kinds, "has_truth": has_truth,
                                                  "has_protected": [int("protected" in r) for r in rows]}))

    folder = cache.cached_dir(cache_dir, "tokenized", spec, build)
    with np.load(folder / "tokens.npz") as npz:  # each array read once (NpzFile re-reads it on every access)
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads((folder / "meta.json").read_text())
    stats = meta["stats"]
    if examples and not stats["n_rows"]:  # say why, before a model is loaded (not "every sample is fully masked")
        raise ConfigError(f"no {split} example fits in data.max_len={max_len}: all {stats['n_examples']} were dropped "
                          f"(the prompt alone fills max_len, or data.truncation=drop cut every long example); "
                          f"raise data.max_len")
    offsets = np.concatenate([[0], np.cumsum(arrays["lengths"])])
    # One Python int per token id, shared by every row: .tolist() would make a new 28-byte int per token (ids > 256),
    # 3.5x the 8-byte list slot itself, and the rows would outgrow the scores on a 100k-row set.
    ids, mask = arrays["input_ids"], arrays["response_mask"]
    shared = np.arange(int(ids.max(initial=-1)) + 1).astype(object)
    rows = []
    for i, (rid, a, b) in enumerate(zip(meta["ids"], offsets[:-1], offsets[1:])):
        row = {"id": rid, "input_ids": shared[ids[a:b]].tolist(), "response_mask": mask[a:b].tolist()}
        if meta["has_truth"][i]:
            row["truth"] = {k: arrays[f"truth__{k}"][a:b].tolist() for k in meta["truth_kinds"]
                            if arrays[f"truth__{k}"][a:b].any()}
        if meta["has_protected"][i]:
            row["protected"] = arrays["protected"][a:b].tolist()
        rows.append(row)
    return rows, {**meta["stats"], "cache_key": folder.name}
