"""Tables from hand-made records in a tmp results dir: mean ± std computed by hand, the best in bold, a missing
cell as "—" (never 0), (n=k) for partial cells, the paper column with its number, LaTeX escapes and \\textbf;
and the spec checks: a bad spec fails naming the file, the key and what is allowed."""

import json

import pytest
from conftest import ROOT

from xtf.experiment import SpecError, expand, load_experiment, spec_files
from xtf.results import run_dir
from xtf.table_render import tex_escape
from xtf.tables import build, metric, paper_values_for, to_latex, to_markdown, write_tables

SPEC = """
name: demo
description: A hand-made table.
base: [model=tiny, task=synth, "paths.results_dir={results}"]
seeds: [0, 1]
grid:
  method: {{Normal: method=normal, XTF: method=xtf, TC_10%: method=tc}}
  lr: {{key: train.lr, values: [0.001, 0.002]}}
table:
  rows: [method]
  columns: [lr]
  values:
    accuracy: metrics.accuracy
    kept: {{path: mask.kept_fraction, best: none}}
  scale: 100
  digits: 1
  paper: demo
"""
PAPER = """
source: {arxiv: "0000.00000", version: v1}
tables:
  demo: {table: Table 9, status: partial, values: {"XTF/0.001/accuracy": 84.2}}
"""
# cell label -> {seed: accuracy}; kept fraction 0.5 everywhere
ACC = {"Normal / 0.001": {0: 0.5, 1: 0.7},   # 60.0 ± 14.1 (sample std: sqrt(0.02))
       "XTF / 0.001": {1: 0.8},                # 80.0 (n=1), bold
       "Normal / 0.002": {0: 0.4, 1: 0.4},     # 40.0 ± 0.0, bold
       "TC_10% / 0.002": {0: 0.3, 1: 0.2}}     # 25.0 ± 7.1


def _spec(tmp_path, text=SPEC, name="demo"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(text.format(results=tmp_path / "results"))
    return load_experiment(path)


def _write_records(spec, tmp_path):
    from xtf.experiment import composer

    with composer() as compose:
        for label, seed, overrides in expand(spec):
            folder = run_dir(compose(overrides))
            folder.mkdir(parents=True)
            acc = ACC.get(label, {}).get(seed)
            status = "complete" if acc is not None else "running"   # an incomplete run is never counted
            (folder / "results.json").write_text(json.dumps({
                "status": status, "run_id": folder.name, "metrics": {"accuracy": acc if acc is not None else 0.0},
                "mask": {"kept_fraction": 0.5}}))


def _row(md, label):
    return next(line for line in md.splitlines() if line.startswith(f"| {label} |"))


def test_table_from_records(tmp_path):
    spec = _spec(tmp_path)
    _write_records(spec, tmp_path)
    paper = tmp_path / "paper.yaml"
    paper.write_text(PAPER)
    out = tmp_path / "tables"
    write_tables(spec, out, paper_numbers=paper)
    md = (out / "demo.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| method |"))
    assert head == ("| method | 0.001 / accuracy / ours | 0.001 / accuracy / paper | 0.001 / kept / ours | "
                    "0.001 / kept / paper | 0.002 / accuracy / ours | 0.002 / accuracy / paper | 0.002 / kept / ours "
                    "| 0.002 / kept / paper |")
    assert _row(md, "Normal") == "| Normal | 60.0 ± 14.1 | — | 50.0 ± 0.0 | — | **40.0 ± 0.0** | — | 50.0 ± 0.0 | — |"
    assert _row(md, "XTF") == "| XTF | **80.0 (n=1)** | 84.2 | 50.0 (n=1) | — | — | — | — | — |"
    assert _row(md, "TC_10%") == "| TC_10% | — | — | — | — | 25.0 ± 7.1 | — | 50.0 ± 0.0 | — |"
    assert "1 of 12 numbers transcribed" in md and "7 of 12 runs complete" in md
    tex = (out / "demo.tex").read_text()
    assert r"\textbf{80.0 (n=1)} & 84.2" in tex and r"TC\_10\% & --- & ---" in tex
    assert r"\textbf{40.0 $\pm$ 0.0}" in tex
    assert r"\multicolumn{4}{c}{0.001}" in tex and r"\cmidrule(lr){2-5}" in tex
    runs = json.loads((out / "demo.json").read_text())
    assert len(runs["Normal / 0.001"]) == 2 and "TC_10% / 0.001" not in runs


