"""SLM's online rule in torch (the method: xtf/methods/slm.py, which names `select` by its path; xtf.online imports
this module when training starts).
"""

from __future__ import annotations

import torch

from xtf.lm_loss import IGNORE


def slm_select(nll: torch.Tensor, ref_nll: torch.Tensor, labels: torch.Tensor, keep_ratio: float) -> torch.Tensor:
    """Labels with only the top `keep_ratio` of the batch's trainable tokens by excess loss (current − reference)
    left trainable (k = round(keep_ratio · trainable tokens in the batch)). All [B, L]."""
    trainable = labels != IGNORE
    excess = torch.where(trainable, nll.detach() - ref_nll, torch.full_like(nll, float("-inf")))
    k = int(round(keep_ratio * int(trainable.sum())))
    chosen = torch.zeros_like(trainable)
    if k > 0:
        chosen.view(-1)[torch.topk(excess.view(-1), k).indices] = True
    return torch.where(chosen & trainable, labels, torch.full_like(labels, IGNORE))


def select(step, method):
    """The online rule (xtf.online.Step → labels, no weights)."""
    return slm_select(step.nll, step.cached["ref_nll"], step.labels, method.keep_ratio), None
