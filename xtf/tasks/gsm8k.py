r"""GSM8K: grade-school maths word problems (7,473 train / 1,319 test, official splits).

Sources: `<data_dir>/gsm8k/{train,test}.jsonl` (the files of openai/grade-school-math), else the Hub dataset
"openai/gsm8k", config "main". Both have the fields `question` and `answer`; `answer` is a worked rationale with
`<<expr=val>>` calculator annotations, ending in a line `#### <final answer>`.

Example (task.options.format=template, the default):
    prompt    "Question: <question>\nAnswer:"
    response  " <rationale without calculator annotations>" (+ "\n#### 72" under target=rationale_answer) + EOS
    answer    "72"  (the number after ####, commas removed)
task.options.format=released — the training text of the released XTF code (XTF_script.format_tr_gsm8k):
    prompt    "<question>" as in the file, no template;  response  "<rationale>" = answer.split("####")[0].strip(),
    <<calc>> annotations kept, no "#### N" line, no EOS (`target` is ignored).

Controlled noise (task.options.noise_<kind>_rate, xtf/noise.py): the TRAINING responses of format=template get
injected noise lines / wrong step results between and in the rationale's newline-separated steps ("#### N" stays
last and intact) and "noise_spans" [[start, end, kind]] into `response`; test answers stay clean; all rates 0
(the default) leave every example, checksum and run id as they were.

Answer extraction (EXTRACTORS; eval/xtf_gsm8k.yaml runs the same rules inside lm-eval):
    strict    lm-eval's built-in gsm8k "strict-match": regex "#### (\-?[0-9\.\,]+)", first match, then the
              exact_match normalisation of its gsm8k task (lower case; remove ",", "$", "(?s).*#### ", "\.$").
              "####72", "#### $72" → no answer; "#### 72.00" → "72.00" ≠ "72".
    flexible  the released XTF code's rule (utils/dataset_eval.py): the LAST r"\d+(\.\d+)?" of prompt + output
              — no minus sign ("-5" → "5"), "1,000" splits into "1" and "000" → "000"; compared as numbers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Optional

from xtf import noise
from xtf.config import ID_OMIT_DEFAULT, DataConfig, PathsConfig
from xtf.errors import ConfigError
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

HUB_ID = "openai/gsm8k"
HUB_CONFIG = "main"
EXTRACT_VERSION = 2  # 2: strict / flexible = lm-eval gsm8k's filters, + released
# The XTF paper's maths domain words.
EXPERT_WORDS: tuple[str, ...] = tuple(str(i) for i in range(1, 11)) + ("+", "-", "*", "/", "=", "maths")


@dataclass
class Options:
    # What the model is trained to produce after the prompt:
    #   "rationale_answer": the worked rationale followed by the final "#### N" line (the GSM8K convention; the
    #                       "strict" extractor then has something to find at evaluation time);
    #   "rationale":        the rationale only, without the "#### N" line (what the paper's released code trains on;
    #                       evaluate it with the "flexible" extractor).
    # Both drop the <<expr=val>> calculator annotations, which are not natural text.
    target: Literal["rationale_answer", "rationale"] = "rationale_answer"
    # "template": the prompt/response above; "released": the released XTF code's text (module docstring).
    format: Literal["template", "released"] = "template"
    # Controlled noise in the TRAINING answers (xtf/noise.py; ground truth for noise detection, method=oracle):
    # probability per step line (corruption) or per gap between lines (the others); 0.0 = clean. The noise of
    # row i comes from its own streams (noise_seed, i, kind). At their defaults these keys stay out of the run id
    # (xtf.config.options_dict), so clean runs keep the ids they had before noise existed. format=template only.
    noise_filler_rate: float = field(default=0.0, metadata=ID_OMIT_DEFAULT)      # chat filler sentence
    noise_offtopic_rate: float = field(default=0.0, metadata=ID_OMIT_DEFAULT)    # off-topic sentence
    noise_corruption_rate: float = field(default=0.0, metadata=ID_OMIT_DEFAULT)  # wrong intermediate result
    noise_duplicate_rate: float = field(default=0.0, metadata=ID_OMIT_DEFAULT)   # the previous step repeated
    noise_leak_rate: float = field(default=0.0, metadata=ID_OMIT_DEFAULT)        # "Answer: X" of another problem
    noise_seed: int = field(default=0, metadata=ID_OMIT_DEFAULT)


def noise_rates(opts: Options) -> dict[str, float]:
    """{noise kind: rate} from the noise_<kind>_rate options (xtf.noise.NOISE_KINDS)."""
    return {kind: getattr(opts, f"noise_{kind}_rate") for kind in noise.NOISE_KINDS}


def check_options(opts: Options) -> None:
    for kind, rate in noise_rates(opts).items():
        if not 0.0 <= rate <= 1.0:   # also rejects NaN
            raise ConfigError(f"task.options.noise_{kind}_rate={rate} is out of range; must be in [0, 1]")
    if opts.format == "released" and any(noise_rates(opts).values()):
        raise ConfigError("task.options.noise_*_rate needs task.options.format=template (noise is injected into "
                          "the template's newline-separated steps; format=released keeps <<calc>> annotations)")


_CALC = re.compile(r"<<[^>]*>>")
# lm-eval 0.4's built-in gsm8k task (lm_eval/tasks/gsm8k/gsm8k.yaml): its two filters and the normalisation
# its exact_match metric applies to prediction and reference alike (regexes_to_ignore in order, then lower case).
LMEVAL_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")                 # "strict-match", first match
LMEVAL_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")          # "flexible-extract", last match
LMEVAL_IGNORE = (",", "\\$", "(?s).*#### ", "\\.$")
# The released XTF code's rule (utils/dataset_eval.py evaluate_gsm8k.extract_answer).
RELEASED_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def lmeval_normalise(s: str) -> str:
    """lm-eval gsm8k's exact_match normalisation: remove each regex of LMEVAL_IGNORE in turn, lower case."""
    for pattern in LMEVAL_IGNORE:
        s = re.sub(pattern, "", s)
    return s.lower()


