"""The dataset card (README.md) of an export (xtf.export): what produced the data, how it was filtered, what each
column holds, and how to train on it with TRL. Everything in it comes from the run's record and the exported
columns, never from the clock or the export folder's path, so the same run always gets the same card.
"""

from __future__ import annotations

import json
import shlex

from xtf import methods

MARKER = "xtf_run_id:"        # in the card's front matter: how xtf.export recognises a folder it may replace


def _command(argv: list) -> str:
    """The run's command line, as it was typed (python before a script)."""
    if not argv:
        return "(not recorded)"
    return shlex.join(["python", *argv] if str(argv[0]).endswith(".py") else argv)


def _model_ref(record: dict) -> str:
    """What a trainer loads: the Hub id, else the local weights the run used."""
    model = record["config"]["model"]
    return model.get("hub_id") or model.get("path") or record["weights"]


def _mode(record: dict) -> str:
    if record.get("mode") == "score_only":
        return "score only (nothing was fine-tuned or evaluated)"
    return "fine-tuned on this selection" if record.get("training") else "no fine-tuning (the base model)"


def _front_matter(record: dict, stats: dict) -> list[str]:
    # `configs` lets datasets.load_dataset(<folder>) read the Parquet file (the .arrow files beside it are
    # load_from_disk's).
    return ["---", "configs:", "- config_name: default", "  data_files: data.parquet", "tags:", "- xtf",
            "- token-level-filtering", f"{MARKER} {record['run_id']}",
            f"xtf_export_version: {stats['export_version']}", "---", ""]


def _attribute_lines(stats: dict, method: str) -> list[str]:
    answer = max(stats["answer_tokens"], 1)
    if not stats["flagged"]:
        return [f"`{method}` has no per-attribute flags: every masked span's reason is `{method}`.", ""]
    out = ["| attribute | flagged answer tokens | flagged share | kept share (not flagged by it) |",
           "|---|---|---|---|"]
    for attr, n in stats["flagged"].items():
        out.append(f"| {attr} | {n} | {n / answer:.4f} | {1 - n / answer:.4f} |")
    return [*out, "", "A token is masked when any attribute flags it; a span's `reason` lists the attributes that "
            "flagged its tokens.", ""]


def _selection_lines(record: dict, stats: dict) -> list[str]:
    """What the labels mean for the method: an online method selects during training; a method that masked
    nothing exports every answer token."""
    if record["method"] in methods.names("online"):
        shares = ", with `selected_share`: the share of training steps that selected each token" \
            if stats["selected_share"] else ""
        return [f"**`{record['method']}` selects its tokens during training** (per batch, from what the model being "
                f"trained does: xtf/online.py), so no offline mask exists: `labels` keep every answer token and the "
                f"scores it selects by are exported as the `score_*` columns{shares}. To apply its selection, train "
                f"with xtf (`python run.py method={record['method']} ...`).", ""]
    if stats["kept_tokens"] == stats["answer_tokens"]:
        return ["Nothing was masked: `labels` keep every answer token (an unfiltered baseline of the same rows).", ""]
    return []


def _detection_lines(record: dict) -> list[str]:
    overall = (record.get("detection") or {}).get("overall")
    if not overall:
        return []
    m = overall["mask"]
    return ["## Against the noise annotations", "",
            f"The rows carry noise annotations ({overall['n_noise_tokens']} noise tokens of {overall['n_tokens']} "
            f"answer tokens). The mask finds them with precision {m['precision']:.3f}, recall {m['recall']:.3f}, "
            f"F1 {m['f1']:.3f} (per type and per attribute: `detection` in the run's results.json).", ""]


def _column_lines(stats: dict) -> list[str]:
    cols = [
        ("id", "the example id"),
        ("input_ids, attention_mask", "the tokens (the run's tokenizer) and an all-ones mask"),
        ("labels", "input_ids where the token is kept, -100 elsewhere (prompt, context turns, masked tokens)"),
        ("completion_mask", "1 on kept tokens (TRL folds it into labels when a dataset has no labels column)"),
    ]
    if stats["chat"]:
        cols.append(("assistant_masks", "the same kept-token mask, under the name TRL reads for conversations"))
    cols += [("response_mask", "1 on answer tokens before masking")]
    cols += [(c, f"per token, the `{c[len('score_'):]}` score of the method (null off the answer)")
             for c in stats["score_columns"]]
    if stats["selected_share"]:
        cols.append(("selected_share", "per token, the share of training steps that selected it (online method)"))
    cols += [("masked_spans", "masked text for review: {turn, start, end, text, reason, token_start, token_end}; "
              "turn = message index (chat) or 0 (offsets into the response); start/end = character offsets into "
              "that turn's text"),
             ("kept_fraction", "kept / answer tokens of the row (0: the row is not trained on)")]
    out = [f"- `{name}`: {text}" for name, text in cols]
    if stats["original_fields"]:
        out.append(f"- original fields: {', '.join(f'`{c}`' for c in stats['original_fields'])}; a list that mixes "
                   "kinds of items (a noise span [start, end, type]) is stored as JSON text"
                   + (f" (stored as JSON text: {', '.join(stats['json_fields'])})" if stats["json_fields"] else "")
                   + (f" (renamed to original_<name>: {', '.join(stats['renamed_fields'])})"
                      if stats["renamed_fields"] else ""))
    return [*out, ""]


