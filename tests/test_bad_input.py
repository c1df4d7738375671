"""The contract for bad input, one row per case: what fails (before any model is built, naming the key or the
file:line and what is allowed) and what is tolerated or recovered from (and how it shows in the record)."""

import json
import logging
import os
import time

import pytest
from conftest import compose

from xtf import data, models
from xtf.cache import atomic_write_text, cached_dir, write_manifest
from xtf.config import ConfigError
from xtf.pipeline import run
from xtf.tasks.common import DataError
from xtf.train import last_checkpoint
from xtf.validate import validate

TINY = ["model=tiny_llama", "data.limit=16", "data.eval_limit=4", "wandb.mode=disabled"]


def gsm8k_row(q: str, a: str = "5") -> str:
    return json.dumps({"question": q, "answer": f"It is {a}.\n#### {a}"}) + "\n"


def gsm8k_dir(tmp_path, train: bytes | str, test: str = gsm8k_row("test?")):
    """A local data folder with gsm8k/train.jsonl (given bytes) and a one-row test file; its paths override."""
    folder = tmp_path / "data" / "gsm8k"
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_bytes(train.encode() if isinstance(train, str) else train)
    (folder / "test.jsonl").write_text(test)
    return ["task=gsm8k", f"paths.data_dir={tmp_path / 'data'}"]


def weights_folder(tmp_path, session_cache):
    """A plain Hugging Face model folder (a random 2-layer tiny Llama), used as real weights via model.path."""
    from xtf.tiny import build_tiny

    cfg = validate(compose(TINY))
    return ["model.tiny=null", f"model.path={build_tiny(cfg.model, session_cache)}"]


def read_only_results(tmp_path, _):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root writes anyway: a results folder below a plain file is unwritable for all
        (tmp_path / "file").write_text("")
        ro = tmp_path / "file"
    return [f"paths.results_dir={ro / 'results'}"]


class ModelBuilt(AssertionError):
    pass


# (extra overrides, setup(tmp_path, cache) -> more overrides, expected error, words its message must contain)
FAILS = [
    pytest.param(["experiment=../../x"], None, ConfigError, ["experiment", "no '..'"], id="experiment-escapes"),
    pytest.param(["experiment=/tmp/abs"], None, ConfigError, ["experiment", "not absolute"], id="experiment-absolute"),
    pytest.param(["model.num_heads=0"], None, ConfigError, ["model.num_heads", ">= 1"], id="num_heads-0"),
    pytest.param(["seed=1e20"], None, ConfigError, ["seed", "int"], id="seed-float"),
    pytest.param(["seed=100000000000000000000"], None, ConfigError, ["seed", "2**32"], id="seed-huge"),
    pytest.param(["paths.results_dir=''"], None, ConfigError, ["paths.results_dir", "non-empty"],
                 id="results_dir-empty"),
    pytest.param(["device=banana"], None, ConfigError, ["device", "cuda:<index>"], id="device-banana"),
    pytest.param(["train.lr_scheduler=bogus"], None, ConfigError, ["train.lr_scheduler", "cosine"],
                 id="lr_scheduler-bogus"),
    pytest.param(["train.epochs=inf"], None, ConfigError, ["train.epochs", "finite"], id="epochs-inf"),
    pytest.param(["eval.sandbox.timeout_s=inf"], None, ConfigError, ["eval.sandbox.timeout_s", "finite"],
                 id="sandbox-timeout-inf"),
    pytest.param(["train.lora_alpha=-16"], None, ConfigError, ["train.lora_alpha", "> 0"], id="lora_alpha-negative"),
    pytest.param(["method=xtf", "method.finetune=false"], None, ConfigError,
                 ["method.finetune", "method=none", "score_only=true"], id="xtf-without-finetune"),
    pytest.param(["method=xtf", "method.ri.layers=[100]"], None, ConfigError, ["method.ri.layers", "-2 .. 1"],
                 id="ri-layers-tiny"),
    pytest.param(["method=xtf", "method.ri.layers=[100]"], weights_folder, ConfigError,
                 ["method.ri.layers", "num_hidden_layers", "-2 .. 1"], id="ri-layers-real-weights"),
    pytest.param(["paths.data_dir=/nonexistent"], None, ConfigError, ["paths.data_dir=/nonexistent", "does not exist"],
                 id="data_dir-missing"),
    pytest.param([], read_only_results, ConfigError, ["paths.results_dir", "cannot write"], id="results-read-only"),
    pytest.param([], lambda t, _: gsm8k_dir(t, b'{"question": "caf\xe9?", "answer": "#### 1"}\n'), DataError,
                 ["train.jsonl:1", "not UTF-8", "on_bad_row=skip"], id="non-utf8-line"),
    pytest.param([], lambda t, _: gsm8k_dir(t, gsm8k_row("a?") + "{not json\n"), DataError,
                 ["train.jsonl:2", "invalid JSON"], id="malformed-json-line"),
    pytest.param([], lambda t, _: gsm8k_dir(t, ""), DataError, ["training split", "empty"], id="empty-train-file"),
    pytest.param(["data.on_bad_row=skip"], lambda t, _: gsm8k_dir(t, "{bad\n"), DataError,
                 ["training split", "empty", "1 malformed rows skipped"], id="all-rows-skipped"),
    pytest.param(["data.max_len=8"], None, ConfigError, ["data.max_len=8", "prompt alone fills"], id="max_len-8"),
    pytest.param(["eval.benchmark=false", "eval.answer_nll=false"], None, ConfigError,
                 ["eval.benchmark=false", "eval.answer_nll=false", "eval.enabled=false"], id="benchmark-off-no-nll"),
]


