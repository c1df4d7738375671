"""Your own SFT data as a task: prompt/response pairs, Alpaca rows or chat conversations, from a file, a `datasets`
folder or the Hub (xtf/tasks/sft_files.py), with no code.

    xtf task=sft data.train_file=my.jsonl method=xtf task.options.expert_words=[dose,mg,patient]
    xtf task=sft data.train_file=chat.jsonl data.eval_file=held_out.jsonl task.options.format=chat

Shapes (task.options.format; "auto" picks from the first row: `messages` → chat, `instruction` + `output` →
alpaca, else prompt_response):
    prompt_response   {<prompt_field>: str, <response_field>: str}               (field names configurable)
    alpaca            {"instruction": str, "input": str (may be empty or absent), "output": str}:
                      prompt = instruction, + "\\n\\n" + input when there is one; response = output
    chat              {<messages_field>: [{"role": "system" | "user" | "assistant", "content": str}, ...]}:
                      an optional system turn, then user / assistant alternating, ending with an assistant turn;
                      EVERY assistant turn is scored and trained, the rest is context (xtf/chat.py)
Every shape becomes a conversation (a prompt/response row is one user turn and one assistant turn), rendered
through the model's chat template (model.chat_template=true) or the plain template of xtf/chat.py.

Noise annotations (optional; detection figures as in the noise benchmark): a prompt/response or alpaca row may
carry <noise_field> = [[start, end, type], ...], character offsets into the response; a chat row's assistant
turn may carry "noise_spans" the same way, into its content.

Rows: the id of a row is "<split>:<n>", n its line (JSONL, CSV) or row index (JSON, Parquet, datasets, Hub);
TaskData.locations maps ids to "file:line" for messages. A bad row (missing field, empty or non-string content,
roles out of order, no assistant turn, a bad noise span) fails naming file, line and field, or is skipped and
counted under data.on_bad_row=skip. A row longer than data.max_len fails likewise (data.truncation=error, this
task's default), or is cut (right) or dropped (drop) and counted.

Evaluation: the mean NLL of the held-out reference responses (answer NLL, every assistant turn), from
data.eval_file, or task.options.eval_fraction of the training rows held out with task.options.split_seed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from xtf import chat
from xtf.config import DataConfig, PathsConfig
from xtf.errors import ConfigError
from xtf.tasks.common import BAD_LINE, DataError, RowChecker, TaskData
from xtf.tasks.sft_files import describe_problem, read_rows

EXTRACT_VERSION = 1          # no answer extraction: evaluation is the answer NLL
EXTRACTORS: dict = {}
EXPERT_WORDS: tuple[str, ...] = ()   # yours: task.options.expert_words (XTF's task relevance needs them)
EVALUATION = "answer_nll"
READS_DATA_FILES = True      # data.train_file / data.eval_file (xtf.validate refuses them for the other tasks)
SHAPES = ("prompt_response", "alpaca", "chat")


@dataclass
class Options:
    format: Literal["auto", "prompt_response", "alpaca", "chat"] = "auto"
    prompt_field: str = "prompt"            # prompt_response: the prompt's column
    response_field: str = "response"        # prompt_response: the response's column
    messages_field: str = "messages"        # chat: the conversation's column
    noise_field: str = "noise_spans"        # optional noise annotations: [[start, end, type], ...]
    # Held-out rows for evaluation when there is no data.eval_file: this fraction of the training rows, chosen
    # with split_seed (the same rows for every run seed). 0: no held-out rows (then eval.enabled=false).
    eval_fraction: float = 0.0
    split_seed: int = 0
    train_split: str = "train"              # the split read from a DatasetDict folder or a Hub dataset
    eval_split: str = "test"                # ... and for data.eval_file
    hub_config: Optional[str] = None        # a Hub dataset's config name
    # Your domain's words (XTF task relevance, method.attributes with tr): the domain vector is the mean hidden
    # state of these words, each run alone (the maths tasks use 1..10, + - * / = and "maths").
    expert_words: tuple[str, ...] = ()
    # Optional lm-eval tasks run on the fine-tuned model beside the answer NLL (xtf/lmeval_named.py): lm-eval's
    # task names, and a folder of your own task YAMLs (lm-eval's include_path).
    lm_eval_tasks: tuple[str, ...] = ()
    lm_eval_include: Optional[str] = None


def expert_words(opts: Options) -> tuple[str, ...]:
    return tuple(opts.expert_words)


def check_options(opts: Options) -> None:
    if not 0.0 <= opts.eval_fraction < 1.0:
        raise ConfigError(f"task.options.eval_fraction={opts.eval_fraction} must be in [0, 1)")
    for key in ("prompt_field", "response_field", "messages_field", "noise_field"):
        if not getattr(opts, key).strip():
            raise ConfigError(f"task.options.{key} must name a field, got an empty string")
    if opts.lm_eval_include and not Path(opts.lm_eval_include).is_dir():
        raise ConfigError(f"task.options.lm_eval_include={opts.lm_eval_include} is not a folder (of lm-eval task "
                          f"YAMLs)")
    if opts.lm_eval_include and not opts.lm_eval_tasks:
        raise ConfigError("task.options.lm_eval_include is read only with task.options.lm_eval_tasks=[...]: name the "
                          "tasks to run")
    if opts.lm_eval_tasks:  # lm-eval indexes its tasks (10-20 s): still before any work, not after training
        from lm_eval.tasks import TaskManager

        manager = TaskManager(include_path=opts.lm_eval_include) if opts.lm_eval_include else TaskManager()
        unknown = [n for n in opts.lm_eval_tasks if n not in manager.all_tasks]
        if unknown:
            raise ConfigError(f"task.options.lm_eval_tasks: lm-eval knows no task {unknown}"
                              f"{' (nor does ' + opts.lm_eval_include + ')' if opts.lm_eval_include else ''}; "
                              f"`lm-eval ls tasks` lists them")
    if any(not w.strip() for w in opts.expert_words):
        raise ConfigError(f"task.options.expert_words={list(opts.expert_words)} has an empty word")


def check_data(data: DataConfig) -> None:
    """Before any work: data.train_file is set and readable, data.eval_file too when set."""
    if not data.train_file:
        raise ConfigError("task=sft reads your data: set data.train_file=<file.jsonl|.json|.csv|.parquet, a "
                          "save_to_disk folder, or hub:<dataset id>> (README: Your own data)")
    for key in ("train_file", "eval_file"):
        source = getattr(data, key)
        problem = source and describe_problem(source)
        if problem:
            raise ConfigError(f"data.{key}={source} {problem}")


def detect_shape(row: Any, opts: Options) -> str:
    if opts.format != "auto":
        return opts.format
    if isinstance(row, dict) and opts.messages_field in row:
        return "chat"
    if isinstance(row, dict) and "instruction" in row and "output" in row:
        return "alpaca"
    return "prompt_response"


def _pair(row: dict, shape: str, opts: Options, where: str, checker: RowChecker) -> Optional[tuple[str, str]]:
    """(prompt, response) of a prompt_response or alpaca row, or None if it is bad (and skipped)."""
    if shape == "alpaca":
        extra = row.get("input", "")
        if not checker.ok(row, {"instruction": str, "output": str}, where):
            return None
        if extra is None:
            extra = ""
        if not isinstance(extra, str):
            checker.fail(where, f"field 'input' must be str, got {type(extra).__name__}")
            return None
        prompt = row["instruction"] + ("\n\n" + extra if extra.strip() else "")
        return prompt, row["output"]
    if not checker.ok(row, {opts.prompt_field: str, opts.response_field: str}, where):
        return None
    return row[opts.prompt_field], row[opts.response_field]


def _spans_problem(spans: Any, text: str) -> Optional[str]:
    if not isinstance(spans, list):
        return f"must be a list of [start, end, type], got {type(spans).__name__}"
    for j, s in enumerate(spans):
        ok = (isinstance(s, (list, tuple)) and len(s) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                   for v in s[:2]) and isinstance(s[2], str))
        if not ok or not s[2].strip():
            return f"span {j} must be [start, end, type] with integer offsets and a non-empty type, got {s!r}"
        if not 0 <= s[0] < s[1] <= len(text):
            return f"span {j} = {list(s)} is outside the text (offsets must satisfy 0 <= start < end <= {len(text)})"
    return None


def to_messages(row: Any, shape: str, opts: Options, where: str, checker: RowChecker) -> Optional[list[dict]]:
    """The row as a conversation (module docstring), or None if it is bad (and the policy skips)."""
    if row is BAD_LINE:
        return None
    if not isinstance(row, dict):
        checker.fail(where, f"expected a JSON object, got {type(row).__name__}")
        return None
    if shape == "chat":
        if opts.messages_field not in row:
            checker.fail(where, f"missing field '{opts.messages_field}' (chat rows hold a list of {{role, content}})")
            return None
        messages = row[opts.messages_field]
        problem = chat.check_messages(messages)
        if problem:
            checker.fail(where, f"field '{opts.messages_field}': {problem}")
            return None
        for i, m in enumerate(messages):
            if "noise_spans" in m:
                bad = "only assistant turns carry noise_spans" if m["role"] != "assistant" else \
                    _spans_problem(m["noise_spans"], m["content"])
                if bad:
                    checker.fail(where, f"field '{opts.messages_field}', turn {i}, 'noise_spans': {bad}")
                    return None
        return [{k: m[k] for k in ("role", "content", "noise_spans") if k in m} for m in messages]
    pair = _pair(row, shape, opts, where, checker)
    if pair is None:
        return None
    answer = {"role": "assistant", "content": pair[1]}
    if opts.noise_field in row and row[opts.noise_field] is not None:
        bad = _spans_problem(row[opts.noise_field], pair[1])
        if bad:
            checker.fail(where, f"field '{opts.noise_field}': {bad}")
            return None
        answer["noise_spans"] = [list(s) for s in row[opts.noise_field]]
    return [{"role": "user", "content": pair[0]}, answer]


def example(messages: list[dict], row: dict, ex_id: str) -> dict:
    """The example: the conversation, a readable prompt / response (the text before the first answer, the answers),
    and the user's row as read (its JSON form: exported as "the original fields")."""
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return {"id": ex_id, "messages": messages,
            "prompt": "\n\n".join(m["content"] for m in messages[:first]),
            "response": "\n\n".join(m["content"] for m in messages if m["role"] == "assistant"),
            "answer": "", "row": json.loads(json.dumps(row, ensure_ascii=False, default=str))}