def extract_strict(text: str) -> Optional[str]:
    """lm-eval's strict-match: the first "#### <[-0-9.,]+>" (exactly one space after ####), normalised as its
    metric does; None when absent. "####72" and "#### $72" → None; "#### 72.00" → "72.00" (≠ "72")."""
    m = LMEVAL_STRICT.search(text)
    return lmeval_normalise(m.group(1).strip()) if m else None


def extract_flexible(text: str) -> Optional[str]:
    """lm-eval's flexible-extract: the last match of (-?[$0-9.,]{2,})|(-?[0-9]+), normalised as its metric does
    ("$1,000." → "1000"; "3.50" stays "3.50")."""
    found = LMEVAL_FLEXIBLE.findall(text)
    if not found:
        return None
    last = [g for g in found[-1] if g]
    return lmeval_normalise(last[0].strip()) if last else None


def extract_released(text: str) -> Optional[str]:
    r"""The released XTF code's rule: the LAST r"\d+(?:\.\d+)?" in the text, compared as a number (float ==
    float): no minus sign ("-5" → "5"), "1,000" splits ("000" → "0"). The released code searches the decoded
    prompt + output; `released_filter` (eval/xtf_gsm8k.yaml) does the same, this function sees what it is given."""
    found = RELEASED_NUMBER.findall(text)
    if not found:
        return None
    f = float(found[-1])
    return str(int(f)) if f.is_integer() else repr(f)


def normalize_number(s: str) -> str:
    """"$1,234.50" → "1234.5", "72.0" → "72", "12." → "12": one spelling per value (the gold answers)."""
    s = s.strip().replace(",", "").replace("$", "").rstrip(".")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return "0" if s == "-0" else s


# strict is the primary metric. Gold answers ("72", from the "#### " line, commas removed) are unchanged by
# lmeval_normalise and by xtf.evaluate.normalise.
EXTRACTORS: dict[str, Callable[[str], Optional[str]]] = {
    "strict": extract_strict, "flexible": extract_flexible, "released": extract_released}


def released_filter(resps, docs):
    """lm-eval filter (eval/xtf_gsm8k.yaml): the released rule on prompt + generation, as the released code
    decodes both; "[invalid]" when no number is found."""
    return [[extract_released(doc["prompt"] + r) or "[invalid]" for r in gens] for gens, doc in zip(resps, docs)]


