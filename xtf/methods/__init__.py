"""The methods: one module each (or one per family), one registry (xtf.methods.registry).

A method module holds its rule (an offline mask, an online selection or an augmentation), the scores it needs, the
`method.*` keys it reads, the score its detection AUROC is reported for, its validation and whatever else
`registry.Method` asks, and ends with `METHODS = (Method(...), ...)`. This file registers the modules below; the
numeric rules they share are xtf.rules, their token bookkeeping xtf.methods.tokens. docs/add-a-method.md walks
through adding one (a module, a conf/method/<name>.yaml, its tests).

    from xtf import methods
    methods.get("tc").needs            # ("nll", "ref_nll")
    methods.names("online")            # ["dft", "profit", "slm", "sstoken"]
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
    scores_needed,
)

# In the order `xtf --help` and the docs list them.
MODULES = (baselines, xtf, tc, slm, df, stm, sstoken, profit, dft, da, random, oracle)
for _module in MODULES:
    for _method in _module.METHODS:
        register(_method)
