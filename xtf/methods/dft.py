"""DFT (Dynamic Fine-Tuning, Wu et al. 2025; online): no token is masked; each answer token's loss is weighted by
its own probability under the model being trained, detached: loss = sg(p)·(−log p). No knob. The rule, in torch:
xtf/methods/dft_step.py (imported when training starts).

    python run.py method=dft
"""

from __future__ import annotations

from xtf.methods.registry import Method

METHOD = Method(name="dft", kind="online", summary="weight each token's loss by its own (detached) probability",
                select="xtf.methods.dft_step:select")
METHODS = (METHOD,)
