"""Scoring at scale: a killed scoring pass resumes from its kept chunks and ends with the same bytes as an
uninterrupted one; completed chunks are not scored again; a torn, corrupted or foreign chunk is recomputed, never
trusted; the progress folder is gone once the cache entry is complete; two ranks (torchrun, gloo) resume from the
chunks one process kept. (Time and memory: make bench-scale.)"""

import dataclasses
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import ROOT

from xtf import cache
from xtf.config import ModelConfig
from xtf.models import load_model, load_tokenizer
from xtf.scoring import _batches, cached_scores, forward_scores, released_forward_scores

# 44 rows of 4-39 tokens in batches of 4: 11 batches; chunks of 8 rows = 2 batches, so 6 chunks (the last: 1 batch).
N_ROWS, BATCH, CHUNK_ROWS = 44, 4, 8
TINY = ModelConfig(name="t", tiny="random", hidden_size=64, num_layers=3, num_heads=4, intermediate_size=128,
                   vocab_size=1024, pretrain_steps=0)  # the spec of tests/test_scoring.py's model: built once

# The killed job: scores with progress kept, and hangs (never returns) in the forward pass of batch HANG, after
# writing a marker, until the test kills it with SIGKILL.
CHILD = """
import sys, threading
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import torch
from test_scale import HANG, run_job
marker = Path(sys.argv[3])
def hang(module, args, kwargs, calls=[0]):
    calls[0] += 1
    if calls[0] == HANG + 1:
        marker.write_text("hanging")
        threading.Event().wait()
torch.set_num_threads(1)
run_job(sys.argv[2], Path(sys.argv[4]), hang)
"""
HANG = 5  # batches 0-4 complete: chunks 0 and 1 kept, chunk 2 half done when the job is killed

# One rank of a torchrun job resuming the pass: its backbone calls and (rank 0) the scores, to files.
RANK = """
import json, os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import numpy as np, torch
from test_scale import run_job
from xtf import distributed
from xtf.config import DistConfig, TrainConfig
torch.set_num_threads(1)
distributed.start(DistConfig(), "cpu", TrainConfig(name="lora", batch_size=4, grad_accum=1))
out = Path(sys.argv[3])
with distributed.collective():
    scores, calls = run_job(sys.argv[2], out)
rank = distributed.runtime().rank
(out / f"calls{rank}").write_text(str(calls))
np.savez(out / f"scores{rank}.npz", **{k: np.concatenate(v) for k, v in scores.items()})
distributed.finish()
"""


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every pass of this module on one thread, as the killed child's: float sums differ between thread counts (the
    kernels split reductions by thread), so byte-identical scores are a claim for one thread count (under make
    test's default of two threads the in-process passes differed from the child's in the last bits of kn)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def rows_of(n: int = N_ROWS) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"id": str(i), "input_ids": rng.integers(3, 1000, int(rng.integers(4, 40))).tolist()} for i in range(n)]


def model_and_pad(weights: str):
    model = load_model(dataclasses.replace(TINY, attn_implementation="eager"), weights, torch.device("cpu")).eval()
    return model, load_tokenizer(weights).pad_token_id


SPEC = {"group": "forward", "test": "scale"}


def run_job(weights: str, cache_dir, hook=None, batch_size: int = BATCH, scorer: str = "forward") -> tuple[dict, int]:
    """Score as xtf.method_scores.compute_scores does (cached_scores, progress kept beside the entry): (scores,
    number of batches the backbone ran)."""
    model, pad = model_and_pad(weights)
    calls = [0]

    def count(module, args, kwargs):
        calls[0] += 1
        return hook(module, args, kwargs) if hook else None

    handle = model.get_decoder().register_forward_pre_hook(count, with_kwargs=True)
    partial = cache.partial_dir(cache_dir, "scores", SPEC)
    try:
        scores, _, _ = cached_scores(str(cache_dir), SPEC, lambda: (
            forward_scores(model, rows_of(), pad, batch_size, "received", partial=partial, chunk_rows=CHUNK_ROWS)
            if scorer == "forward" else released_forward_scores(model, rows_of(), partial=partial,
                                                                chunk_rows=CHUNK_ROWS)))
    finally:
        handle.remove()
    return scores, calls[0]


@pytest.fixture(scope="module")
def weights(session_cache) -> str:
    from xtf.tiny import build_tiny

    return str(build_tiny(TINY, str(session_cache)))


def straight(weights: str, batch_size: int = BATCH, scorer: str = "forward") -> dict:
    """An uninterrupted pass, nothing kept on disk."""
    model, pad = model_and_pad(weights)
    if scorer == "forward":
        return forward_scores(model, rows_of(), pad, batch_size, "received")
    return released_forward_scores(model, rows_of())