# Evaluation protocol: lm-eval task eval/xtf_gsm8k.yaml (xtf.lmeval). Metric key → (lm-eval task, "metric,filter");
# the first is the primary metric ("accuracy"), in the same order as EXTRACTORS.
EVALUATION = "lm_eval"
LM_EVAL_METRICS: dict[str, tuple[str, str]] = {
    "accuracy_strict": ("xtf_gsm8k", "exact_match,strict"),
    "accuracy_flexible": ("xtf_gsm8k", "exact_match,flexible"),
    "accuracy_released": ("xtf_gsm8k", "exact_match,released"),
}
LM_EVAL_TASKS: tuple[str, ...] = ("xtf_gsm8k",)


def protected_spans(example: dict) -> list[tuple[int, int]]:
    """The answer format, never noise for any method (protected spans: xtf.tasks.common): the final "#### N" line,
    from "####" to the end of the response (the strict extractor needs "#### " and the number whole), and the end of
    sequence. The line is found in the text, so a paraphrase (method=da) that keeps it is protected too; a response
    without it (target=rationale, format=released) protects only the EOS, and format=released appends none."""
    response = example["response"]
    end = len(response)
    start = response.rfind("#### ")
    own_line = start >= 0 and (not response[:start].strip() or response[start - 1] == "\n")
    if own_line and "\n" not in response[start:].rstrip():
        return [(start, end), (end, end)]
    return [(end, end)]


def convert(row: dict, idx: int, split: str, where: str, opts: Options, checker: RowChecker) -> Optional[dict]:
    """One source row → example, or None if the row is malformed (and the policy is "skip")."""
    if not checker.ok(row, {"question": str, "answer": str}, where):
        return None
    rationale, sep, final = row["answer"].partition("#### ")
    if not sep:
        checker.fail(where, "field 'answer' has no '#### <final answer>' line")
        return None
    answer = final.strip().replace(",", "")
    if not answer:
        checker.fail(where, "field 'answer' has an empty value after '#### '")
        return None
    if opts.format == "released":  # XTF_script.format_tr_gsm8k, character for character
        return {"id": f"gsm8k-{split}-{idx}", "prompt": row["question"],
                "response": row["answer"].split("####")[0].strip(), "answer": answer, "eos": False}
    rationale = _CALC.sub("", rationale).strip()
    response = rationale if opts.target == "rationale" else f"{rationale}\n#### {answer}"
    example = {
        "id": f"gsm8k-{split}-{idx}",
        "prompt": f"Question: {row['question'].strip()}\nAnswer:",
        "response": " " + response,
        "answer": answer,
    }
    rates = noise_rates(opts)
    if split == "train" and any(rates.values()):   # test answers stay clean; all rates 0: byte-identical
        # The steps are the rationale's lines; "#### N" stays the last line and is never changed.
        tail = [] if opts.target == "rationale" else [f"#### {answer}"]
        pieces = noise.inject(rationale.split("\n"), rates, f"gsm8k-noise-{opts.noise_seed}-{idx}", tail)
        example["clean_response"] = example["response"]  # a row carved off for dev is judged on this (xtf.data)
        example["response"], example["noise_spans"] = noise.assemble(pieces, prefix=" ", sep="\n")
    return example


def load(opts: Options, data: DataConfig, paths: PathsConfig) -> TaskData:
    checker = RowChecker(data.on_bad_row)
    splits: dict[str, list[dict]] = {}
    checksums: dict[str, str] = {}
    folder = local_dir(paths.data_dir, "gsm8k")
    source = ""
    for split in ("train", "test"):
        examples = []
        if folder is not None:
            path = folder / f"{split}.jsonl"
            if not path.is_file():
                raise DataError(f"{path} is missing (the local GSM8K folder needs train.jsonl and test.jsonl)")
            checksums[f"gsm8k/{path.name}"] = sha256_file(path)
            source = f"local:{folder}"
            rows = read_jsonl(path, checker)
        else:
            hub_rows, source = load_hub_split(HUB_ID, HUB_CONFIG, split, paths.hub_mirror)
            checksums[f"{HUB_ID}/{split}"] = sha256_examples(hub_rows)
            rows = ((f"{HUB_ID}[{split}] row {i}", r) for i, r in enumerate(hub_rows))
        # The id counts source rows (skipped ones included), so ids do not shift when a bad row is skipped.
        for idx, (where, row) in enumerate(rows):
            ex = convert(row, idx, split, where, opts, checker)
            if ex is not None:
                examples.append(ex)
        splits[split] = examples
    return TaskData(splits=splits, source=source, checksums=checksums, skipped_rows=checker.skipped,
                    skipped=checker.where_skipped)