def _read(source: str, split: str, opts: Options, paths: PathsConfig, checker: RowChecker, td: TaskData) -> list:
    rows, label, checksum = read_rows(source, opts.train_split if split == "train" else opts.eval_split,
                                                opts.hub_config, paths.hub_mirror, checker)
    td.checksums[f"{split}:{label}"] = checksum
    td.source = td.source or label
    shape, examples = None, []
    for n, (where, row) in enumerate(rows):
        number = where.rsplit(":", 1)[-1] if where.rsplit(":", 1)[-1].isdigit() else str(n)
        shape = shape or (detect_shape(row, opts) if row is not BAD_LINE else None)
        messages = to_messages(row, shape or "prompt_response", opts, where, checker)
        if messages is not None:
            ex = example(messages, row, f"{split}:{number}")
            td.locations[ex["id"]] = where
            examples.append(ex)
    if shape:
        td.notes.append(f"{split}: {label}, shape {shape}, {len(examples)} rows")
    return examples


def load(opts: Options, data: DataConfig, paths: PathsConfig) -> TaskData:
    checker = RowChecker(data.on_bad_row)
    td = TaskData(splits={}, source="")
    train = _read(data.train_file, "train", opts, paths, checker, td)
    if data.eval_file:
        test = _read(data.eval_file, "test", opts, paths, checker, td)
    elif opts.eval_fraction > 0:
        order = list(range(len(train)))
        random.Random(opts.split_seed).shuffle(order)
        held = set(order[: max(1, round(opts.eval_fraction * len(train)))])
        if len(held) >= len(train):
            raise DataError(f"task.options.eval_fraction={opts.eval_fraction} leaves no training row "
                            f"({len(train)} rows)")
        test = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
        td.notes.append(f"test: {len(test)} training rows held out (eval_fraction={opts.eval_fraction}, "
                        f"split_seed={opts.split_seed})")
    else:
        test = []
    td.splits = {"train": train, "test": test}
    td.skipped_rows, td.skipped = checker.skipped, checker.where_skipped
    return td
