"""What a run tells a researcher, printed at its end (and again when a complete run is skipped), and a
side-by-side view of the runs of one experiment folder.

    python -m xtf.summary results/quickstart            # every complete run in the folder, one line each

Runs that share model, task, method and seed (a sweep: e.g. XTF at five thresholds) get a column per config key
whose value differs between them (xtf.varying, read from each record's `config`: e.g. method.kn.threshold),
and, when even their configs agree (the same settings run by other code), a run id column: no two printed rows
look the same.

Everything printed comes from the run's record (results.json), so a skipped run prints the same summary.
Accuracy carries a 95 % Wilson score interval and its n: with a few dozen test examples the interval is wide,
and saying so is the point. The kept fraction of an online method (xtf.online) is the one it chose during training,
labelled as such (`kept_fraction`): its offline mask keeps every answer token, so "kept 1.000" would mislead.
A record made by other code than this (its `code` hashes, xtf.identity.code_hashes) says so in every view
(`code_warning`): the summary, this comparison and `make tables` (xtf.tables).

    python -m xtf.summary results/quickstart --baseline normal   # + each method − normal, paired (`make run`)

With --baseline, each other method's runs are compared with the baseline method's runs of the same model, task
and train mode on the same test questions (xtf.paired: paired bootstrap over questions, seeded): the difference
in answer NLL and, where n allows, in accuracy, with a 95 % CI and whether it excludes zero, in words. The
per-question values are read from each run's predictions.jsonl (`question_values`).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from xtf import official, paired, tasks
from xtf.explain import most_common_tokens
from xtf.identity import changed_stages, code_hashes
from xtf.varying import natural, varying_columns

TRUNCATION_WARN = 0.02   # warn when truncation cut more than this share of the answer tokens


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion (stays inside [0, 1], sensible at 0 and n)."""
    if n <= 0:
        return (float("nan"), float("nan"))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def most_masked(rows: list[dict], keeps: list[np.ndarray], tokenizer, k: int = 15) -> list[list]:
    """The `k` answer-token strings masked most often (xtf.explain.most_common_tokens' rows: [repr, times masked,
    share of that token's answer occurrences masked]); stored in the mask statistics, shown by the report too."""
    masked = [np.asarray(r["response_mask"], bool) & ~np.asarray(keep, bool) for r, keep in zip(rows, keeps)]
    return most_common_tokens(rows, masked, tokenizer, top=k)


def kept_fraction(record: dict) -> tuple[float | None, bool]:
    """(the share of answer tokens a run trained on, whether an online method chose them during training).

    Offline methods: the mask's kept fraction (mask.kept_fraction, None for a run without a mask). An online
    method (a `training.online` section, xtf.online: SLM, ssToken, ProFit, DFT) keeps every answer token in its
    offline mask and selects per batch: its share is training.online.kept_fraction (kept / trainable tokens summed
    over all optimiser steps; for a loss-weighting rule such as DFT, the mean weight) times the mask's."""
    offline = (record.get("mask") or {}).get("kept_fraction")
    online = (record.get("training") or {}).get("online")
    if online is None:
        return offline, False
    chosen = online.get("kept_fraction")
    return (None if chosen is None else chosen * (1.0 if offline is None else offline)), True


def accuracy_text(metrics: dict) -> str:
    acc, n = metrics.get("accuracy"), metrics.get("n_eval")
    if acc is None:
        return "n/a"
    if not n:
        return f"{acc:.3f}"
    lo, hi = wilson_interval(acc * n, n)
    return f"{acc:.3f} [95% CI {lo:.3f}–{hi:.3f}] (n={n})"


def detection_lines(record: dict) -> list[str]:
    """How the mask finds the annotated (or injected) noise, when the rows carry it (record["detection"])."""
    overall = (record.get("detection") or {}).get("overall")
    if not overall:
        return []
    m = overall["mask"]
    return [f"noise annotations: the mask finds {overall['n_noise_tokens']} noise tokens of {overall['n_tokens']} "
            f"with precision {m['precision']:.3f}, recall {m['recall']:.3f}, F1 {m['f1']:.3f}"
            + (" (online: masked = selected in under half of its training steps)"
               if (record.get("mask") or {}).get("detection_mask") else "")]