def assert_same_bytes(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert [len(x) for x in a[name]] == [len(x) for x in b[name]], name
        assert np.concatenate(a[name]).tobytes() == np.concatenate(b[name]).tobytes(), name


class Killed(Exception):
    pass


def killed_after(n_batches: int):
    """A forward pre-hook that raises on batch n_batches + 1: the job dies after n_batches complete batches."""
    def hook(module, args, kwargs, calls=[0]):  # noqa: B006 - the call counter
        calls[0] += 1
        if calls[0] > n_batches:
            raise Killed
    return hook


def test_killed_scoring_job_resumes_to_identical_scores(weights, tmp_path, caplog):
    """SIGKILL mid-pass (no cleanup runs), one kept chunk then corrupted: the rerun scores only the missing
    batches and the corrupted chunk's, and its scores equal an uninterrupted pass's byte for byte."""
    n_batches = len(_batches(rows_of(), BATCH))
    marker = tmp_path / "hanging"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT / "tests"), weights, str(marker), str(tmp_path)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 300  # a bound on a hang, not a timing assumption: the job waits for its kill
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    partial = cache.partial_dir(tmp_path, "scores", SPEC)
    assert sorted(p.name for p in partial.glob("chunk-*")) == [
        "chunk-000000.json", "chunk-000000.npz", "chunk-000001.json", "chunk-000001.npz"]
    assert not (tmp_path / "scores" / cache.key_of(SPEC)).exists()
    data = (partial / "chunk-000001.npz").read_bytes()
    (partial / "chunk-000001.npz").write_bytes(data[:-40] + bytes(40))  # same size, other bytes

    with caplog.at_level(logging.WARNING, logger="xtf.cache"):
        resumed, calls = run_job(weights, tmp_path)
    assert calls == n_batches - 2  # chunk 0 (2 batches) read back; chunk 1 recomputed; the rest scored
    assert "partial chunk 1" in caplog.text and "checksum mismatch" in caplog.text
    assert_same_bytes(resumed, straight(weights))
    assert not partial.exists()  # the entry is complete: its progress folder is removed
    assert cache.verify(tmp_path / "scores" / cache.key_of(SPEC)) is None


@pytest.mark.parametrize("scorer", ["forward", "released"])
def test_kept_chunks_are_reused_and_torn_ones_recomputed(scorer, weights, tmp_path, caplog):
    """A job that dies after 5 batches (an exception: the build's temp folder goes, its progress stays): chunk 0's
    manifest is then removed (a kill between data and manifest); the rerun reuses chunk 1 only."""
    batch_size = BATCH if scorer == "forward" else 1           # the released scorer: one row per batch
    per_chunk = CHUNK_ROWS // batch_size
    n_batches = len(_batches(rows_of(), batch_size))
    with pytest.raises(Killed):
        run_job(weights, tmp_path, killed_after(2 * per_chunk + 1), scorer=scorer)
    partial = cache.partial_dir(tmp_path, "scores", SPEC)
    assert len(list(partial.glob("chunk-*.json"))) == 2
    (partial / "chunk-000000.json").unlink()
    with caplog.at_level(logging.WARNING, logger="xtf.cache"):
        resumed, calls = run_job(weights, tmp_path, scorer=scorer)
    assert calls == n_batches - per_chunk
    assert "partial chunk 0" in caplog.text and "no readable manifest" in caplog.text
    assert_same_bytes(resumed, straight(weights, scorer=scorer))


def test_chunks_of_another_batch_plan_are_not_used(weights, tmp_path, caplog):
    """Padding changes float rounding: chunks kept under batch size 4 are discarded by a rerun with batch size 2,
    which then equals an uninterrupted batch-size-2 pass."""
    with pytest.raises(Killed):
        run_job(weights, tmp_path, killed_after(5))
    with caplog.at_level(logging.WARNING, logger="xtf.cache"):
        resumed, calls = run_job(weights, tmp_path, batch_size=2)
    assert calls == len(_batches(rows_of(), 2))
    assert "another plan" in caplog.text
    assert_same_bytes(resumed, straight(weights, batch_size=2))


def test_two_ranks_resume_from_the_chunks_one_process_kept(weights, tmp_path):
    """torchrun --nproc_per_node=2 (gloo) after a one-process job died: rank 0 reads the kept chunks and sends them,
    the ranks share the missing batches, and both end with the uninterrupted scores."""
    with pytest.raises(Killed):
        run_job(weights, tmp_path, killed_after(5))                # chunks 0 and 1 kept (4 batches)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    script = tmp_path / "rank.py"
    script.write_text(RANK)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script), str(ROOT / "tests"), weights, str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    calls = [int((tmp_path / f"calls{r}").read_text()) for r in (0, 1)]
    assert sum(calls) == len(_batches(rows_of(), BATCH)) - 4 and min(calls) > 0  # shared, kept chunks not redone
    expected = {k: np.concatenate(v) for k, v in straight(weights).items()}
    for r in (0, 1):
        with np.load(tmp_path / f"scores{r}.npz") as got:
            assert {k: got[k].tobytes() for k in got.files} == {k: v.tobytes() for k, v in expected.items()}
    assert not cache.partial_dir(tmp_path, "scores", SPEC).exists()
