"""Kill a run (SIGKILL, through run.py) at each stage that leaves state behind and relaunch it: the record it
ends with equals an uninterrupted run's, field by field (timings, the resume point and the paths aside),
train_loss included. The mid-training kill also truncates the newest checkpoint's weights, so the relaunch
must fall back to the previous checkpoint (its checksum manifest no longer matches: xtf.checkpoints)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

from xtf.cache import MANIFEST

# 160 optimiser steps of the random tiny Llama: long enough to kill in the middle, short for the fast suite.
# logging_steps does not divide save_steps, so the history must be logged at each checkpoint to stay exact.
RUN = ["model=tiny_llama", "task.options.n_train=640", "task.options.n_test=16", "train.batch_size=8",
       "train.epochs=2", "train.save_steps=10", "train.logging_steps=3", "eval.batch_size=4", "wandb.mode=disabled"]
STEPS = 160


def _cmd(tmp, name, cache):
    return [sys.executable, str(ROOT / "run.py"), *RUN, f"paths.results_dir={tmp / name / 'results'}",
            f"paths.outputs_dir={tmp / name / 'outputs'}", f"paths.cache_dir={cache}"]


def _env():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "disabled"}


def _record(tmp, name):
    (path,) = (tmp / name / "results").rglob("results.json")
    return json.loads(path.read_text())


def _comparable(record: dict) -> dict:
    """The record without what legitimately differs between two launches: timings, where files went (paths and
    the command line naming them), the commit checked out at each launch, the step the run resumed from and the
    training throughput (this process's steps and wall time), the thread policy's record."""
    out = json.loads(json.dumps(record))
    out.pop("timings")
    out.pop("peak_rss_mib")  # this launch's process, not the run's
    out["config"].pop("paths")
    out["provenance"].pop("argv")
    out["provenance"].pop("git")
    out["training"].pop("resumed_from_step")
    out["training"].pop("throughput")
    out.pop("threads", None)  # the thread policy's reading of the machine's load at each launch (xtf.threads)
    return out


def _complete_checkpoints(outputs):
    """Steps of the sealed checkpoints (their manifest is written last: xtf.checkpoints). Only the checkpoints
    folder is listed: an rglob also descends into each checkpoint, and one removed by the run's rotation between
    the listing and the descent raised FileNotFoundError in this poll (a flaky failure of this test)."""
    steps = []
    for ckpt_dir in outputs.glob("*/*/checkpoints"):  # <experiment>/<run id>/checkpoints
        try:
            names = os.listdir(ckpt_dir)
        except FileNotFoundError:  # removed by a run that just completed (the test then says it ended too soon)
            continue
        steps += [int(name.split("-")[1]) for name in names
                  if name.startswith("checkpoint-") and (ckpt_dir / name / MANIFEST).exists()]
    return sorted(steps)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, session_cache):
    tmp = tmp_path_factory.mktemp("straight")
    subprocess.run(_cmd(tmp, "run", session_cache), check=True, env=_env(), capture_output=True, timeout=600)
    record = _record(tmp, "run")
    assert record["training"]["steps"] == STEPS
    # run.py set glibc's mmap threshold (xtf.malloc) and the record says so (or why not, off glibc)
    assert record["malloc"]["reason"].startswith(("set by xtf", "not glibc")), record["malloc"]
    peaks = [record["peak_rss_mib"][s] for s in ("load_model", "finetune", "evaluate")]  # the peak so far, MiB
    assert peaks == sorted(peaks) and peaks[0] > 100, record["peak_rss_mib"]
    return record


@pytest.mark.parametrize("stage, kill_at", [("training", 30), ("evaluation", STEPS)])
def test_killed_run_resumes_to_the_same_record(stage, kill_at, straight, tmp_path, session_cache):
    proc = subprocess.Popen(_cmd(tmp_path, "killed", session_cache), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = tmp_path / "killed" / "outputs"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        done = _complete_checkpoints(ckpts)
        if done and max(done) >= kill_at:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list((tmp_path / "killed" / "results").rglob("results.json"))

    newest = max(_complete_checkpoints(ckpts))
    if stage == "training":  # weights cut short, trainer_state.json intact: the relaunch falls back
        (weights,) = ckpts.rglob(f"checkpoint-{newest}/adapter_model.safetensors")
        weights.write_bytes(weights.read_bytes()[:200])
    done = subprocess.run(_cmd(tmp_path, "killed", session_cache), env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = _record(tmp_path, "killed")
    if stage == "training":
        assert "falling back to the previous one" in done.stdout + done.stderr  # Hydra logs to stdout
        assert 0 < resumed["training"]["resumed_from_step"] < newest
    else:
        assert resumed["training"]["resumed_from_step"] == STEPS  # nothing left to train
    assert resumed["training"]["train_loss"] == pytest.approx(straight["training"]["train_loss"], abs=0, rel=1e-12)
    assert _comparable(resumed) == _comparable(straight)
