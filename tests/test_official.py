"""method=xtf_official composes the released XTF code's protocol from the command line (xtf/official.py): the
composed configuration against the released scripts' own lines (stored in tests/fixtures/released_xtf_gsm8k_mid.json,
quoted from EonHao/XTF at bd83b19), key by key, for every model; a run that changes a released key is warned about by
name and its summary says so; the documented xtf_official commands (docs/methods/xtf.md) compose as written.
Milliseconds to seconds, no model.

    .venv/bin/python -m pytest -q tests/test_official.py
"""

from __future__ import annotations

import json
import logging
import re
import shlex
import subprocess
import sys

import pytest
import yaml
from conftest import CONF, ROOT, compose

from xtf import official, rules
from xtf.tasks import gsm8k
from xtf.validate import validate

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
RELEASED_LINES = json.loads((ROOT / "tests" / "fixtures" / "released_xtf_gsm8k_mid.json").read_text())[
    "generated_by"]["released_lines"]


def number(key: str, pattern: str) -> float:
    """The number `pattern` captures in the released line stored under `key`."""
    m = re.search(pattern, RELEASED_LINES[key])
    assert m, (key, RELEASED_LINES[key])
    return float(m.group(1))


def numbers(key: str, pattern: str) -> list[float]:
    m = re.search(pattern, RELEASED_LINES[key])
    assert m, (key, RELEASED_LINES[key])
    return [float(x) for x in m.group(1).split(",")]


def composed(*overrides: str) -> dict:
    """validate(compose(...)) as a plain dict, plus its task options in full."""
    import dataclasses

    from xtf.tasks import task_options

    cfg = validate(compose(list(overrides)))
    return {**dataclasses.asdict(cfg), "task_options": dataclasses.asdict(task_options(cfg))}


def get(cfg: dict, key: str):
    for part in key.split("."):
        cfg = cfg[part]
    return list(cfg) if isinstance(cfg, tuple) else cfg


def test_the_released_numbers_are_the_released_lines():
    """Each number official.RELEASED (and rules.RELEASED_PERCENTAGES, gsm8k.EXPERT_WORDS) holds, read off the line
    of the released scripts that fixes it."""
    t = official.RELEASED
    assert t["method.ri.k"][0] == number("ri_fence", r"q1 - ([\d.]+) \* iqr")
    assert t["method.ri.layers"][0] == [int(number("ri_layer", r"attentions\[(\d+)\]"))]
    assert t["method.kn.threshold"][0] == number("kn_threshold", r"perplexity_scores\[pos\] <=\s*([\d.]+)")
    assert t["method.tr.classes"][0] == int(number("tr_classes", r"classes=(\d+)"))
    assert official.MAX_LEN == int(number("max_length", r"default=(\d+)"))
    assert list(rules.RELEASED_PERCENTAGES["script"]) == numbers("percentages_script", r"default=\[([\d., ]+)\]")
    assert list(rules.RELEASED_PERCENTAGES["main"]) == numbers("percentages_main", r"default=\[([\d., ]+)\]")
    assert number("score_weights", r"--score_weights ([\d.]+) ") == 1.0
    assert list(gsm8k.EXPERT_WORDS) == re.findall(r'"([^"]+)"', RELEASED_LINES["domain_words"])
    # What the released lines do not say, they leave at its default: no chat template, no dtype, no truncation.
    assert "chat_template" not in RELEASED_LINES["question_tokens"] and "truncation" not in RELEASED_LINES[
        "answer_tokens"]
    assert "dtype" not in RELEASED_LINES["model_load"] and "transformers>=4" in RELEASED_LINES["requirements"]


@pytest.mark.parametrize("model", MODELS)
def test_xtf_official_composes_every_released_value_for_every_model(model):
    """Key by key, whatever the model file says (SmolLM2: chat template on, max_len 384) or xtf.yaml (RI k = 0.5)."""
    cfg = composed(f"model={model}", "task=gsm8k", "method=xtf_official")
    for key, (value, _) in official.RELEASED.items():
        assert get(cfg, key) == value, key
    assert cfg["method"]["protocol"] == "released" and cfg["method"]["cap"] == "script"
    assert cfg["data"]["max_len"] >= official.MAX_LEN
    assert cfg["task_options"]["format"] == "released"
    assert official.deviations(cfg, cfg["task_options"]) == []


