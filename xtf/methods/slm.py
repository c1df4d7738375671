"""SLM (Rho-1, online): each batch keeps the top `method.keep_ratio` of its trainable tokens by excess loss (current
model − reference model); the reference is the one TC uses (xtf.method_scores.reference_nll, never evolved). The
rule, in torch: xtf/methods/slm_step.py (imported when training starts).

    python run.py method=slm method.keep_ratio=0.6
"""

from __future__ import annotations

from xtf.methods.registry import Method

# Per-batch selection with ref_nll; nll (base losses) only for the detection report's excess loss at step 0 ("tc",
# whose low end SLM drops).
METHOD = Method(name="slm", kind="online", summary="per batch, keep the top tokens by current − reference loss",
                needs=("ref_nll", "nll"), keys=("keep_ratio",), select="xtf.methods.slm_step:select",
                detection_score="tc")
METHODS = (METHOD,)
