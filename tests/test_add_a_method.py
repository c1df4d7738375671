"""The extension point, proven: a method defined outside the package (one module, one YAML) is registered the
documented way (docs/add-a-method.md walks through this very example) and runs end to end on the tiny model.

    .venv/bin/python -m pytest -q tests/test_add_a_method.py
"""

from __future__ import annotations

import importlib.util
import sys

import pytest
from conftest import ROOT, compose

from xtf import methods
from xtf.results import run_dir
from xtf.validate import validate

# The whole method: its rule, the score it reads, its registry entry (docs/add-a-method.md, step 1).
MODULE = '''"""median (a toy rule): no loss on the answer tokens whose base-model NLL is above their row's median."""

from __future__ import annotations

import numpy as np

from xtf.methods.registry import Method
from xtf.methods.tokens import answer, protected, structural


def mask(rows, scores, method, seed, special=frozenset()):
    """Per row: mask the answer tokens above the median of the row's answer-token NLL (the base model's)."""
    keeps, flagged = [], 0
    for row, nll in zip(rows, scores["nll"]):
        ans = answer(row)
        noisy = ans & (np.asarray(nll) > np.median(np.asarray(nll)[ans]))
        if method.exempt_special and special:
            noisy &= ~structural(row, special)       # EOS keeps its loss (method.exempt_special)
        noisy &= ~protected(row, method)             # the answer format too (method.protect_answer)
        flagged += int(noisy.sum())
        keeps.append(ans & ~noisy)
    return keeps, {}, {"flagged": flagged}


METHOD = Method(name="median", kind="offline", summary="mask answer tokens above their row's median NLL",
                needs=("nll",), mask=mask, detection_score="nll")
METHODS = (METHOD,)
'''
# Its config (step 2): conf/method/median.yaml in the project; here a config folder of its own, on Hydra's search path.
YAML = "# median (toy): mask the answer tokens above their row's median base NLL.\nname: median\n"


@pytest.fixture
def median(tmp_path):
    """The module imported from a temporary file and registered (step 3), then unregistered."""
    (tmp_path / "median.py").write_text(MODULE)
    (tmp_path / "conf" / "method").mkdir(parents=True)
    (tmp_path / "conf" / "method" / "median.yaml").write_text(YAML)
    spec = importlib.util.spec_from_file_location("median_method", tmp_path / "median.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    methods.register(module.METHOD)
    yield tmp_path
    methods.METHODS.pop("median")
    sys.modules.pop("median_method", None)


def test_the_example_module_is_small_and_is_the_one_the_docs_walk_through():
    assert len(MODULE.splitlines()) <= 40
    page = (ROOT / "docs" / "add-a-method.md").read_text()
    assert f"```python\n{MODULE}```" in page and f"```yaml\n{YAML}```" in page


def test_a_method_in_its_own_module_runs_end_to_end_on_tiny(median, run_overrides):
    from xtf.pipeline import run

    before = run_dir(validate(compose([*run_overrides, "method=normal"]))).name
    cfg = validate(compose([*run_overrides, f"hydra.searchpath=[file://{median / 'conf'}]", "method=median",
                            "task.options.n_train=32", "task.options.n_test=8", "task.options.filler_rate=0.2",
                            "model.pretrain_steps=40", "train.batch_size=8"]))
    assert methods.scores_needed(cfg.method) == ("nll",)
    assert methods.method_keys(cfg.method) == methods.COMMON_KEYS          # no knob of its own
    record = run(cfg)
    assert record["method"] == "median" and record["scoring"]["computed"] == ["forward"]
    assert 0.3 < record["mask"]["kept_fraction"] < 0.8 and record["mask"]["rule"]["flagged"] > 0
    assert record["training"]["steps"] > 0 and record["metrics"]
    assert record["detection"]["overall"]["method_score"]["name"] == "nll"   # its detection score, oriented
    # The run-id rule: a new method adds runs, it changes no existing run's id.
    assert run_dir(validate(compose([*run_overrides, "method=normal"]))).name == before


def test_a_name_is_registered_once(median):
    with pytest.raises(ValueError, match="registered already"):
        methods.register(methods.Method(name="median", kind="baseline", summary="another"))
