"""Ground-truth noise through tokenisation, the oracle, and detection metrics in a run's record."""

import numpy as np
import pytest
from conftest import compose

from xtf.config import ModelConfig
from xtf.data import tokenize, tokenize_cached
from xtf.methods.oracle import oracle
from xtf.pipeline import run
from xtf.validate import validate

NOISY = ["task.options.filler_rate=0.3", "task.options.distractor_rate=0.2", "task.options.corruption_rate=0.2"]


@pytest.fixture(scope="module")
def tokenizer(session_cache):
    from xtf.models import load_tokenizer
    from xtf.tiny import build_tiny

    cfg = ModelConfig(name="t", tiny="random", hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128,
                      vocab_size=1024, pretrain_steps=0)
    return load_tokenizer(str(build_tiny(cfg, str(session_cache))))


def test_truth_lands_on_the_injected_tokens(tokenizer):
    response = " Ann starts with 12 apples. I hope this helps! 12 + 7 = 21. The answer is 19."
    filler = response.index("I hope")
    wrong = response.index("21")
    example = {"id": "x", "prompt": "Question: ?\nAnswer:", "response": response,
               "noise_spans": [[filler, filler + len("I hope this helps!"), "filler"],
                               [wrong, wrong + 2, "corruption"]]}
    (row,), _ = tokenize(tokenizer, [example], 512, "right", False)
    ids = row["input_ids"]
    text_of = {k: tokenizer.decode([t for t, f in zip(ids, flags) if f]) for k, flags in row["truth"].items()}
    assert text_of["filler"].strip() == "I hope this helps!"
    assert text_of["corruption"].strip() == "21"
    assert len(row["truth"]["filler"]) == len(ids) and not any(row["truth"]["filler"][: 5])   # prompt: never
    assert not row["truth"]["filler"][-1]                                                    # EOS: never


def test_truth_survives_the_token_cache(tokenizer, tmp_path):
    task = compose(NOISY)
    from xtf.tasks import synth

    examples = synth.load(synth.Options(n_train=40, n_test=4, filler_rate=0.3, corruption_rate=0.2)).splits["train"]
    direct, _ = tokenize(tokenizer, examples, 512, "right", False)
    cached, _ = tokenize_cached(tokenizer, examples, 512, "right", False, str(tmp_path), "train")
    again, _ = tokenize_cached(tokenizer, examples, 512, "right", False, str(tmp_path), "train")
    assert direct == cached == again and sum("truth" in r for r in direct) == 40
    assert task.task.options.filler_rate == 0.3


def test_oracle_masks_exactly_the_truth():
    rows = [{"id": "a", "input_ids": list(range(6)), "response_mask": [0, 0, 1, 1, 1, 1],
             "truth": {"filler": [0, 0, 0, 1, 1, 0], "corruption": [0, 0, 1, 0, 0, 0]}},
            {"id": "b", "input_ids": list(range(3)), "response_mask": [0, 1, 1]}]
    keeps, _, _ = oracle(rows, {}, None, 0)
    assert [k.tolist() for k in keeps] == [[False, False, False, False, False, True], [False, True, True]]
    with pytest.raises(ValueError, match="ground-truth"):
        oracle([rows[1]], {}, None, 0)


def test_noisy_runs_record_detection_and_the_oracle_is_perfect(run_overrides):
    base = [*run_overrides, "model.pretrain_steps=40", "task.options.n_train=48", "task.options.n_test=8", *NOISY]
    r = run(validate(compose([*base, "method=oracle"])))
    assert r["detection"]["overall"]["mask"]["f1"] == 1.0
    assert {"filler", "distractor", "corruption"} <= set(r["detection"])
    x = run(validate(compose([*base, "method=xtf"])))
    for attr in ("ri", "kn", "tr"):
        assert 0.0 <= x["detection"]["overall"][attr]["auroc"] <= 1.0
    clean = run(validate(compose([*run_overrides, "model.pretrain_steps=40", "task.options.n_train=48",
                                  "task.options.n_test=8", "method=xtf"])))
    assert clean["detection"] is None
    assert np.isclose(r["mask"]["kept_fraction"], 1 - r["detection"]["overall"]["n_noise_tokens"]
                      / r["detection"]["overall"]["n_tokens"])


def test_tc_self_evolving_rounds(run_overrides):
    r = run(validate(compose([*run_overrides, "model.pretrain_steps=40", "task.options.n_train=48",
                              "task.options.n_test=4", "method=tc", "method.rounds=3", "method.reference_warmup=8"])))
    # TC's chain: part 0 (a third of the rows) warms the reference up on every answer token, parts 1-2 keep 60 %
    rule = r["mask"]["rule"]
    assert rule["evolve"] == "chain" and rule["warmup_rows"] >= 1 and "reference" in r["scoring"]["computed"]
    assert 0.65 < r["mask"]["kept_fraction"] < 0.8


@pytest.mark.parametrize("task", [["task=synth", "task.options.filler_rate=0.5"],
                                  ["task=gsm8k", "task.options.noise_filler_rate=0.5"]])
def test_dev_rows_are_judged_on_their_clean_answers(task):
    """Noise is injected into training answers; a row carved off for dev (threshold choice) must be evaluated on
    its clean answer (answer NLL on dev would otherwise reward learning the noise), while the training rows keep
    their noise, spans and nothing else."""
    from conftest import require_shared_data

    from xtf.data import select

    paths = [f"paths.data_dir={require_shared_data()}"] if task[0] == "task=gsm8k" else []
    sel = select(validate(compose([*task, *paths, "data.dev_size=20", "data.limit=40", "eval.split=dev"])))
    assert any(e.get("noise_spans") for e in sel.train), "the training rows carry the injected noise"
    assert all("clean_response" not in e for e in sel.train)
    assert sel.dev and sel.eval == sel.dev[: len(sel.eval)]
    assert all("noise_spans" not in e and "clean_response" not in e for e in sel.dev)
    noisy_source = {e["id"]: e for e in select(validate(compose([*task, *paths, "data.limit=100000"]))).train}
    changed = [e for e in sel.dev if noisy_source.get(e["id"], e)["response"] != e["response"]]
    assert changed, "some dev rows had noise in the training split, and it is gone"
