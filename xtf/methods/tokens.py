"""Where a row's answer, protected and structural tokens are: what every mask rule of xtf/methods starts from.
Pure numpy on the tokenised rows of xtf.data (each array aligned to `input_ids`).

A keep mask is a bool array aligned to `input_ids`: keep[t] is True iff token t is an answer token that is trained
on. Prompt tokens and position 0 are never kept.
"""

from __future__ import annotations

import numpy as np


def answer(row: dict) -> np.ndarray:
    """(L,) bool: the row's answer tokens."""
    return np.asarray(row["response_mask"], dtype=bool)


def structural(row: dict, special: frozenset[int]) -> np.ndarray:
    """(L,) bool aligned to input_ids: True at structural tokens (`special`: xtf.masking.structural_ids)."""
    return np.isin(np.asarray(row["input_ids"]), np.fromiter(special, dtype=np.int64, count=len(special)))


def protected(row: dict, method) -> np.ndarray:
    """(L,) bool aligned to input_ids: the row's protected answer tokens under method.protect_answer; all False when
    the switch is off (or there is no method) or the row has none."""
    if "protected" not in row or not getattr(method, "protect_answer", False):
        return np.zeros(len(row["input_ids"]), dtype=bool)
    return np.asarray(row["protected"], dtype=bool)


def scatter(rows: list[dict], per_sample: list[np.ndarray]) -> list[np.ndarray]:
    """Answer-token arrays (one per row) → bool arrays aligned to input_ids (False off the answer)."""
    out = []
    for row, values in zip(rows, per_sample):
        full = np.zeros(len(row["input_ids"]), dtype=bool)
        full[answer(row)] = values
        out.append(full)
    return out


def keep_all_answer_tokens(rows, scores, method, seed, special=frozenset()):
    """The offline mask of a method that masks nothing before training (the baselines, the online methods, DA):
    every answer token is kept; no noisy masks, no info."""
    return [answer(r) for r in rows], {}, {}