def code_changes(record: dict) -> list[str] | None:
    """The stages whose source differs between the code that made `record` and this code (xtf.identity.CODE_STAGES,
    "task": its task module); None for a record made before code hashes were recorded."""
    recorded = record.get("code")
    if not isinstance(recorded, dict):
        return None
    return changed_stages(recorded, code_hashes(tasks.TASKS.get(record.get("task"))))


def code_warning(record: dict) -> str | None:
    """A warning when a record may not be what this code computes: made by other code, or before code hashes."""
    changed = code_changes(record)
    if changed is None:
        return ("WARNING: this record predates code hashes (made by an older xtf): whether this code would compute "
                "the same numbers cannot be checked; force=true reruns it")
    if changed:
        return (f"WARNING: this record was made by other code (changed since: {', '.join(changed)}); its numbers may "
                f"differ from what this code computes: force=true reruns it")
    return None


def stale_code_lines(records: list[dict], where: str, shown: int = 10) -> list[str]:
    """Warning lines naming the records of `where` made by other code or before code hashes (at most `shown`
    run ids each); none when every record matches this code."""
    changed, old = {}, []
    for r in records:
        stages = code_changes(r)
        if stages is None:
            old.append(r.get("run_id", "?"))
        elif stages:
            changed[r.get("run_id", "?")] = stages
    out = []
    if changed:
        names = [f"{rid} ({', '.join(stages)})" for rid, stages in list(changed.items())[:shown]]
        more = f" and {len(changed) - shown} more" if len(changed) > shown else ""
        out.append(f"[xtf] WARNING: {where}: {len(changed)} of {len(records)} records were made by other code "
                   f"(changed stages in brackets): {'; '.join(names)}{more}; their numbers may differ from what this "
                   f"code computes (force=true reruns a run)")
    if old:
        more = f" and {len(old) - shown} more" if len(old) > shown else ""
        out.append(f"[xtf] WARNING: {where}: {len(old)} of {len(records)} records predate code hashes (made by an "
                   f"older xtf; the code that made them cannot be checked): {', '.join(old[:shown])}{more}")
    return out