@pytest.mark.parametrize("extra, setup, error, words", FAILS)
def test_bad_input_fails_before_any_model_is_built(extra, setup, error, words, run_overrides, tmp_path,
                                                   session_cache, monkeypatch):
    def no_model(*a, **k):
        raise ModelBuilt("a model was loaded before the bad input was reported")

    monkeypatch.setattr(models, "load_model", no_model)
    overrides = [*run_overrides, *TINY, *extra, *(setup(tmp_path, session_cache) if setup else [])]
    with pytest.raises(error) as e:
        run(validate(compose(overrides)))
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_unreachable_hub_fails_within_seconds(run_overrides, monkeypatch):
    """Data neither local nor offline-cached, Hub unreachable, no HF_HUB_OFFLINE: our message, no retries."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.time()
    with pytest.raises(DataError, match="Hub .* is unreachable. Point paths.data_dir"):
        run(validate(compose([*run_overrides, *TINY, "task=gsm8k", "paths.data_dir=null"])))
    assert time.time() - start < 10


# ---- tolerated or recovered: one check per case, each (tmp_path, cfg_of(overrides), caplog) ---------------------
def skipped_rows_are_counted_with_file_and_line(tmp_path, cfg_of, caplog):
    bad = gsm8k_row("one?") + "{not json\n" + gsm8k_row("two?") + '{"question": "\xff"}\n'
    cfg = cfg_of(["data.on_bad_row=skip", *gsm8k_dir(tmp_path, bad.encode("latin-1"))])
    section = data.record_section(data.select(cfg), "test")
    assert section["skipped_rows"] == 2 and section["n_train"] == 2
    assert section["skipped"][0].endswith("train.jsonl:2: invalid JSON (Expecting property name enclosed in "
                                          "double quotes)")
    assert "train.jsonl:4: not UTF-8 text (byte 0xff" in section["skipped"][1]
    # Ids count source lines, so a skipped line does not shift the ids of the rows after it.
    assert [e["id"] for e in data.select(cfg).train] == ["gsm8k-train-0", "gsm8k-train-2"]


def duplicates_are_counted_in_the_record(tmp_path, cfg_of, caplog):
    cfg = cfg_of(gsm8k_dir(tmp_path, gsm8k_row("a?") + gsm8k_row("b?") + gsm8k_row("a?")))
    section = data.record_section(data.select(cfg), "test")
    assert section["duplicate_train_rows"] == 1 and section["duplicates"] == ["gsm8k-train-2 repeats gsm8k-train-0"]
    assert "1 duplicated training rows" in caplog.text


def truncated_checkpoint_falls_back_to_the_previous(tmp_path, cfg_of, caplog):
    import torch
    from safetensors.torch import save_file

    ckpts = tmp_path / "checkpoints"
    for step in (10, 20):
        d = ckpts / f"checkpoint-{step}"
        d.mkdir(parents=True)
        save_file({"w": torch.zeros(256)}, str(d / "adapter_model.safetensors"))
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        write_manifest(d, "checkpoint")                                # sealed, as xtf.checkpoints.seal does
    weights = ckpts / "checkpoint-20" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])                    # trainer_state.json intact, weights cut
    assert last_checkpoint(ckpts) == str(ckpts / "checkpoint-10")
    assert not (ckpts / "checkpoint-20").exists()                      # removed, so the next relaunch is clean
    assert "adapter_model.safetensors has 300 bytes" in caplog.text and "falling back" in caplog.text


def malformed_manifest_triggers_a_rebuild(tmp_path, cfg_of, caplog):
    built = []

    def build(d):
        built.append(1)
        (d / "x").write_text("x")

    folder = cached_dir(tmp_path, "kind", {"v": 1}, build)
    for manifest in ([], {"files": []}, {"files": {"x": {"size": "one"}}}, {"files": {"../x": {}}}):
        (folder / "manifest.json").write_text(json.dumps(manifest))
        cached_dir(tmp_path, "kind", {"v": 1}, build)
    assert len(built) == 5 and caplog.text.count("rebuilding") == 4


def result_files_are_readable_by_others(tmp_path, cfg_of, caplog):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "results.json", "{}")
        folder = cached_dir(tmp_path, "kind", {"v": 1}, lambda d: (d / "x").write_text("x"))
    finally:
        os.umask(old)
    assert oct((tmp_path / "results.json").stat().st_mode & 0o777) == oct(0o644)
    assert oct(folder.stat().st_mode & 0o777) == oct(0o755)


@pytest.mark.parametrize("check", [skipped_rows_are_counted_with_file_and_line, duplicates_are_counted_in_the_record,
                                   truncated_checkpoint_falls_back_to_the_previous,
                                   malformed_manifest_triggers_a_rebuild, result_files_are_readable_by_others],
                         ids=lambda f: f.__name__.replace("_", "-"))
def test_tolerated_or_recovered(check, tmp_path, run_overrides, caplog):
    caplog.set_level(logging.WARNING)
    check(tmp_path, lambda extra: validate(compose([*run_overrides, *TINY, *extra])), caplog)


def test_benchmark_off_needs_every_test_row_to_carry_its_reference_answer(run_overrides):
    from xtf.evaluate import check_examples

    cfg = validate(compose([*run_overrides, *TINY, "eval.benchmark=false"]))
    check_examples(cfg, [{"id": "a", "response": "It is 5."}])  # fine
    with pytest.raises(DataError) as e:
        check_examples(cfg, [{"id": "a", "response": "It is 5."}, {"id": "q7", "response": ""}])
    assert all(w in str(e.value) for w in ("eval.benchmark=false", "1 of 2", "q7", "eval.benchmark=true"))
    check_examples(validate(compose([*run_overrides, *TINY])), [{"id": "q7"}])  # the benchmark itself: no NLL needed
