"""SLM (Rho-1, online): each batch keeps the top `method.keep_ratio` of its trainable tokens by excess loss (current
model − reference model); the reference is the one TC uses (xtf.method_scores.reference_nll, never evolved).

    python run.py method=slm method.keep_ratio=0.6
"""

from __future__ import annotations

import torch

from xtf.lm_loss import IGNORE
from xtf.methods.registry import Method


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


# Per-batch selection with ref_nll; nll (base losses) only for the detection report's excess loss at step 0 ("tc",
# whose low end SLM drops).
METHOD = Method(name="slm", kind="online", summary="per batch, keep the top tokens by current − reference loss",
                needs=("ref_nll", "nll"), keys=("keep_ratio",), select=select, detection_score="tc")
METHODS = (METHOD,)
