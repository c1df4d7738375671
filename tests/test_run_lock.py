"""One launch of a run at a time (xtf.run_lock): a second launch of the same run stops at once, naming the
holder's pid; a killed holder's lock is released by the kernel; the ranks of one distributed run never wait on
each other (rank 0 takes the lock, the others follow its verdict)."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import ROOT, compose

from xtf import distributed, pipeline, run_lock
from xtf.cache import file_lock
from xtf.results import outputs_dir, run_dir
from xtf.validate import validate

RUN = ["model=tiny_llama", "method=none", "task.options.n_train=8", "task.options.n_test=4",
       "eval.max_new_tokens=4", "eval.batch_size=4"]

HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from xtf.cache import file_lock
    with file_lock(Path(sys.argv[1]), wait=False):
        print("held", flush=True)
        sys.stdin.read()  # until the test closes stdin, or kills this process
""")


@pytest.fixture
def cfg(run_overrides):
    return validate(compose([*run_overrides, *RUN]))


def test_a_second_launch_names_the_holder_and_a_killed_holder_frees_the_run(cfg):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_lock.lock_path(cfg))], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(run_lock.RunBusy, match=rf"is already running: pid {holder.pid} on \S+ holds .*run\.lock"):
            pipeline.run(cfg)
        assert not (run_dir(cfg) / "results.json").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean exit: the kernel alone releases the lock
        holder.wait()
    record = pipeline.run(cfg)
    assert record["status"] == "complete"


def test_two_holds_in_one_process_exclude_each_other_and_the_lock_is_free_after(cfg):
    with run_lock.held(cfg):
        with pytest.raises(run_lock.RunBusy, match=f"pid {os.getpid()} on"):
            with run_lock.held(cfg):
                pass
    with run_lock.held(cfg):  # released on exit
        assert run_lock.lock_path(cfg).parent == outputs_dir(cfg)


def test_other_ranks_never_lock_and_follow_rank_0(cfg, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    monkeypatch.setattr(distributed, "broadcast", lambda obj: None)  # rank 0's verdict: the run is ours, go on
    with file_lock(run_lock.lock_path(cfg), wait=False):  # rank 0 holds the lock: another rank does not wait
        with run_lock.held(cfg):
            pass
    monkeypatch.setattr(distributed, "broadcast", lambda obj: "run x is already running: pid 12345 on host")
    with pytest.raises(run_lock.RunBusy, match="pid 12345"):
        with run_lock.held(cfg):
            pass
