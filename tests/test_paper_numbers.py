"""The paper's Tables 1 and 2 (experiments/paper_numbers.yaml) against the specs that run them: every paper cell is
a grid cell and every grid cell has its paper number (no run the paper does not have, no paper number without its
run); the transcription is checked against the paper's own printed averages; the rendered tables show the paper
column. No records, no compose: milliseconds."""

import numpy as np
import pytest
from conftest import ROOT

from xtf.experiment import load_experiment
from xtf.tables import build, load_paper_numbers, paper_values_for, to_markdown

METHODS = ["CA", "Normal", "Normal×2", "DF", "DA", "SLM", "TC", "XTF"]
# The paper's Table 1 rows (model, training mode), in its order, per task.
PAPER_ROWS = [("llama32_1b", "full"), ("llama32_3b", "full"), ("llama31_8b", "full"), ("llama31_8b", "LoRA"),
              ("mistral_7b", "full"), ("mistral_7b", "LoRA"), ("r1_qwen_1_5b", "full"), ("r1_qwen_7b", "full"),
              ("r1_qwen_7b", "LoRA"), ("r1_qwen_14b", "LoRA")]
ROUNDING = 0.1 + 1e-9  # a printed mean of printed (rounded) cells: each side is off by at most 0.05


def _spec_and_paper(name):
    spec = load_experiment(ROOT / "experiments" / f"{name}.yaml")
    values, _ = paper_values_for(spec)
    cell_keys = {spec["table"]["paper_key"].format(**p, value="value"): label for label, p in spec["points"].items()}
    return spec, values, cell_keys


def test_table1_grid_is_exactly_the_papers_rows():
    spec, values, cell_keys = _spec_and_paper("table1")
    printed = {k for k in values if "/Average/" not in k}
    assert printed == set(cell_keys)          # each paper number has its run, each run its paper number
    for task in ("gsm8k", "pubmedqa"):
        points = [p for p in spec["points"].values() if p["task"] == task]
        assert list(dict.fromkeys((p["model"], p["train"]) for p in points)) == PAPER_ROWS
        assert len(points) == 10 * 8 - 3      # CA once per model: not in the LoRA row of a model with two rows
        assert all(f"{task}/Average/{m}" in values for m in METHODS)
    assert len(spec["cells"]) * len(spec["seeds"]) == 462


def test_table1_transcription_matches_the_papers_averages():
    _, values, _ = _spec_and_paper("table1")
    for task in ("gsm8k", "pubmedqa"):
        for m in METHODS:
            # the paper prints CA in both rows of a model with two rows: its average counts it twice
            row = [values.get(f"{task}/{model}/{train}/{m}", values.get(f"{task}/{model}/full/{m}"))
                   for model, train in PAPER_ROWS]
            assert np.mean(row) == pytest.approx(values[f"{task}/Average/{m}"], abs=ROUNDING), (task, m)
    assert values["gsm8k/llama31_8b/LoRA/XTF"] < values["gsm8k/llama31_8b/LoRA/TC"]  # as printed (remarked)


def test_table2_grid_transcription_and_its_agreement_with_table1():
    spec, values, cell_keys = _spec_and_paper("table2")
    assert {k for k in values if not k.startswith("Average/")} == set(cell_keys)
    rows = spec["labels"]["attributes"]
    assert len(rows) == 8 and spec["base"] == ["train=full"]
    off = [a for a in rows if abs(np.mean([values[k] for k in cell_keys if k.endswith(f"/{a}")])
                                  - values[f"Average/{a}"]) > ROUNDING]
    assert off == ["RI+KN+TR"]  # the paper's XTF average (40.1) is not the mean of its cells (40.85): remarked
    table1 = load_paper_numbers()["tables"]["table1"]["values"]
    differ = [(task, model, a) for task in ("gsm8k", "pubmedqa") for model in spec["labels"]["model"]
              for a, m in (("Normal", "Normal"), ("RI+KN+TR", "XTF"))
              if values[f"{task}/{model}/{a}"] != table1[f"{task}/{model}/full/{m}"]]
    assert differ == [("gsm8k", "mistral_7b", "Normal")]   # 15.1 in Table 2, 15.0 in Table 1: remarked


def _row(md, start):
    return next(line for line in md.splitlines() if line.startswith(start))


def _cells(line):
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_rendered_tables_show_the_paper_column_in_every_cell_and_the_average():
    spec, values, _ = _spec_and_paper("table1")
    sections = build(spec, {}, values)
    md = to_markdown(sections)
    head = _cells(_row(md, "| model | train |"))
    lora_8b = _cells(_row(md.split("### task = pubmedqa")[0], "|  | LoRA | "))  # GSM8K, Llama-3.1 8B LoRA
    assert lora_8b[head.index("XTF / paper")] == "37.1" and lora_8b[head.index("TC / paper")] == "38.4"
    assert lora_8b[head.index("CA / paper")] == ""                # CA: one cell per model (its full row)
    average = _cells(_row(md.split("### task = pubmedqa")[1], "| Average |"))
    assert average[head.index("XTF / paper")] == "37.1" and average[head.index("XTF / ours")] == "—"
    for s in sections:  # every grid cell's paper sub-column shows a number: none is "—"
        for r in s["rows"]:
            shown = [c["mean"] for col, c in zip(s["columns"], r["cells"]) if col["source"] == "paper"
                     and not c.get("absent")]
            assert shown and None not in shown, r["labels"]
    spec2, values2, _ = _spec_and_paper("table2")
    md2 = to_markdown(build(spec2, {}, values2))
    assert _row(md2, "| RI+TR |").endswith("| — | 27.6 | — | 36.9 |")   # MS(Me), then the Average column