def summary_lines(record: dict, folder) -> list[str]:
    """The end-of-run summary, as lines (xtf.pipeline prints them)."""
    m, mask, tok = record.get("metrics", {}), record.get("mask") or {}, record.get("tokenization") or {}
    split = (record.get("data") or {}).get("eval_split", "test")
    lines = [f"task={record['task']} model={record['model']} method={record['method']} seed={record['seed']}"]
    lines += [line for line in [official.summary_line(record)] if line]  # method.protocol=released: held or not
    kept = mask.get("kept_fraction")
    attrs = sorted(k[len("noisy_fraction_"):] for k in mask if k.startswith("noisy_fraction_"))
    per_attr = ", ".join(f"{a} {mask[f'noisy_fraction_{a}']:.3f}" for a in attrs)
    n_answer = mask.get("answer_tokens", tok.get("answer_tokens", "?"))
    trained, online = kept_fraction(record)
    if online:
        books = record["training"]["online"]
        steps = len(books.get("kept_fraction_per_step") or [])
        chosen = "n/a" if trained is None else f"{trained:.3f}"
        offline = "n/a" if kept is None else f"{kept:.3f}"
        lines.append(f"kept answer tokens, chosen online during training ({books.get('method')}): {chosen} (kept or "
                     f"loss-weighted share of the trainable tokens over {steps} steps); the offline mask keeps "
                     f"{offline} of {n_answer}")
    elif kept is not None:
        lines.append(f"kept answer tokens: {kept:.3f} of {n_answer}"
                     + (f"; flagged as noise per attribute: {per_attr}" if per_attr else ""))
    if mask.get("most_masked"):
        shown = ", ".join(f"{token} {n} ({share:.0%})" for token, n, share in mask["most_masked"][:8])
        lines.append(f"most-masked tokens (times masked, share of their occurrences): {shown}")
    lines += detection_lines(record)
    if record.get("mode") == "score_only":
        lines.append("score only: nothing fine-tuned or evaluated; every row's decision: "
                     f"{Path(folder) / 'decisions.npz'} (python -m xtf.export {folder} writes the filtered dataset)")
    elif "accuracy" in m or not m:  # your own data (task=sft) has no accuracy: its measure is the answer NLL
        lines.append(f"accuracy on {split}: {accuracy_text(m)}")
    named = {k[len("lm_eval/"):]: v for k, v in m.items() if k.startswith("lm_eval/")}
    if named:  # task.options.lm_eval_tasks (xtf.lmeval_named)
        lines.append("lm-eval: " + ", ".join(f"{k} {v:.4f}" for k, v in named.items()))
    if m.get("answer_nll") is not None:
        lines.append(f"reference-answer NLL on {split}: {m['answer_nll']:.4f} nats/token "
                     f"({m.get('answer_nll_tokens')} tokens; lower is better)")
    answer_tokens, cut = tok.get("answer_tokens") or 0, tok.get("answer_tokens_cut") or 0
    if answer_tokens and cut / (answer_tokens + cut) > TRUNCATION_WARN:
        lines.append(f"WARNING: truncation cut {cut} answer tokens ({cut / (answer_tokens + cut):.1%}) in "
                     f"{tok.get('n_truncated')} of {tok.get('n_examples')} training examples; raise data.max_len")
    warning = code_warning(record)
    if warning:
        lines.append(warning)
    report = Path(folder) / "explain" / "index.html"
    if report.is_file():
        lines.append(f"explanation report: {report}")
    lines.append(f"results: {folder}")
    return lines


def print_summary(record: dict, folder) -> None:
    for line in summary_lines(record, folder):
        print(f"[xtf] {line}")


# ---------------------------------------------------------------------------------------------------------------
# Paired differences (xtf.paired) from the per-question values in predictions.jsonl

# A record path → the per-question measure whose (weighted) mean it is: what a paired difference can be built for.
PER_QUESTION = {"metrics.accuracy": "correct", "metrics.answer_nll": "answer_nll"}
# measure → (display name, unit, lower is better)
MEASURES = {"answer_nll": ("answer NLL", " nats/token", True), "correct": ("accuracy", "", False)}


def primary_correct_field(record: dict) -> str | None:
    """The predictions.jsonl field whose mean is metrics.accuracy: the protocol's primary lm-eval metric
    (`primary`: accuracy_<name> → correct_<name>) or its first extractor (exact match); None for other protocols."""
    protocol = record.get("eval_protocol") or {}
    if isinstance(protocol.get("primary"), str):
        return "correct_" + protocol["primary"].removeprefix("accuracy_")
    extractors = protocol.get("extractors")
    return f"correct_{extractors[0]}" if extractors else None


def question_values(folder, record: dict) -> dict[str, dict]:
    """A run's per-question values from `folder`/predictions.jsonl: {"correct": {question id: (0 or 1, 1)},
    "answer_nll": {question id: (nats/token, answer tokens)}} (value, weight: xtf.paired.paired_arrays). A
    measure the run did not record per question (a run made before xtf wrote them, or a protocol without it) is
    absent, and so is a correctness whose mean is not the record's accuracy (never paired on a mismatch)."""
    try:
        rows = [json.loads(line) for line in (Path(folder) / "predictions.jsonl").read_text().splitlines() if line]
    except (OSError, json.JSONDecodeError):
        return {}
    out = {}
    nll = {str(r["id"]): (r["answer_nll"], r["answer_tokens"]) for r in rows if r.get("answer_nll") is not None}
    if nll:
        out["answer_nll"] = nll
    field, accuracy = primary_correct_field(record), (record.get("metrics") or {}).get("accuracy")
    correct = {str(r["id"]): (float(bool(r[field])), 1.0) for r in rows if field in r}
    if correct and accuracy is not None and len(correct) == len(rows) \
            and abs(np.mean([v for v, _ in correct.values()]) - accuracy) < 1e-9:
        out["correct"] = correct
    return out


