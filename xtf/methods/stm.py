"""STM (offline): mask the answer tokens whose base-model perplexity exp(nll) is above `method.stm.threshold`
(direction mask_higher; mask_lower masks the complement, exp(nll) <= threshold). Its keys: method.stm.*
(STMConfig below).

    python run.py method=stm method.stm.threshold=2.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from xtf.methods.registry import Method
from xtf.methods.tokens import answer, protected, structural


@dataclass(frozen=True)
class STMConfig:
    """STM (offline): per-token perplexity exp(NLL) under the base model."""
    threshold: float = 2.5
    direction: Literal["mask_higher", "mask_lower"] = "mask_higher"  # mask_higher: no loss where exp(nll) > threshold


def mask(rows, scores, method, seed, special=frozenset()):
    """Per token: the perplexity of one token is exp of its NLL. Structural tokens are exempt under
    method.exempt_special, protected ones under method.protect_answer; info counts what each exempted."""
    keeps, flagged, exempted, n_protected = [], 0, 0, 0
    for r, nll in zip(rows, scores["nll"]):
        ans = answer(r)
        above = np.exp(np.asarray(nll, dtype=np.float64)) > method.stm.threshold
        noisy = ans & (above if method.stm.direction == "mask_higher" else ~above)
        if method.exempt_special and special:
            exempted += int((noisy & structural(r, special)).sum())
            noisy &= ~structural(r, special)
        n_protected += int((noisy & protected(r, method)).sum())
        noisy &= ~protected(r, method)
        flagged += int(noisy.sum())
        keeps.append(ans & ~noisy)
    return keeps, {}, {"threshold": method.stm.threshold, "direction": method.stm.direction, "flagged": flagged,
                       "exempted_structural": exempted, "exempted_protected": n_protected}


METHOD = Method(name="stm", kind="offline", summary="mask answer tokens whose base perplexity is above a threshold",
                needs=("nll",), keys=("stm",), mask=mask)
METHODS = (METHOD,)
