"""A table row's paired difference to its baseline row (the spec's `table.baseline`), for each table value that
has per-question records (xtf.summary.PER_QUESTION: accuracy, answer NLL), with a 95 % paired bootstrap CI over
questions × seeds (xtf.paired: paired by (seed, question) where both rows have the seed, questions resampled
within each seed, 10,000 resamples, seed 0). xtf.tables puts the cells in its Markdown and LaTeX, xtf.plots
draws them with the CI as error bars.

A cell: "+0.012 [-0.005, +0.030]" (row − baseline, scaled as the value; "(n=k)" when fewer seeds pair than the
spec has); "(baseline)" in the baseline row; "n/a" for an accuracy difference that says nothing (no correct
answer on either side, or fewer than 20 paired questions: xtf.paired.accuracy_refusal); "not paired" when the
two rows' question ids differ (its reason in `why`, printed by xtf.tables); "—" without per-question records.
"""

from __future__ import annotations

from xtf import paired
from xtf.experiment_runs import composer, expand
from xtf.results import experiment_dir
from xtf.summary import PER_QUESTION, question_values

NOTE = ("Δ … vs {baseline} [95% CI]: row − the {baseline} row of its group and column (as shown: scaled like the "
        "value), and its 95 % paired bootstrap CI over questions × seeds (paired by seed and question where both "
        "rows have the seed; questions resampled within each seed; {n:,} resamples, seed {seed}); n/a: an "
        "accuracy difference is not reported (no correct answer in either row, or fewer than {min_n} paired "
        "questions); {missing} without per-question records.")


def note(baseline: str, missing: str) -> str:
    return NOTE.format(baseline=baseline, n=paired.N_RESAMPLES, seed=paired.SEED,
                       min_n=paired.MIN_ACCURACY_QUESTIONS, missing=missing)


def diff_values(table: dict) -> list[dict]:
    """The table values that get a Δ column: those with per-question records, when the table has a baseline."""
    return [v for v in table["values"] if v["path"] in PER_QUESTION] if table["baseline"] else []


def diff_header(value: dict, baseline: str) -> str:
    return f"Δ {value['name']} vs {baseline} [95% CI]"


def question_loader(spec: dict):
    """record → its per-question values (xtf.summary.question_values), read from the run folder beside the
    experiment's other runs (its run id; a copied run is a copy of its folder), each run read once."""
    with composer() as compose:
        folder = experiment_dir(compose(expand(spec)[0][2]))
    seen: dict[str, dict] = {}

    def load(record: dict) -> dict:
        rid = record.get("run_id")
        if rid not in seen:
            seen[rid] = question_values(folder / rid, record) if rid else {}
        return seen[rid]

    return load


def diff_cell(runs: list[dict], base_runs: list[dict], value: dict, questions, n_seeds: int,
              names: tuple[str, str] = ("this row", "the baseline row")) -> dict:
    """The cell of `value`'s paired difference between a row's runs and its baseline row's (module docstring);
    `names` (the two cells' labels) name them in a refusal."""
    measure = PER_QUESTION[value["path"]]
    sides = [{r.get("seed"): questions(r).get(measure) for r in rs} if questions else {} for rs in (runs, base_runs)]
    a, b = ({s: q for s, q in side.items() if q is not None and s is not None} for side in sides)
    if not a or not b:
        return {"mean": None, "std": None, "n": None}
    try:
        va, vb, wa, wb, seeds = paired.paired_arrays(a, b, *names)
    except paired.PairingError as e:
        return {"text": "not paired", "why": f"{value['name']}: {e}"}
    if measure == "correct" and paired.accuracy_refusal(va, vb):
        return {"text": "n/a"}
    d = paired.paired_bootstrap(va, vb, wa, wb, strata=seeds)
    scale, digits = value["scale"], value["digits"]
    shown = [x * scale for x in (d.diff, d.low, d.high)]
    return {"mean": f"{shown[0]:+.{digits}f}", "ci": tuple(f"{x:+.{digits}f}" for x in shown[1:]), "std": None,
            "n": d.n_strata if d.n_strata < n_seeds else None, "diff": tuple(shown)}