def paired_measure(measure: str, a_by_seed: dict, b_by_seed: dict, name_a: str,
                   name_b: str) -> tuple[str, paired.PairedDiff | None]:
    """One measure's paired difference name_a − name_b and whether its CI excludes 0, in words; or why not shown."""
    label, unit, lower_better = MEASURES[measure]
    try:
        va, vb, wa, wb, seeds = paired.paired_arrays(a_by_seed, b_by_seed, name_a, name_b)
    except paired.PairingError as e:
        return f"  {label}: not paired: {e}", None
    refusal = paired.accuracy_refusal(va, vb) if measure == "correct" else None
    if refusal:
        return f"  {label}: not shown: {refusal}", None
    d = paired.paired_bootstrap(va, vb, wa, wb, strata=seeds)
    return (f"  {label}: {d.diff:+.4f}{unit}, {d.level:.0%} CI [{d.low:+.4f}, {d.high:+.4f}]; "
            f"{paired.verdict(d, name_a, name_b, lower_better)}"), d


def paired_lines(folder: Path, records: list[dict], baseline: str) -> list[str]:
    """Each other method − `baseline`, per model, task and train mode, over the seeds both have (xtf.paired)."""
    found: dict[tuple, dict[str, dict[int, list[dict]]]] = {}
    for r in records:
        where = (r["model"], r["task"], r.get("train"))
        found.setdefault(where, {}).setdefault(r["method"], {}).setdefault(r["seed"], []).append(r)
    out = [f"paired differences to {baseline} on the same evaluated questions (xtf.paired):"]
    for where, methods in found.items():
        for method, seeds in methods.items():
            for seed, rs in seeds.items():
                if len(rs) > 1:  # e.g. runs with other settings (make run ARGS=...) in the same folder
                    out.append(f"  not paired: {', '.join(map(str, where))}, {method} seed {seed} has {len(rs)} runs "
                               f"in {folder} ({', '.join(r['run_id'] for r in rs)}): which one is meant is ambiguous")
        runs = {m: {s: rs[0] for s, rs in seeds.items() if len(rs) == 1} for m, seeds in methods.items()}
        if baseline not in methods or len(methods) == 1:
            out.append(f"  {', '.join(map(str, where))}: " + (f"no {baseline} run to compare with" if baseline
                       not in methods else f"only {baseline} runs, nothing to compare with them"))
            continue
        for method in methods:
            if method != baseline:
                out += _pair_lines(folder, where, method, runs[method], baseline, runs[baseline])
    return out


def benchmarked(record: dict) -> bool:
    """Whether the run ran its task's benchmark protocol (False under eval.benchmark=false, xtf.evaluate)."""
    return (record.get("config", {}).get("eval") or {}).get("benchmark", True) is not False


def _pair_lines(folder: Path, where: tuple, method: str, runs: dict, baseline: str, base_runs: dict) -> list[str]:
    """A head line (what is compared and how) and one line per measure (MEASURES)."""
    ours, base = ({s: question_values(folder / r["run_id"], r) for s, r in rs.items()} for rs in (runs, base_runs))
    seeds = sorted(set(ours) & set(base))
    head = f"{method} − {baseline} ({', '.join(map(str, where))}, seed{'s' * (len(seeds) > 1)} " \
           f"{', '.join(map(str, seeds)) or 'none in common'})"
    lines, first = [], None
    for measure, (label, _, _) in MEASURES.items():
        if measure == "correct" and all(not benchmarked(r) for rs in (runs, base_runs) for r in rs.values()):
            lines.append(f"  {label}: not measured (eval.benchmark=false: the reference answers' NLL alone)")
            continue
        lacking = [r["run_id"] for side, rs in ((ours, runs), (base, base_runs)) for s, r in rs.items()
                   if s in seeds and measure not in side[s]]
        if lacking:
            lines.append(f"  {label}: not recorded per question in the predictions.jsonl of {', '.join(lacking)} (a "
                         f"run made before xtf wrote them, or a protocol without {label}; force=true reruns a run)")
            continue
        line, d = paired_measure(measure, {s: ours[s][measure] for s in seeds},
                                 {s: base[s][measure] for s in seeds}, method, baseline)
        if d is not None and first is not None and d.n_questions != first.n_questions:
            line += f" ({d.method()})"
        first = first or d
        lines.append(line)
    return [head + (f": {first.method()}" if first else "")] + lines


