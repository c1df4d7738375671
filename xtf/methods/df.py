"""DF, sample-level filtering: drop the `method.drop_ratio` of samples with the highest mean answer-token loss under
the base model (the samples it finds most anomalous); keep every answer token of the others.

    python run.py method=df method.drop_ratio=0.1
"""

from __future__ import annotations

import numpy as np

from xtf import rules
from xtf.methods.registry import Method
from xtf.methods.tokens import answer


def mask(rows, scores, method, seed, special=frozenset()):
    """A dropped sample is dropped whole, protected tokens too: DF judges samples, not tokens."""
    mean_loss = np.array([nll[answer(r)].mean() for r, nll in zip(rows, scores["nll"])])
    keep_sample = rules.df_keep_samples(mean_loss, method.drop_ratio)
    keeps = [answer(r) & keep for r, keep in zip(rows, keep_sample)]
    return keeps, {}, {"drop_ratio": method.drop_ratio, "dropped_samples": int((~keep_sample).sum())}


METHOD = Method(
    name="df", kind="offline", summary="drop the samples with the highest mean answer-token loss under the base",
    needs=("nll",), keys=("drop_ratio",), mask=mask, detection_score="nll",
    rows_factor=lambda method: 1 - method.drop_ratio)
METHODS = (METHOD,)
