"""DFT (Dynamic Fine-Tuning, Wu et al. 2025; online): no token is masked; each answer token's loss is weighted by
its own probability under the model being trained, detached: loss = sg(p)·(−log p). No knob.

    python run.py method=dft
"""

from __future__ import annotations

import torch

from xtf.lm_loss import IGNORE
from xtf.methods.registry import Method


def dft_weights(nll: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each trainable token's loss weight: its own probability p = exp(-nll), detached (no gradient through the
    weight). 0 off the trainable set. [B, L]."""
    return torch.where(labels != IGNORE, torch.exp(-nll.detach()), torch.zeros_like(nll))


def select(step, method):
    """The online rule (xtf.online.Step → the same labels, per-token weights)."""
    return step.labels, dft_weights(step.nll, step.labels)


METHOD = Method(name="dft", kind="online", summary="weight each token's loss by its own (detached) probability",
                select=select)
METHODS = (METHOD,)
