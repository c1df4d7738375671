"""DFT's online rule in torch (the method: xtf/methods/dft.py, which names `select` by its path; xtf.online imports
this module when training starts).
"""

from __future__ import annotations

import torch

from xtf.lm_loss import IGNORE


def dft_weights(nll: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each trainable token's loss weight: its own probability p = exp(-nll), detached (no gradient through the
    weight). 0 off the trainable set. [B, L]."""
    return torch.where(labels != IGNORE, torch.exp(-nll.detach()), torch.zeros_like(nll))


def select(step, method):
    """The online rule (xtf.online.Step → the same labels, per-token weights)."""
    return step.labels, dft_weights(step.nll, step.labels)
