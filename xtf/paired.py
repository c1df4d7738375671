"""Paired differences between two runs evaluated on the same test questions, with a bootstrap confidence
interval: an answer ("XTF − normal = −0.021 nats/token, 95 % CI [−0.034, −0.008]: the interval excludes 0")
instead of two numbers side by side. Pure numeric; the callers read the per-question values from the runs'
predictions.jsonl (xtf.summary.question_values) and print (xtf.summary, `make run`) or tabulate (xtf.table_ci,
`make tables`) what comes back.

The method, in one place:
- Pairing is by question id (`pair`): two runs are compared only on exactly the same questions; different id sets
  are refused (PairingError), never silently intersected.
- The statistic is the difference of the two runs' (weighted) means over the paired questions: for accuracy the
  plain mean of 0/1 correctness; for answer NLL the token-weighted mean (weights = each question's answer tokens),
  which is exactly the recorded `metrics.answer_nll`, so the point estimate is the difference of the two
  numbers the summary prints.
- Paired bootstrap: question indices are resampled with replacement (`N_RESAMPLES` resamples, a numpy Generator
  seeded with `SEED`); each resample takes the SAME indices for both runs, so what the questions share (an easy
  question is easy for both) cancels. The interval is the percentile interval (2.5th and 97.5th percentile of
  the resampled differences for 95 %).
- Several seeds (a table cell: `strata` = the seed of each paired value): values are paired by (seed, question)
  where both sides have that seed, and questions are resampled WITHIN each seed (each seed keeps its number of
  questions in every resample); the statistic pools every (seed, question) pair, so with the same questions in
  every seed it is the mean over seeds of the per-seed differences. The interval therefore covers question
  sampling given these seeds; seed-to-seed training noise shows in the tables' "± std", not in this interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_RESAMPLES = 10_000
SEED = 0
LEVEL = 0.95
MIN_ACCURACY_QUESTIONS = 20   # fewer paired questions: an accuracy difference is not reported (moves in 1/n steps)
_CHUNK = 500                  # resamples drawn at once: bounds memory at _CHUNK × n indices


class PairingError(ValueError):
    """Two runs cannot be paired (different question ids, no common seed): the message says which and why."""


def pair(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> list[str]:
    """The question ids of `a` and `b` ({question id: value}), sorted; PairingError naming a few ids when the two
    id sets differ (a paired difference is over exactly the same questions)."""
    ids_a, ids_b = {str(k) for k in a}, {str(k) for k in b}
    if ids_a != ids_b:
        only_a, only_b = sorted(ids_a - ids_b), sorted(ids_b - ids_a)
        raise PairingError(f"cannot pair {name_a} with {name_b}: their question ids differ ({len(ids_a)} vs "
                           f"{len(ids_b)} questions; only in {name_a}: {len(only_a)} {only_a[:3]}; only in "
                           f"{name_b}: {len(only_b)} {only_b[:3]}): compare runs evaluated on the same questions")
    if not ids_a:
        raise PairingError(f"cannot pair {name_a} with {name_b}: no question recorded")
    return sorted(ids_a)


@dataclass(frozen=True)
class PairedDiff:
    """diff = mean(a) − mean(b) over the paired questions; [low, high] its percentile bootstrap interval."""
    diff: float
    low: float
    high: float
    n_questions: int   # paired (seed, question) values
    n_strata: int      # seeds (1 for two single runs)
    n_resamples: int
    seed: int
    level: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def method(self) -> str:
        """The method in one line, e.g. "paired bootstrap over 40 questions, 10,000 resamples, seed 0"."""
        over = (f"{self.n_questions} questions" if self.n_strata == 1 else
                f"{self.n_questions} (seed, question) pairs of {self.n_strata} seeds, questions resampled within "
                f"each seed")
        return f"paired bootstrap over {over}, {self.n_resamples:,} resamples, seed {self.seed}"


def _weighted_means(values: np.ndarray, weights: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per resample (rows of idx [resamples, n]): sum(w·v) / sum(w) over the drawn questions."""
    return (values * weights)[idx].sum(axis=1) / weights[idx].sum(axis=1)