def test_cfg_job_shows_the_released_values():
    """`python run.py method=xtf_official --cfg job`, as a user types it (model=smollm2_135m task=gsm8k)."""
    out = subprocess.run([sys.executable, "run.py", "model=smollm2_135m", "task=gsm8k", "method=xtf_official",
                          "--cfg", "job"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    cfg = yaml.safe_load(out.stdout)
    for key, (value, _) in official.RELEASED.items():
        assert get(cfg, key) == value, key
    assert cfg["task"]["options"]["format"] == "released" and cfg["data"]["max_len"] == official.MAX_LEN


@pytest.mark.parametrize("task", TASKS)
def test_the_released_text_is_composed_where_implemented(task, caplog):
    """task=gsm8k gets the released text (conf/released/gsm8k/xtf_official.yaml); any other task is warned about by
    name, never silently run as "released"."""
    from xtf.config import ConfigError

    with caplog.at_level(logging.WARNING, logger="xtf.official"):
        try:
            cfg = composed(f"task={task}", "method=xtf_official")
        except ConfigError as e:  # a task that reads the user's own files (task=sft) validates only with them
            if "data.train_file" not in str(e):
                raise
            pytest.skip(f"task={task} validates only with your data: {e}")
    if task in official.TEXT:
        for opt, value in official.TEXT[task][0].items():
            assert cfg["task_options"][opt] == value
        assert not caplog.records
    else:
        assert any(f"task={task}: the released text format" in r.getMessage() for r in caplog.records)
    if task == "gsm8k":
        assert composed("task=gsm8k", "method=xtf")["task_options"]["format"] == "template"


@pytest.mark.parametrize("override, named", [
    ("method.ri.k=0.5", "method.ri.k=0.5 (released: 1.5"),
    ("method.ri.scale=log", "method.ri.scale=log"),
    ("model.chat_template=true", "model.chat_template=true (released: false"),
    ("data.max_len=384", "data.max_len=384 (released: 2048"),
    ("data.truncation=right", "data.truncation=right (released: error"),
    ("task.options.format=template", "task.options.format=template (released: released"),
    ("method.cap=null", "method.cap=null"),
    ("method.exempt_special=true", "method.exempt_special=true"),
    ("method.protect_answer=true", "method.protect_answer=true"),
    ("method.tr.threshold=otsu", "method.tr.threshold=otsu"),
])
def test_a_key_that_breaks_faithfulness_is_named(override, named, caplog):
    with caplog.at_level(logging.WARNING, logger="xtf.official"):
        cfg = composed("model=smollm2_135m", "task=gsm8k", "method=xtf_official", override)
    (record,) = caplog.records
    assert named in record.getMessage() and "not the released XTF code's computation" in record.getMessage()
    line = official.summary_line({"config": {**cfg, "task": {**cfg["task"], "options": cfg["task_options"]}}})
    assert line.startswith("protocol: NOT the released") and named in line


def test_released_arguments_are_not_deviations(caplog):
    """The released scripts' own arguments: --percentage_interest (method.cap=main) and --score_weights."""
    with caplog.at_level(logging.WARNING, logger="xtf.official"):
        composed("task=gsm8k", "method=xtf_official", "method.cap=main", "method.attributes=[ri,kn]")
    assert not caplog.records


def test_summary_says_released_or_names_the_cut_rows():
    cfg = composed("model=smollm2_135m", "task=gsm8k", "method=xtf_official")
    record = {"config": {**cfg, "task": {**cfg["task"], "options": cfg["task_options"]}},
              "tokenization": {"n_truncated": 0, "n_dropped_too_long": 0}}
    assert official.summary_line(record).startswith("protocol: the released XTF code's (EonHao/XTF bd83b19)")
    record["tokenization"]["n_truncated"] = 1
    assert "1 rows cut and 0 dropped at data.max_len=2048" in official.summary_line(record)
    other = composed("task=gsm8k", "method=xtf")
    assert official.summary_line({"config": other}) is None and other["method"]["protocol"] is None


def docs_official_commands() -> list[str]:
    """The `python run.py ... method=xtf_official ...` lines of the fenced bash blocks of the docs (docs/**/*.md: the
    XTF page, docs/methods/xtf.md) and of the README."""
    texts = [p.read_text() for p in sorted((ROOT / "docs").rglob("*.md"))] + [(ROOT / "README.md").read_text()]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", "\n".join(texts), flags=re.S):
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if command.startswith("python run.py") and "method=xtf_official" in command:
                lines.append(command)
    return lines


def test_the_docs_have_official_commands():
    assert len(docs_official_commands()) >= 2


@pytest.mark.parametrize("command", docs_official_commands())
def test_docs_official_command_composes_as_written(command, caplog):
    """Each documented command for the official method, as written: Hydra accepts it (the old README's
    task.options.format=released was refused without a `+`), and it validates as the released protocol (the full
    run of the first one, on the fixture rows: tests/test_faithful.py::test_run_py_masks_are_the_released_masks)."""
    argv = shlex.split(command)[2:]
    overrides = [a for a in argv if a not in ("--cfg", "job")]
    out = subprocess.run([sys.executable, "run.py", *overrides, "--cfg", "job"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    with caplog.at_level(logging.WARNING, logger="xtf.official"):
        composed(*overrides)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
