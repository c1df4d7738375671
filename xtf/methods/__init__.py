"""The methods: one module each (or one per family), one registry (xtf.methods.registry).

A method module holds the method's declaration: its rule (an offline mask, an online selection or an augmentation),
the scores it needs, the `method.*` keys it reads and their config section (a frozen dataclass such as STMConfig,
which xtf.config_sections' MethodConfig imports from here), the score its detection AUROC is reported for, its
validation and whatever else `registry.Method` asks, and ends with `METHODS = (Method(...), ...)`. This file
registers the modules below; the numeric rules they share are xtf.rules, their token bookkeeping
xtf.methods.tokens. docs/add-a-method.md walks through adding one (a module, a conf/method/<name>.yaml, its tests).

No torch here. Config validation (xtf.config, xtf.validate, xtf.unread) imports this package, and a bad value should
be reported in a second, not after torch has loaded (tests/test_architecture.py checks it in a fresh interpreter).
So the package, every module it registers and everything they import load neither torch nor transformers. What a
method runs with torch or transformers is named by a "module:attribute" path instead of imported: an online
method's `select` and `signal_providers` (its torch code: xtf/methods/<name>_step.py, e.g.
"xtf.methods.profit_step:select"), DA's `augment` ("xtf.augment:paraphrase"). `resolve(path)` imports it where it
runs: xtf.online when training starts, xtf.pipeline before tokenising. tests/test_architecture.py checks that every
path resolves to a callable and that those imports close no import circle.

    from xtf import methods
    methods.get("tc").needs            # ("nll", "ref_nll")
    methods.names("online")            # ["dft", "profit", "slm", "sstoken"]
    methods.resolve(methods.get("dft").select)   # xtf.methods.dft_step.select (imports torch)
"""
from __future__ import annotations

from xtf.methods import baselines, da, df, dft, oracle, profit, random, slm, sstoken, stm, tc, xtf
from xtf.methods.registry import (  # noqa: F401 - the registry's interface, re-exported
    COMMON_KEYS,
    METHODS,
    REFERENCE_KEYS,
    Method,
    get,
    method_keys,
    method_score,
    names,
    register,
    resolve,
    scores_needed,
)

# In the order `xtf --help` and the docs list them.
MODULES = (baselines, xtf, tc, slm, df, stm, sstoken, profit, dft, da, random, oracle)
for _module in MODULES:
    for _method in _module.METHODS:
        register(_method)