def test_a_table_without_column_coordinates_has_one_column_per_value(tmp_path):
    """The benchmark specs (noise_benchmark, all_methods, threshold_sweep) put every coordinate in rows: one column
    per value (a table.mean once broke exactly these)."""
    spec = _spec(tmp_path, SPEC.replace("rows: [method]\n  columns: [lr]", "rows: [method, lr]"))
    _write_records(spec, tmp_path)
    paper = tmp_path / "paper.yaml"
    paper.write_text(PAPER)
    write_tables(spec, tmp_path / "tables", paper_numbers=paper)
    md = (tmp_path / "tables" / "demo.md").read_text()
    assert "| method | lr | accuracy / ours | accuracy / paper | kept / ours | kept / paper |" in md
    assert "| Normal | 0.001 | **60.0 ± 14.1** | — | 50.0 ± 0.0 | — |" in md  # bold: best within its group


def test_no_records_leaves_the_committed_table_alone(tmp_path):
    spec = _spec(tmp_path)
    out = tmp_path / "tables"
    assert write_tables(spec, out, skip_empty=True) is None and not out.exists()


def test_best_per_row_and_min(tmp_path):
    text = SPEC.replace("paper: demo", "best: row").replace("kept: {{path: mask.kept_fraction, best: none}}",
                                                             "kept: {{path: mask.kept_fraction, best: min}}")
    spec = _spec(tmp_path, text)
    records = {"Normal / 0.001": [{"metrics": {"accuracy": 0.5}, "mask": {"kept_fraction": 0.9}}],
               "Normal / 0.002": [{"metrics": {"accuracy": 0.6}, "mask": {"kept_fraction": 0.8}}]}
    md = to_markdown(build(spec, records, None))
    assert _row(md, "Normal") == "| Normal | 50.0 (n=1) | 90.0 (n=1) | **60.0 (n=1)** | **80.0 (n=1)** |"
    assert _row(md, "XTF") == "| XTF | — | — | — | — |"


def test_a_group_where_every_value_ties_has_no_bold(tmp_path):
    spec = _spec(tmp_path, SPEC.replace("paper: demo", "best: row"))
    records = {"Normal / 0.001": [{"metrics": {"accuracy": 0.5}}], "Normal / 0.002": [{"metrics": {"accuracy": 0.5}}],
               "XTF / 0.001": [{"metrics": {"accuracy": 0.5}}], "XTF / 0.002": [{"metrics": {"accuracy": 0.7}}]}
    md = to_markdown(build(spec, records, None))
    assert "**" not in _row(md, "Normal")  # 50.0 and 50.0: nothing is best
    assert "**70.0 (n=1)**" in _row(md, "XTF") and "**50.0" not in _row(md, "XTF")


def test_tex_escape():
    assert tex_escape("a_b & 5% #1 {x} ~^\\ ± × — >") == (
        r"a\_b \& 5\% \#1 \{x\} \textasciitilde{}\textasciicircum{}\textbackslash{} $\pm$ $\times$ --- $>$")


def _bad(tmp_path, text, name="demo"):
    with pytest.raises(SpecError) as e:
        _spec(tmp_path, text, name)
    msg = str(e.value)
    assert f"{name}.yaml" in msg
    return msg


@pytest.mark.parametrize("change, expected", [
    (("name: demo", "name: other"), "name: 'other' must be the file's name"),
    (("seeds: [0, 1]", "seeds: [0, 0]"), "seeds: expected a non-empty list of distinct integers"),
    (("description:", "colour: red\ndescription:"), "colour: unknown key; allowed: ['name',"),
    (("method=xtf,", "method=xtff,"), "no option 'xtff' in config group 'method'; allowed: ['da', 'df'"),
    (("rows: [method]", "rows: [methods]"), "table.rows: unknown coordinate 'methods'; coordinates of this spec:"),
    (("columns: [lr]", "columns: []"), "coordinate 'lr' is in neither rows, columns nor split"),
    (("best: none}}", "best: mean}}"), "table.values.kept.best: 'mean' is not allowed; choose one of ['max', 'min'"),
    (("lr: {{key:", "lr: [0.1]\n  x: {{key:"), "a plain list of values needs 'lr' to be a config group"),
    (("grid:", "cells: {{a: []}}\ngrid:"), "give exactly one of 'cells' (listed) or 'grid'"),
    (("table:", "exclude: [{{method: SLM}}]\ntable:"), "exclude[0].method: unknown label 'SLM'; labels: ['Normal'"),
    (("XTF: method=xtf", "XTF: [method=xtf, train.lr=1]"), "cell 'XTF / 0.001': key 'train.lr' is set twice"),
    (("model=tiny,", "model=tiny, seed=3,"), "base: 'seed=' is set by the spec"),
    (("paper: demo", "paper: demo\nplot: {{kind: bar, hue: [method, lr]}}"), "bar takes at most one hue coordinate"),
    (("paper: demo", "paper: demo\nplot: {{kind: bar, x: method, hue: method}}"), "a coordinate is placed twice"),
    (("paper: demo", "paper: demo\n  baseline: Base"), "table.baseline: 'Base' is not a label of the row coordinate "
                                                    "'method'; allowed: ['Normal', 'XTF', 'TC_10%']"),
])
def test_spec_errors_name_file_key_and_choices(tmp_path, change, expected):
    assert expected in _bad(tmp_path, SPEC.replace(*change))


