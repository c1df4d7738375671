"""What a run tells a researcher, printed at its end (and again when a complete run is skipped), and a
side-by-side view of the runs of one experiment folder.

    python -m xtf.summary results/quickstart            # every complete run in the folder, one line each

Everything printed comes from the run's record (results.json), so a skipped run prints the same summary.
Accuracy carries a 95 % Wilson score interval and its n: with a few dozen test examples the interval is wide,
and saying so is the point. The kept fraction of an online method (xtf.online) is the one it chose during training,
labelled as such (`kept_fraction`): its offline mask keeps every answer token, so "kept 1.000" would mislead.
A record made by other code than this (its `code` hashes, xtf.identity.code_hashes) says so in every view
(`code_warning`): the summary, this comparison and `make tables` (xtf.tables).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np

from xtf import official
from xtf.identity import changed_stages, code_hashes

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
    from xtf.explain import most_common_tokens

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
    from xtf import tasks

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


def compare_lines(folder: Path) -> list[str]:
    """One line per complete run under `folder` (an experiment folder), sorted by method and seed."""
    records = []
    for path in sorted(Path(folder).glob("*/results.json")):
        try:
            r = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if r.get("status") == "complete":
            records.append(r)
    if not records:
        return [f"no complete runs under {folder}"]
    records.sort(key=lambda r: (r["model"], r["task"], r["method"], r["seed"]))
    head = f"{'model':<14} {'task':<9} {'method':<12} {'seed':>4} {'kept':>7} {'accuracy [95% CI] (n)':<36} " \
           f"{'ref-NLL':>8} {'minutes':>7}"
    out = [head, "-" * len(head)]
    any_online = False
    for r in records:
        m = r.get("metrics", {})
        nll = m.get("answer_nll")
        minutes = sum((r.get("timings") or {}).values()) / 60
        kept, online = kept_fraction(r)
        any_online |= online
        kept_text = ("—" if kept is None else f"{kept:.3f}") + ("*" if online else " ")
        out.append(f"{r['model']:<14} {r['task']:<9} {r['method']:<12} {r['seed']:>4} "
                   f"{kept_text:>7} {accuracy_text(m):<36} "
                   f"{(f'{nll:.4f}' if nll is not None else '—'):>8} {minutes:>7.1f}")
    if any_online:
        out.append("* kept fraction chosen online during training (training.online.kept_fraction; for a "
                   "loss-weighting rule, the mean weight): the offline mask keeps every answer token")
    return stale_code_lines(records, str(folder)) + out  # first: seen before the numbers


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not Path(args[0]).is_dir():
        print("usage: python -m xtf.summary <experiment folder, e.g. results/quickstart>", file=sys.stderr)
        raise SystemExit(2)
    print("\n".join(compare_lines(Path(args[0]))))


if __name__ == "__main__":
    main()