def complete_records(folder: Path) -> list[dict]:
    records = []
    for path in sorted(Path(folder).glob("*/results.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if r.get("status") == "complete":
            records.append(r)
    return records


def _cols(texts: list[str], widths: list[int]) -> str:
    return "".join(f" {t:<{w}}" for t, w in zip(texts, widths))


def compare_lines(folder: Path, baseline: str | None = None) -> list[str]:
    """One line per complete run under `folder` (an experiment folder), sorted by model, task, method, seed and
    the config keys that vary between such runs (xtf.varying: a column each; a run id column for rows still alike);
    with a `baseline` method, then each other method's paired difference to it (`paired_lines`)."""
    records = complete_records(folder)
    if not records:
        return [f"no complete runs under {folder}"]
    keys, texts = varying_columns(records)
    rows = [((r["model"], r["task"], r["method"], r["seed"]), t, r) for r, t in zip(records, texts)]
    if len({(c, tuple(v)) for c, v, _ in rows}) < len(rows):  # the same settings (other code): the run id differs
        keys, rows = keys + ["run id"], [(c, v + [r.get("run_id", "?")], r) for c, v, r in rows]
    rows.sort(key=lambda row: (*row[0], *map(natural, row[1])))
    records = [r for _, _, r in rows]
    widths = [max(len(k), *(len(v[i]) for _, v, _ in rows)) for i, k in enumerate(keys)]
    head = f"{'model':<14} {'task':<9} {'method':<12} {'seed':>4}{_cols(keys, widths)} {'kept':>7} " \
           f"{'accuracy [95% CI] (n)':<36} {'ref-NLL':>8} {'minutes':>7}"
    out = [head, "-" * len(head)]
    any_online = False
    for _, values, r in rows:
        m = r.get("metrics", {})
        nll = m.get("answer_nll")
        minutes = sum((r.get("timings") or {}).values()) / 60
        kept, online = kept_fraction(r)
        any_online |= online
        kept_text = ("—" if kept is None else f"{kept:.3f}") + ("*" if online else " ")
        out.append(f"{r['model']:<14} {r['task']:<9} {r['method']:<12} {r['seed']:>4}{_cols(values, widths)} "
                   f"{kept_text:>7} {accuracy_text(m) if benchmarked(r) else 'not measured':<36} "
                   f"{(f'{nll:.4f}' if nll is not None else '—'):>8} {minutes:>7.1f}")
    if any_online:
        out.append("* kept fraction chosen online during training (training.online.kept_fraction; for a "
                   "loss-weighting rule, the mean weight): the offline mask keeps every answer token")
    if baseline is not None:
        out += paired_lines(Path(folder), records, baseline)
    return stale_code_lines(records, str(folder)) + out  # first: seen before the numbers


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else list(argv)
    baseline = None
    if "--baseline" in args[:-1]:
        at = args.index("--baseline")
        baseline = args[at + 1]
        del args[at: at + 2]
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m xtf.summary <experiment folder, e.g. results/quickstart> [--baseline <method, e.g. "
              "normal>]", file=sys.stderr)
        raise SystemExit(2)
    print("\n".join(compare_lines(Path(args[0]), baseline)))


if __name__ == "__main__":
    main()
