"""The baselines: fine-tune on every answer token (normal), for twice the epochs (normal_x2: the control for "more
training" against "better tokens"), or not at all (none: the base model is evaluated, the paper's "CA").

    python run.py method=normal          python run.py method=normal_x2          python run.py method=none

None of them masks a token (xtf.methods.tokens.keep_all_answer_tokens) or reads a score; normal_x2 differs from
normal only by its config (conf/method/normal_x2.yaml: method.epochs_factor=2).
"""

from __future__ import annotations

from xtf.methods.registry import Method

NORMAL = Method(name="normal", kind="baseline", summary="fine-tune on all answer tokens")
NORMAL_X2 = Method(name="normal_x2", kind="baseline",
                   summary="fine-tune on all answer tokens for twice the epochs (method.epochs_factor=2)")
NONE = Method(name="none", kind="baseline", summary="no fine-tuning: the base model is evaluated (the paper's CA)",
              finetunes=False)
METHODS = (NORMAL, NORMAL_X2, NONE)
