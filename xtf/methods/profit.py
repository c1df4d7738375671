"""ProFit (online): p = P(gold token | prefix) under the model being trained; keep_higher trains on p >= threshold
(`method.profit.*`, ProFitConfig below). The rule, in torch: xtf/methods/profit_step.py (imported when training
starts).

    python run.py method=profit method.profit.threshold=0.1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xtf.methods.registry import Method


@dataclass(frozen=True)
class ProFitConfig:
    """ProFit (online): p = P(gold token | prefix) under the model being trained."""
    threshold: float = 0.1
    direction: Literal["keep_higher", "keep_lower"] = "keep_higher"  # keep_higher: train on p >= threshold


METHOD = Method(name="profit", kind="online", summary="per batch, train on tokens the model finds plausible",
                keys=("profit",), select="xtf.methods.profit_step:select")
METHODS = (METHOD,)