def test_paper_numbers_checked_against_the_spec(tmp_path):
    spec = _spec(tmp_path)
    paper = tmp_path / "paper.yaml"
    paper.write_text(PAPER.replace("demo:", "other:"))
    with pytest.raises(SpecError, match=r"table.paper: 'demo' is not a table of .*allowed: \['other'\]"):
        paper_values_for(spec, paper)
    paper.write_text(PAPER.replace("XTF/0.001", "XTF/0.003"))
    with pytest.raises(SpecError, match="'XTF/0.003/accuracy' matches no cell"):
        paper_values_for(spec, paper)


def test_committed_specs_and_paper_numbers_load():
    """Every experiments/*.yaml is valid, and every paper number has a cell (no compose: milliseconds)."""
    names = set()
    for path in spec_files():
        spec = load_experiment(path)
        paper_values_for(spec)
        names.add(spec["name"])
    assert {"noise_benchmark", "threshold_sweep", "table1", "table2", "code_passk"} <= names
    text = (ROOT / "experiments" / "paper_numbers.yaml").read_text()
    assert "2602.14536" in text and "transcription:" in text


MEAN_RECORDS = {"Normal / 0.001": [0.5, 0.7], "XTF / 0.001": [0.8], "TC_10% / 0.001": [0.2],
                "Normal / 0.002": [0.4], "XTF / 0.002": [0.9], "TC_10% / 0.002": [0.3, 0.1]}


def _records(acc_by_cell, **extra):
    return {label: [{"metrics": {"accuracy": a}, **extra} for a in accs] for label, accs in acc_by_cell.items()}


def test_mean_row_averages_the_shown_cells_and_shows_the_printed_paper_mean(tmp_path):
    mean = "mean: {{over: rows, label: mean, paper_key: 'mean/{{lr}}/{{value}}'}}"
    text = SPEC.replace("    kept: {{path: mask.kept_fraction, best: none}}\n", "").replace(
        "paper: demo", f"paper: demo\n  best: row\n  {mean}")
    spec = _spec(tmp_path, text)
    md = to_markdown(build(spec, _records(MEAN_RECORDS), {"mean/0.001/accuracy": 55.0}))
    # 0.001: (60 + 80 + 20) / 3; 0.002: (40 + 90 + 20) / 3; the better mean is bold, against means only
    assert _row(md, "mean") == "| mean | **53.3** | 55.0 | 50.0 | — |"
    assert _row(md, "XTF") == "| XTF | 80.0 (n=1) | — | **90.0 (n=1)** | — |"
    partial = {k: v for k, v in MEAN_RECORDS.items() if k != "XTF / 0.002"}
    assert _row(to_markdown(build(spec, _records(partial), None)), "mean") == "| mean | 53.3 | — | — | — |"
    paper = tmp_path / "paper.yaml"  # a printed mean is a valid paper key of the spec
    paper.write_text(PAPER.replace('{"XTF/0.001/accuracy": 84.2}', '{"mean/0.001/accuracy": 55.0}'))
    assert paper_values_for(spec, paper)[0] == {"mean/0.001/accuracy": 55.0}


