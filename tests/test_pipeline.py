"""End to end on tiny models: a full run, determinism, a golden check, skip-on-relaunch, every method and
train mode, real GSM8K rows, the W&B mirror, and the fast failure on missing real weights."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, compose, require_bwrap, require_shared_data

from xtf.pipeline import run
from xtf.results import run_dir
from xtf.validate import validate

# A small but real run: the tiny pre-trained base (short pre-training), 64 synth problems, 2 epochs.
TINY = ["model.pretrain_steps=40", "train.batch_size=8", "train.logging_steps=1"]
SMALL = [*TINY, "task.options.n_train=64", "task.options.n_test=16"]


def small_run(run_overrides, *extra, base=SMALL):
    return run(validate(compose([*run_overrides, *base, *extra])))


def test_default_run_end_to_end_and_its_record(run_overrides, capsys):
    record = small_run(run_overrides)
    out = capsys.readouterr().out
    assert "task=synth model=tiny method=normal" in out and "kept answer tokens: 1.000" in out and "results:" in out
    folder = run_dir(validate(compose([*run_overrides, *SMALL])))
    saved = json.loads((folder / "results.json").read_text())
    assert saved == json.loads(json.dumps(record, default=str))
    assert saved["status"] == "complete" and saved["metrics"]["n_eval"] == 16
    assert 0.0 <= saved["metrics"]["accuracy"] <= 1.0
    assert {"accuracy_strict", "accuracy_flexible"} <= set(saved["metrics"])
    assert saved["training"]["steps"] == 16 and saved["mask"]["kept_fraction"] == 1.0
    assert saved["provenance"]["git"]["sha"] and "torch" in saved["provenance"]["libraries"]
    assert saved["versions"]["tokenize"] >= 1 and saved["data"]["source"] == "generated"
    assert saved["config"]["train"]["loss_norm"] == "kept"
    lines = (folder / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == 16 and {"id", "gold", "generation"} <= set(json.loads(lines[0]))
    assert not list((folder.parents[2] / "outputs").rglob("checkpoint-*"))  # deleted once the run is complete


def test_relaunch_skips_a_complete_run_and_force_reruns_it(run_overrides, capsys):
    first = small_run(run_overrides)
    capsys.readouterr()
    again = small_run(run_overrides)
    assert "already complete, skipping" in capsys.readouterr().out and again == json.loads(json.dumps(first))
    forced = small_run(run_overrides, "force=true")
    # Same seed, same config: identical metrics and losses (determinism on CPU).
    assert forced["metrics"] == first["metrics"]
    assert forced["training"]["loss_history"] == first["training"]["loss_history"]


def test_the_same_run_in_another_experiment_is_copied_not_rerun(run_overrides, capsys, monkeypatch):
    """Experiments that share a cell (the same run id) compute it once: the second gets a copy of the record,
    marked copied_from, with its own experiment name; a partial folder of its own is replaced; force reruns."""
    from xtf import pipeline
    first = small_run(run_overrides, "experiment=first")
    capsys.readouterr()
    folder = run_dir(validate(compose([*run_overrides, *SMALL, "experiment=second"])))
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text("left by a killed run\n")
    monkeypatch.setattr(pipeline.models, "load_model", lambda *a, **k: pytest.fail("a copied run loads no model"))
    second = small_run(run_overrides, "experiment=second")
    out = capsys.readouterr().out
    assert "complete in" in out and "first/" + folder.name in out and "copied, not rerun" in out
    assert second["copied_from"] == f"first/{folder.name}" and second["experiment"] == "second"
    assert second["metrics"] == json.loads(json.dumps(first["metrics"]))
    assert json.loads((folder / "results.json").read_text())["experiment"] == "second"
    assert (folder / "predictions.jsonl").read_text() == (folder.parent.parent / "first" / folder.name /
                                                          "predictions.jsonl").read_text()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    monkeypatch.undo()
    forced = small_run(run_overrides, "experiment=second", "force=true")
    assert "copied_from" not in forced and forced["experiment"] == "second"


def test_reusing_a_record_of_other_code_warns_naming_the_stage(run_overrides, capsys, monkeypatch):
    """The run id is the config and the data/weights by content, not the code: a complete record computed under
    other rules (an older mask version) is reused, but the console says which stage changed and how to rerun."""
    from xtf import pipeline
    small_run(run_overrides)
    capsys.readouterr()
    small_run(run_overrides)
    assert "WARNING" not in capsys.readouterr().out
    monkeypatch.setattr(pipeline, "MASK_VERSION", pipeline.MASK_VERSION + 1)
    monkeypatch.setitem(pipeline.scoring.SCORER_VERSIONS, "forward", 99)
    small_run(run_overrides)
    out = capsys.readouterr().out
    assert "already complete" in out and "computed by other code" in out
    assert f"mask v{pipeline.MASK_VERSION - 1} → v{pipeline.MASK_VERSION}" in out and "scorers.forward" in out
    assert "force=true" in out


# Golden numbers: the first training losses of the seeded SMALL run. They catch silent changes to data
# generation, tokenisation, the tiny base, masking or the loss. If a change is intended, bump the version of
# the function that changed and update these numbers in the same commit.
GOLDEN_FIRST_LOSSES = [4.396, 4.4033, 4.2693]


def test_golden_first_losses(run_overrides):
    losses = [round(h["loss"], 4) for h in small_run(run_overrides)["training"]["loss_history"][:3]]
    assert losses == pytest.approx(GOLDEN_FIRST_LOSSES, abs=2e-3)


@pytest.mark.parametrize("extra, check", [
    (["method=none"], lambda r: r["training"] is None and r["metrics"]["n_eval"] == 16),
    (["method=normal_x2"], lambda r: r["training"]["steps"] == 32 and r["training"]["epochs"] == 4),
    (["train=full"], lambda r: r["config"]["train"]["mode"] == "full" and r["training"]["steps"] == 16),
    (["train.loss_norm=answer"], lambda r: r["config"]["train"]["loss_norm"] == "answer"),
    (["model=tiny_qwen2"], lambda r: r["model"] == "tiny_qwen2"),
    (["model=tiny_mistral", "model.chat_template=true"], lambda r: r["model"] == "tiny_mistral"),
])
def test_methods_train_modes_and_families_run(run_overrides, extra, check):
    assert check(small_run(run_overrides, *extra))


def test_real_gsm8k_rows_on_tiny(run_overrides):
    data_dir = require_shared_data()
    record = small_run(run_overrides, "task=gsm8k", f"paths.data_dir={data_dir}", "data.limit=16",
                       "data.eval_limit=4", "eval.max_new_tokens=16", base=TINY)
    assert record["data"]["source"].startswith("local:") and record["data"]["n_train"] == 16
    assert record["metrics"]["n_eval"] == 4 and "accuracy_flexible" in record["metrics"]
    assert record["data"]["checksums"] and record["eval_protocol"]["name"] == "lm_eval"


@pytest.mark.parametrize("task, keys, max_len", [
    ("medqa", {"accuracy_mc", "accuracy_mc_norm", "accuracy_generative"}, 384),
    ("pubmedqa", {"accuracy_decision"}, 1024),  # abstracts are long: shorter cuts every answer away
])
def test_medical_tasks_are_evaluated_through_lm_eval(run_overrides, task, keys, max_len):
    data_dir = require_shared_data()
    record = small_run(run_overrides, f"task={task}", f"paths.data_dir={data_dir}", "data.limit=8",
                       "data.eval_limit=4", f"data.max_len={max_len}", "eval.max_new_tokens=8", base=TINY)
    m = record["metrics"]
    assert keys | {"accuracy"} <= set(m) and m["n_eval"] == 4 and 0.0 <= m["accuracy"] <= 1.0
    assert record["eval_protocol"]["name"] == "lm_eval" and record["eval_protocol"]["shots"] == 0


def test_code_task_reports_pass_at_k_through_the_sandbox(run_overrides):
    """task=code end to end: MBPP train rows, HumanEval problems, n samples + greedy, every program sandboxed."""
    data_dir = require_shared_data()
    require_bwrap()
    record = small_run(run_overrides, "task=code", f"paths.data_dir={data_dir}", "data.limit=8", "data.eval_limit=3",
                       "data.max_len=256", "eval.max_new_tokens=12", "eval.n_samples=2", "eval.pass_k=[1,2]",
                       base=TINY)
    m, protocol = record["metrics"], record["eval_protocol"]
    assert {"pass@1", "pass@2", "pass@1_greedy", "accuracy"} <= set(m) and m["n_eval"] == 3
    assert all(0.0 <= m[k] <= 1.0 for k in ("pass@1", "pass@2", "pass@1_greedy"))
    assert protocol["name"] == "humaneval_pass_at_k" and protocol["sandbox"]["kind"] == "bubblewrap"
    assert protocol["n"] == 2 and protocol["k"] == [1, 2] and protocol["split"] == "test"
    lines = (run_dir(validate(compose([*run_overrides, *TINY, "task=code", f"paths.data_dir={data_dir}",
                                       "data.limit=8", "data.eval_limit=3", "data.max_len=256",
                                       "eval.max_new_tokens=12", "eval.n_samples=2", "eval.pass_k=[1,2]"])))
             / "predictions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first["task_id"] == "HumanEval/0" and len(first["samples"]) == 2
    assert all(s["status"] in ("passed", "failed", "timeout") for s in first["samples"])


def test_eval_split_dev_evaluates_the_carved_dev_set(run_overrides):
    record = small_run(run_overrides, "data.dev_size=10", "eval.split=dev")
    assert record["metrics"]["n_eval"] == 10 and record["data"]["n_dev"] == 10
    assert record["eval_protocol"]["split"] == "dev" and record["data"]["n_train"] == 54


def test_eval_benchmark_false_measures_the_reference_answers_nll_alone(run_overrides):
    """eval.benchmark=false (the quickstart's choice): no generation, the reference answers' NLL per question (what
    xtf.summary pairs), a protocol that says what was not run, and a run id of its own."""
    record = small_run(run_overrides, "eval.benchmark=false")
    m, protocol = record["metrics"], record["eval_protocol"]
    assert "accuracy" not in m and m["answer_nll"] > 0 and m["answer_nll_tokens"] > 0
    assert protocol["name"] == "answer_nll" and "eval.benchmark=false" in protocol["benchmark"]
    rows = [json.loads(line) for line in (run_dir(validate(compose([*run_overrides, *SMALL, "eval.benchmark=false"])))
                                          / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(r["answer_nll"] > 0 and "generation" not in r for r in rows)
    assert record["run_id"] != run_dir(validate(compose([*run_overrides, *SMALL]))).name


def test_wandb_offline_mirror_is_written_and_finished(run_overrides, tmp_path):
    overrides = [o for o in run_overrides if not o.startswith("wandb.")] + ["wandb.mode=offline", "method=none"]
    small_run(overrides)
    runs = list((tmp_path / "outputs" / "wandb").glob("wandb/offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def _run_py(*args, timeout=120):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}
    interpreter = [a for a in args if a in ("-X", "importtime")]  # python's own options go before run.py
    args = [a for a in args if a not in interpreter]
    return subprocess.run([sys.executable, *interpreter, str(ROOT / "run.py"), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def test_missing_real_weights_fail_fast_with_the_fix(tmp_path):
    """Fast means before the pipeline and transformers are loaded (a minute on a busy machine), not a wall-clock
    bound (no test depends on the machine's load): -X importtime lists every module the process imported."""
    proc = _run_py("-X", "importtime", "model=llama3", "task=gsm8k", "method=normal", f"paths.results_dir={tmp_path}",
                   f"paths.outputs_dir={tmp_path}", "wandb.mode=disabled")
    assert proc.returncode == 2, proc.stderr[-2000:]
    err = proc.stdout + proc.stderr
    assert "meta-llama/Llama-3.1-8B" in err and "model.path=" in err and "Traceback" not in err
    imported = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "xtf.cli" in imported and not {"xtf.pipeline", "xtf.train", "transformers"} & imported


def test_bad_config_fails_before_any_work(tmp_path):
    proc = _run_py("train.loss_norm=sum", f"paths.results_dir={tmp_path}", f"paths.outputs_dir={tmp_path}")
    assert proc.returncode == 2 and "train.loss_norm" in proc.stdout + proc.stderr
    assert not list(tmp_path.rglob("results.json"))