def card(record: dict, stats: dict) -> str:
    """The README.md of an export. `stats`: what xtf.export.export_run counted (rows, tokens, flags, columns)."""
    tok, cfg = record.get("tokenization") or {}, record["config"]
    git = (record.get("provenance") or {}).get("git") or {}
    rule = (record.get("mask") or {}).get("rule") or {}
    kept, answer = stats["kept_tokens"], stats["answer_tokens"]
    lines = [
        *_front_matter(record, stats),
        f"# {record['task']} training data filtered by `{record['method']}` (xtf run {record['run_id']})", "",
        "One row per training example, with the tokens, the labels that train only what the method kept, each "
        "score per token and the masked text for review. Made by xtf (token-level noise filtering for LLM "
        "fine-tuning).", "",
        "| | |", "|---|---|",
        f"| model | `{record['model']}` (`{_model_ref(record)}`); train with a model that has this tokenizer |",
        f"| method | `{record['method']}` |",
        f"| mode | {_mode(record)} |",
        f"| rows | {stats['n_rows']} of {tok.get('n_examples', '?')} examples ({tok.get('n_dropped_too_long', 0)} "
        f"dropped and {tok.get('n_truncated', 0)} cut at data.max_len={cfg['data']['max_len']}) |",
        f"| kept answer tokens | {kept} of {answer} ({kept / max(answer, 1):.4f}) |",
        f"| rows with no kept token | {stats['empty_rows']} (all labels -100: not trained on; TRL's SFTTrainer drops "
        f"them too) |",
        f"| run id | `{record['run_id']}` (experiment `{record['experiment']}`, seed {record['seed']}) |",
        f"| xtf | git {git.get('sha') or '?'}{_dirty(git)}, versions "
        f"{json.dumps(record.get('versions') or {}, sort_keys=True)} |", "",
        *_selection_lines(record, stats),
        "## Kept fraction per attribute", "", *_attribute_lines(stats, record["method"]),
        "## Thresholds", "", "What the mask rule used (results.json `mask.rule`):", "",
        "```json", json.dumps(rule, indent=1, sort_keys=True), "```", "",
        "<details><summary>the method's configuration</summary>", "", "```json",
        json.dumps(cfg["method"], sort_keys=True), "```", "", "</details>", "",
        *_detection_lines(record),
        "## Columns", "", "Per-token lists are aligned to `input_ids`.", "", *_column_lines(stats),
        "## How it was made", "", "```bash",
        f"{_command((record.get('provenance') or {}).get('argv') or [])}    # the run",
        f"python -m xtf.export {shlex.quote(stats['run_dir'])}    # this export", "```", "",
        "## Training on it with TRL", "", "```python",
        "from datasets import load_from_disk",
        "from trl import SFTConfig, SFTTrainer",
        f"SFTTrainer(model={_model_ref(record)!r}, train_dataset=load_from_disk(\"path/to/this/folder/dataset\"), "
        f"args=SFTConfig(output_dir=\"out\", max_length={cfg['data']['max_len']})).train()",
        "```", "",
        "On a machine without a GPU add `use_cpu=True, bf16=False` to `SFTConfig` (TRL trains in bf16 by default, "
        "which needs a GPU to be fast). "
        "TRL uses `labels` as they are (the loss is the mean over kept tokens, as xtf's `train.loss_norm=kept`). "
        "`datasets.load_dataset(\"path/to/this/folder\")` reads the same rows from `data.parquet` (this folder is "
        "laid out as a Hub dataset repository); so do pandas, polars and other Parquet readers.", "",
    ]
    return "\n".join(lines)


def _dirty(git: dict) -> str:
    """What the record's git state says beyond the commit: changed tracked files (their diff's hash) and/or files
    git does not track."""
    parts = [f"uncommitted changes, diff sha256 {git['diff_sha256'][:12]}"] if git.get("diff_sha256") else []
    if git.get("n_untracked"):
        parts.append(f"{git['n_untracked']} untracked files")
    if git.get("dirty") and not parts:
        parts.append("uncommitted changes")
    return f" ({'; '.join(parts)})" if parts else ""