def test_mean_column_skips_excluded_cells_and_bolds_the_best_mean(tmp_path):
    text = SPEC.replace("    kept: {{path: mask.kept_fraction, best: none}}\n", "").replace(
        "table:", "exclude: [{{method: TC_10%, lr: '0.001'}}]\ntable:").replace(
        "paper: demo", "mean: {{over: columns, label: mean}}")
    spec = _spec(tmp_path, text)
    sections = build(spec, _records({k: v for k, v in MEAN_RECORDS.items() if k != "TC_10% / 0.001"}), None)
    md = to_markdown(sections)
    assert md.splitlines()[0] == "| method | 0.001 | 0.002 | mean |"
    assert _row(md, "Normal") == "| Normal | 60.0 ± 14.1 | 40.0 (n=1) | 50.0 |"
    assert _row(md, "XTF") == "| XTF | **80.0 (n=1)** | **90.0 (n=1)** | **85.0** |"
    assert _row(md, "TC_10%") == "| TC_10% |  | 20.0 ± 14.1 | 20.0 |"   # the excluded cell: blank, not counted
    tex = to_latex(sections, "demo")
    assert r"\textbf{85.0}" in tex and "XTF & " in tex


def test_online_kept_fraction_is_the_one_chosen_in_training_and_says_so(tmp_path):
    spec = _spec(tmp_path)
    offline = {"metrics": {"accuracy": 0.5}, "mask": {"kept_fraction": 0.7}}
    online = {"metrics": {"accuracy": 0.5}, "mask": {"kept_fraction": 1.0},
              "training": {"online": {"method": "slm", "kept_fraction": 0.6}}}
    records = {"Normal / 0.001": [offline], "XTF / 0.001": [online, dict(online, training={"online": {
        "method": "slm", "kept_fraction": 0.64}})]}
    md = to_markdown(build(spec, records, None))
    assert _row(md, "Normal").split(" | ")[3] == "70.0 (n=1)"
    assert _row(md, "XTF").split(" | ")[3] == "62.0 ± 2.8 (online)"   # never the offline mask's 100.0
    assert metric(online, "mask.kept_fraction") == pytest.approx(0.6)  # the figures read the same number


@pytest.mark.parametrize("mean, expected", [
    ("{{over: cells}}", "table.mean: expected {over: rows | columns"),
    ("{{over: rows, colour: red}}", "table.mean.colour: unknown key"),
    ("{{over: rows, paper_key: '{{method}}/mean'}}", "table.mean.paper_key: unknown field(s) ['method']"),
])
def test_mean_spec_errors(tmp_path, mean, expected):
    assert expected in _bad(tmp_path, SPEC.replace("paper: demo", f"paper: demo\n  mean: {mean}"))


# ---------------------------------------------------------------------------------------------------------------
# table.baseline: each row's paired difference to the baseline row, with its 95 % paired bootstrap CI (xtf.table_ci)

BASELINE_SPEC = SPEC.replace("paper: demo", "baseline: Normal").replace(
    "kept: {{path: mask.kept_fraction, best: none}}",
    "answer NLL: {{path: metrics.answer_nll, best: min, scale: 1, digits: 3}}\n"
    "    kept: {{path: mask.kept_fraction, best: none}}")
QUESTIONS = [f"q{i}" for i in range(30)]
NORMAL = {"correct": [i % 3 == 0 for i in range(30)], "nll": [1 + 0.01 * i for i in range(30)]}   # 10 of 30
XTF = {"correct": [i % 3 == 0 or i % 5 == 1 for i in range(30)],                                  # 14 of 30
       "nll": [1 + 0.01 * i - 0.1 for i in range(30)]}
NONE_RIGHT = {"correct": [False] * 30, "nll": NORMAL["nll"]}
PAIRED_RUNS = {  # cell label -> (seeds complete, per-question values, question ids)
    "Normal / 0.001": ((0, 1), NORMAL, QUESTIONS), "XTF / 0.001": ((0, 1), XTF, QUESTIONS),
    "TC_10% / 0.001": ((0, 1), XTF, [f"x{i}" for i in range(30)]),        # other questions: never paired
    "Normal / 0.002": ((0, 1), NONE_RIGHT, QUESTIONS), "XTF / 0.002": ((1,), XTF, QUESTIONS),
    "TC_10% / 0.002": ((0, 1), NONE_RIGHT, QUESTIONS)}                     # 0 right on both sides: no accuracy Δ


