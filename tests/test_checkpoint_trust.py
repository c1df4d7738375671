"""Nothing silently wrong in training: a checkpoint is resumed only when its checksum manifest matches (a missing
adapter file or a flipped tensor byte makes the relaunch fall back to the previous checkpoint, with a warning),
and a NaN loss or metric fails the run, naming the step or the metric, instead of recording it complete."""

import json
import logging
import math
import shutil

import pytest
from conftest import compose

import xtf.train
from xtf import checkpoints, pipeline
from xtf.cache import write_manifest
from xtf.finite import NonFiniteError
from xtf.results import outputs_dir, run_dir
from xtf.validate import validate

# LoRA on the random tiny Llama: 6 optimiser steps (24 rows, 4 a step), a checkpoint every 2 (the newest 2 kept).
RUN = ["model=tiny_llama", "task.options.n_train=24", "task.options.n_test=4", "train.batch_size=4",
       "train.grad_accum=1", "train.epochs=1", "train.save_steps=2", "train.logging_steps=3",
       "train.keep_checkpoints=true", "eval.max_new_tokens=4", "eval.batch_size=4"]


@pytest.fixture(scope="module")
def cfg_in(session_cache):
    """The run's config with its results and outputs in `folder`."""
    def of(folder, *extra):
        return validate(compose([f"paths.results_dir={folder / 'results'}", f"paths.outputs_dir={folder / 'outputs'}",
                                 f"paths.cache_dir={session_cache}", "wandb.mode=disabled", *RUN, *extra]))
    return of


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cfg_in):
    """A complete run with its two newest checkpoints kept: (folder, record)."""
    folder = tmp_path_factory.mktemp("trust")
    return folder, pipeline.run(cfg_in(folder))


def copy_of(trained, tmp_path, cfg_in):
    """The trained run's folders under tmp_path (same run id: paths are not in it), and its checkpoints folder."""
    folder, record = trained
    shutil.copytree(folder, tmp_path / "run")
    return tmp_path / "run", outputs_dir(cfg_in(tmp_path / "run")) / "checkpoints", record


def test_sealed_checkpoints_are_the_newest_two(trained, cfg_in):
    folder, record = trained
    ckpts = outputs_dir(cfg_in(folder)) / "checkpoints"
    assert record["training"]["steps"] == 6
    assert [checkpoints.step_of(c) for c in checkpoints.checkpoints(ckpts)] == [6, 4]
    assert all(checkpoints.checkpoint_problem(c) is None for c in checkpoints.checkpoints(ckpts))


@pytest.mark.parametrize("damage, reason", [
    ("adapter_deleted", "adapter_model.safetensors is missing"),
    ("tensor_byte_flipped", "adapter_model.safetensors checksum mismatch"),
])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(damage, reason, trained, cfg_in, tmp_path,
                                                                 caplog):
    folder, ckpts, first = copy_of(trained, tmp_path, cfg_in)
    adapter = ckpts / "checkpoint-6" / "adapter_model.safetensors"
    if damage == "adapter_deleted":
        adapter.unlink()
    else:  # a byte of the tensor data, past the header (8-byte length + JSON): the file still opens
        data = bytearray(adapter.read_bytes())
        at = 8 + int.from_bytes(data[:8], "little") + 100
        data[at] ^= 0x40
        adapter.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="xtf.checkpoints"):
        record = pipeline.run(cfg_in(folder, "force=true"))
    assert reason in caplog.text and "falling back to the previous one" in caplog.text
    assert record["training"]["resumed_from_step"] == 4 and record["status"] == "complete"
    assert record["training"]["train_loss"] == pytest.approx(first["training"]["train_loss"], rel=1e-6)
    assert checkpoints.checkpoint_problem(ckpts / "checkpoint-6") is None  # trained again and sealed


def test_unsealed_checkpoints_and_interrupted_removals_are_not_trusted(tmp_path, caplog):
    ckpts = tmp_path / "checkpoints"
    for step in (10, 20, 30):
        d = ckpts / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        if step < 30:  # 30 was cut short before its manifest: its files may be whole, it is not trusted
            write_manifest(d, "checkpoint")
    (ckpts / "checkpoint-20" / "trainer_state.json").write_text("{}")  # 20 changed after it was sealed
    (ckpts / ".removing-checkpoint-5").mkdir()  # a removal a kill interrupted
    assert checkpoints.last_checkpoint(ckpts) == str(ckpts / "checkpoint-10")
    assert sorted(p.name for p in ckpts.iterdir()) == ["checkpoint-10"]
    assert "checkpoint-30, which cannot be resumed from (no checksum manifest" in caplog.text
    assert "trainer_state.json has 2 bytes" in caplog.text


def test_a_nan_training_loss_fails_the_run_naming_its_step(tmp_path, cfg_in, monkeypatch):
    calls = []
    real = xtf.train.step_loss

    def nan_at_step_4(*args, **kwargs):  # one micro-batch per step (grad_accum=1): call k is step k
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 4 else loss

    monkeypatch.setattr(xtf.train, "step_loss", nan_at_step_4)
    cfg = cfg_in(tmp_path / "run")
    with pytest.raises(NonFiniteError, match=r"NaN or infinite at optimiser step 4 \(of 6\)"):
        pipeline.run(cfg)
    assert not (run_dir(cfg) / "results.json").exists()
    # Step 4 is a checkpoint step that logging_steps=3 does not log: it fails before that checkpoint is saved.
    assert [checkpoints.step_of(c) for c in checkpoints.checkpoints(outputs_dir(cfg) / "checkpoints")] == [2]


def test_a_nan_metric_fails_the_run_naming_it(tmp_path, cfg_in, monkeypatch):
    real = pipeline.evaluate

    def nan_nll(*args, **kwargs):
        metrics, predictions, protocol = real(*args, **kwargs)
        return {**metrics, "answer_nll": math.nan}, predictions, protocol

    monkeypatch.setattr(pipeline, "evaluate", nan_nll)
    cfg = cfg_in(tmp_path / "run", "method=none")  # the base model evaluated: no training needed
    with pytest.raises(NonFiniteError, match=r"metrics\.answer_nll is nan \(evaluation\)"):
        pipeline.run(cfg)
    assert not (run_dir(cfg) / "results.json").exists()


def test_a_nan_in_the_loss_history_is_never_averaged_away():
    assert xtf.train.train_loss([{"step": 3, "loss": 1.0}, {"step": 6, "loss": 2.0}]) == 1.5
    with pytest.raises(NonFiniteError, match="logged at step 6 is nan"):
        xtf.train.train_loss([{"step": 3, "loss": 1.0}, {"step": 6, "loss": math.nan}])
