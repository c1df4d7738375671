"""ProFit's online rule in torch (the method and its keys: xtf/methods/profit.py, which names `select` by its path;
xtf.online imports this module when training starts).
"""

from __future__ import annotations

import torch

from xtf.lm_loss import IGNORE


def profit_keep(prob: torch.Tensor, threshold: float, direction: str) -> torch.Tensor:
    """ProFit's rule on p = P(gold token | prefix) under the current model: keep_higher keeps p >= threshold
    (the paper: tokens the model already finds plausible carry the signal; a token on the threshold is kept);
    keep_lower keeps the complement, p < threshold. Shape preserved, bool."""
    if direction == "keep_higher":
        return prob >= threshold
    if direction == "keep_lower":
        return prob < threshold
    raise ValueError(f"direction={direction!r}; choose keep_higher or keep_lower")


def select(step, method):
    """The online rule (xtf.online.Step → labels, no weights)."""
    keep = profit_keep(torch.exp(-step.nll), method.profit.threshold, method.profit.direction)
    return torch.where(keep, step.labels, torch.full_like(step.labels, IGNORE)), None