def _write_paired_records(spec):
    """Complete runs with predictions.jsonl as xtf.evaluate writes them (per-question correctness and answer NLL)."""
    from xtf.experiment import composer

    with composer() as compose:
        for label, seed, overrides in expand(spec):
            seeds, values, ids = PAIRED_RUNS[label]
            if seed not in seeds:
                continue
            folder = run_dir(compose(overrides))
            folder.mkdir(parents=True)
            rows = [{"id": q, "correct_strict": c, "answer_nll": v, "answer_tokens": 10}
                    for q, c, v in zip(ids, values["correct"], values["nll"])]
            (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            (folder / "results.json").write_text(json.dumps({
                "status": "complete", "run_id": folder.name, "seed": seed, "mask": {"kept_fraction": 0.5},
                "eval_protocol": {"extractors": ["strict"]},
                "metrics": {"accuracy": sum(values["correct"]) / 30, "answer_nll": sum(values["nll"]) / 30}}))


def test_a_baseline_adds_paired_differences_with_their_ci_in_markdown_latex_and_the_plot(tmp_path, capsys):
    spec = _spec(tmp_path, BASELINE_SPEC)
    _write_paired_records(spec)
    out = tmp_path / "tables"
    write_tables(spec, out)
    md = (out / "demo.md").read_text()
    assert ("| method | 0.001 / accuracy | 0.001 / Δ accuracy vs Normal [95% CI] | 0.001 / answer NLL | 0.001 / Δ "
            "answer NLL vs Normal [95% CI] | 0.001 / kept | 0.002 / accuracy |") in md   # no Δ for kept (no record)
    cells = _row(md, "XTF").split(" | ")
    assert cells[1] == "**46.7 ± 0.0**" and cells[2].startswith("+13.3 [+") and "(n=" not in cells[2]
    assert cells[4] == "-0.100 [-0.100, -0.100]"           # every question 0.1 nats/token lower: a zero-width CI
    assert cells[9] == "-0.100 [-0.100, -0.100] (n=1)"     # XTF at 0.002: one seed pairs
    assert _row(md, "Normal").split(" | ")[2] == "(baseline)"
    tc = _row(md, "TC_10%").split(" | ")
    assert tc[2] == tc[4] == "not paired" and tc[7] == "n/a" and tc[9] == "+0.000 [+0.000, +0.000]"
    assert "95 % paired bootstrap CI over questions × seeds" in md and "10,000 resamples, seed 0" in md
    assert "their question ids differ" in capsys.readouterr().err
    tex = (out / "demo.tex").read_text()
    assert r"$\Delta$ accuracy vs Normal [95\% CI]" in tex and "& -0.100 [-0.100, -0.100] &" in tex
    assert "(baseline)" in tex and "% Δ … vs Normal [95% CI]: row − the Normal row" in tex
    assert (out / "demo_paired.png").stat().st_size > 0


def test_the_paired_figure_draws_the_ci_as_error_bars_labelled_as_such(tmp_path):
    from xtf.plots import CI_LABEL, paired_figure
    from xtf.table_ci import question_loader

    spec = _spec(tmp_path, BASELINE_SPEC)
    _write_paired_records(spec)
    from xtf.experiment import collect

    fig = paired_figure(spec, build(spec, collect(spec), None, question_loader(spec)))
    assert "error bars: 95 % paired bootstrap CI (questions × seeds), not the seed std" in fig._suptitle.get_text()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"difference, {CI_LABEL}"]
    xtf_panel = fig.axes[0]   # 0.001 / Δ accuracy: XTF's point and CI; TC_10%'s "not paired" written at 0
    (line,) = [c for c in xtf_panel.collections if c.get_segments()]
    (lo, _), (hi, _) = line.get_segments()[0]
    assert lo < 13.3 < hi
    assert "not paired" in [t.get_text() for t in xtf_panel.texts]


def test_without_per_question_records_a_difference_is_missing_never_zero(tmp_path):
    spec = _spec(tmp_path, BASELINE_SPEC)
    records = {"Normal / 0.001": [{"seed": 0, "metrics": {"accuracy": 0.5}}],
               "XTF / 0.001": [{"seed": 0, "metrics": {"accuracy": 0.7}}]}
    md = to_markdown(build(spec, records, None))   # no question loader: nothing to pair
    assert _row(md, "XTF").split(" | ")[2] == "—" and _row(md, "Normal").split(" | ")[2] == "(baseline)"


def test_committed_comparisons_name_their_baseline_row():
    for name, baseline in [("all_methods", "Normal"), ("noise_benchmark", "normal"),
                           ("noise_benchmark_real", "normal")]:
        assert load_experiment(ROOT / "experiments" / f"{name}.yaml")["table"]["baseline"] == baseline