def paired_bootstrap(a, b, weights_a=None, weights_b=None, strata=None, n_resamples: int = N_RESAMPLES,
                     seed: int = SEED, level: float = LEVEL) -> PairedDiff:
    """The paired difference mean(a) − mean(b) and its percentile bootstrap interval (module docstring).

    a, b: [n] values of the same n questions, in the same order (`pair` gives the order); weights_*: [n]
    per-question weights of each side (answer tokens for the token-weighted answer NLL; None: 1 each);
    strata: [n] labels (the seed of each value): questions are resampled within each label."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n == 0 or len(b) != n:
        raise PairingError(f"paired values must be two non-empty arrays of one length, got {len(a)} and {len(b)}")
    wa = np.ones(n) if weights_a is None else np.asarray(weights_a, float)
    wb = np.ones(n) if weights_b is None else np.asarray(weights_b, float)
    labels = np.zeros(n, int) if strata is None else np.unique(np.asarray(strata), return_inverse=True)[1]
    order = np.argsort(labels, kind="stable")  # each stratum contiguous: its indices are offset + [0, size)
    a, b, wa, wb, labels = a[order], b[order], wa[order], wb[order], labels[order]
    sizes = np.bincount(labels)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(seed)
    stats = []
    for start in range(0, n_resamples, _CHUNK):
        m = min(_CHUNK, n_resamples - start)
        idx = np.concatenate([off + rng.integers(0, size, (m, size)) for off, size in zip(offsets, sizes)], axis=1)
        stats.append(_weighted_means(a, wa, idx) - _weighted_means(b, wb, idx))
    every = np.arange(n)[None, :]
    diff = float((_weighted_means(a, wa, every) - _weighted_means(b, wb, every))[0])
    low, high = np.quantile(np.concatenate(stats), [(1 - level) / 2, (1 + level) / 2])
    return PairedDiff(diff, float(low), float(high), n, len(sizes), n_resamples, seed, level)


def paired_arrays(a_by_seed: dict, b_by_seed: dict, name_a: str = "A", name_b: str = "B") -> tuple:
    """(values_a, values_b, weights_a, weights_b, seeds) as arrays over the (seed, question) pairs of the seeds both
    sides have. a_by_seed, b_by_seed: {seed: {question id: (value, weight)}}; PairingError when no seed is
    common or a seed's question ids differ."""
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    if not seeds:
        raise PairingError(f"cannot pair {name_a} with {name_b}: no seed in common ({name_a}: "
                           f"{sorted(a_by_seed)}, {name_b}: {sorted(b_by_seed)})")
    rows = []
    for seed in seeds:
        a, b = ({str(k): v for k, v in side[seed].items()} for side in (a_by_seed, b_by_seed))
        tag = f" seed {seed}" if len(seeds) > 1 else ""
        rows += [(*a[q], *b[q], seed) for q in pair(a, b, name_a + tag, name_b + tag)]
    va, wa, vb, wb, strata = (np.asarray(col) for col in zip(*rows))
    return va.astype(float), vb.astype(float), wa.astype(float), wb.astype(float), strata


def accuracy_refusal(correct_a, correct_b) -> str | None:
    """Why an accuracy difference says nothing here (None when it may be reported): no correct answer in either
    run (0 − 0, an interval of [0, 0] that only reflects the floor), or fewer than MIN_ACCURACY_QUESTIONS."""
    n = len(correct_a)
    if not (np.any(correct_a) or np.any(correct_b)):
        return f"neither run answered any of the {n} questions correctly"
    if n < MIN_ACCURACY_QUESTIONS:
        return f"only {n} paired questions (at least {MIN_ACCURACY_QUESTIONS} needed)"
    return None


def verdict(d: PairedDiff, name_a: str, name_b: str, lower_is_better: bool) -> str:
    """Whether the interval excludes zero, in words."""
    pct = f"{d.level:.0%}"
    if not d.excludes_zero:
        return (f"the {pct} CI includes 0: no difference between {name_a} and {name_b} is detectable at this n")
    better = (d.diff < 0) == lower_is_better
    return (f"the {pct} CI excludes 0: {name_a} is {'lower' if d.diff < 0 else 'higher'} than {name_b} "
            f"({'better' if better else 'worse'})")
