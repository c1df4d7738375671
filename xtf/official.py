"""The released XTF code's protocol: every value its scripts fix, in one table, and the check that a run marked
`method.protocol=released` (conf/method/xtf_official.yaml) holds them.

    python run.py model=smollm2_135m task=gsm8k method=xtf_official             # the released protocol
    python run.py model=smollm2_135m task=gsm8k method=xtf_official --cfg job   # shows the composed values

The released code is EonHao/XTF at bd83b19 (XTF_script.py, utils/ScoreR.py, main.py). conf/method/xtf_official.yaml
composes the values below whatever the model's or xtf.yaml's defaults say (a model with a chat template, a short
data.max_len, XTF's retuned RI fence); xtf.validate.validate calls `warn_deviations`, which names every key a run
marked released has changed; the run's summary says whether it is the released computation (`summary_line`, which
also reads what tokenisation did: the released code never cuts a row). tests/test_official.py compares the composed
configuration key by key with this table, and this table with the released scripts' own lines (stored in
tests/fixtures/released_xtf_gsm8k_mid.json).

No xtf imports: xtf.validate imports this module.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Optional

log = logging.getLogger(__name__)

SOURCE = "EonHao/XTF bd83b19"

# key of the run config → (the released value, where the released scripts fix it). Values the scripts fix, not
# arguments they take: --score_weights (method.attributes, method.tr.weight) and --percentage_interest (method.cap)
# may take any value the project models (`ARGUMENTS`).
RELEASED: dict[str, tuple[Any, str]] = {
    "method.ri.definition": ("official", "XTF_script.get_attention_score: torch.mean(attentions[0], dim=1), then "
                                         "dim=1: each token's attention row, averaged (≈ 1/L)"),
    "method.ri.layers": ([0], "XTF_script.get_attention_score: attentions[0], the first layer"),
    "method.ri.scale": ("raw", "XTF_script.filtering_tokens_and_give_labels: np.percentile(answer_attention_scores, "
                               "25) on the scores as they are"),
    "method.ri.k": (1.5, "XTF_script.filtering_tokens_and_give_labels: lower_bound = q1 - 1.5 * iqr"),
    "method.kn.threshold": (0.95, "XTF_script.filtering_tokens_and_give_labels: perplexity_scores[pos] <=0.95"),
    "method.tr.classes": (5, "XTF_script.get_score: threshold_multiotsu(all_relation_scores, classes=5)"),
    "method.tr.scorer": ("released", "XTF_script.get_score: each token id run alone, its score cached under "
                                     "tokenizer.decode([token_id], skip_special_tokens=True).strip()"),
    "method.tr.threshold": ("released", "XTF_script.get_score: Multi-Otsu over every token occurrence, then the "
                                        "cumulative-proportion test against score_weights[2]"),
    "method.exempt_special": (False, "XTF_script.filtering_tokens_and_give_labels: every answer token is judged"),
    "method.protect_answer": (False, "XTF_script.filtering_tokens_and_give_labels: every answer token is judged, "
                                     "the answer's format too"),
    "model.chat_template": (False, "XTF_script.format_tr_gsm8k: tokenizer(question), the text as it is"),
    "model.dtype": ("float32", "XTF_script.main: AutoModelForCausalLM.from_pretrained(args.model_name, "
                               "trust_remote_code=True), no dtype: float32 under the transformers 4 it requires"),
    "data.truncation": ("error", "XTF_script.format_tr_gsm8k tokenises without truncation and LoRaFT_script.py "
                                 "trains every row whole: a row over data.max_len fails rather than being cut"),
}
# XTF_script.py's --max_length default, which it never applies: data.max_len must hold the longest row.
MAX_LEN = 2048
# The released command-line arguments and the values the project models for them (any of these is released).
ARGUMENTS = {
    "method.attributes": "--score_weights W_ri W_kn W_tr: an attribute is on when its weight is non-zero",
    "method.tr.weight": "--score_weights' W_tr, the cumulative-proportion test's bound (README: 1.0)",
    "method.cap": "--percentage_interest: script = XTF_script.py's 0.1 0.1 0.1, main = main.py's 0.05 0.1 0.05",
}
# Tasks whose released text format the project implements: task.options that make it (conf/released/<task>/
# xtf_official.yaml composes them, chosen by the task's own file), and the released function it reproduces.
TEXT: dict[str, tuple[dict, str]] = {
    "gsm8k": ({"format": "released"}, "XTF_script.format_tr_gsm8k: the question as it is; the rationale "
                                      "answer.split('####')[0].strip() with its <<calc>> annotations; no EOS"),
}


def _get(cfg: dict, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _plain(value: Any) -> Any:
    """Tuples (dataclasses) and lists (JSON records) compare equal; 1 and 1.0 too."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _show(value: Any) -> str:
    """A value as it is written on the command line (true, null, [0], released)."""
    return json.dumps(_plain(value)).strip('"')


def deviations(cfg: dict, options: dict) -> list[str]:
    """Each way the run config `cfg` (dataclasses.asdict(RunConfig), or a record's "config") and its task's
    options differ from the released protocol, one sentence each naming the key, the value and the released one."""
    out = []
    for key, (value, where) in RELEASED.items():
        got = _get(cfg, key)
        if _plain(got) != _plain(value):
            out.append(f"{key}={_show(got)} (released: {_show(value)}; {where})")
    if _get(cfg, "method.cap") is None:
        out.append(f"method.cap=null (released: script or main; the released filter always caps each attribute: "
                   f"{ARGUMENTS['method.cap']})")
    max_len = _get(cfg, "data.max_len")
    if isinstance(max_len, int) and max_len < MAX_LEN:
        out.append(f"data.max_len={max_len} (released: {MAX_LEN}, XTF_script.py's --max_length, never applied: the "
                   f"released code keeps every row whole)")
    task = _get(cfg, "task.name")
    if task not in TEXT:
        out.append(f"task={task}: the released text format is implemented here for {sorted(TEXT)} only "
                   f"(conf/released/<task>/); this task's text is its own, not the released code's")
    else:
        wanted, where = TEXT[task]
        for opt, value in wanted.items():
            if options.get(opt) != value:
                out.append(f"task.options.{opt}={_show(options.get(opt))} (released: {_show(value)}; {where})")
    return out


def warn_deviations(cfg: dict, options: dict) -> list[str]:
    """For a run marked method.protocol=released: log a warning per deviation (`deviations`) and return them; for
    any other run: nothing."""
    if _get(cfg, "method.protocol") != "released":
        return []
    found = deviations(cfg, options)
    for d in found:
        log.warning("method.protocol=released, but %s: this run is not the released XTF code's computation", d)
    return found


def summary_line(record: dict) -> Optional[str]:
    """The summary's line for a run marked method.protocol=released (None for any other): the released protocol
    held, or each deviation, including rows that tokenisation cut or dropped (the released code keeps every row)."""
    cfg = record.get("config") or {}
    if _get(cfg, "method.protocol") != "released":
        return None
    found = deviations(cfg, _get(cfg, "task.options") or {})
    tok = record.get("tokenization") or {}
    cut, dropped = tok.get("n_truncated") or 0, tok.get("n_dropped_too_long") or 0
    if cut or dropped:
        found.append(f"{cut} rows cut and {dropped} dropped at data.max_len={_get(cfg, 'data.max_len')} (the released "
                     f"code keeps every row whole)")
    if not found:
        return (f"protocol: the released XTF code's ({SOURCE}): every value its scripts fix holds (xtf/official.py) "
                f"and no row was cut")
    return f"protocol: NOT the released XTF code's computation, though method.protocol=released: {'; '.join(found)}"
