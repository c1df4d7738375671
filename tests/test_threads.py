"""xtf.threads: torch's CPU threads from the cores other jobs leave free, the OpenMP wait policy set before torch
loads, and what a run records about both. No test depends on this machine's load: the busy count is given."""

import os
import subprocess
import sys

import pytest

from xtf import threads


def test_a_number_the_caller_set_is_used_as_asked():
    assert threads.choose(16, 12, "3") == (3, "OMP_NUM_THREADS=3 set by the caller")


@pytest.mark.parametrize("cores, busy, expected", [
    (2, 0, 2),      # an idle 2-core machine: both cores
    (2, 2, 1),      # two other jobs on two cores: one thread, never 0
    (2, 7, 1),
    (8, 3, 5),      # the cores other jobs leave free
    (64, 0, threads.MAX_THREADS),  # capped
    (64, 60, 4),
])
def test_threads_are_the_free_cores_at_least_one(cores, busy, expected):
    n, why = threads.choose(cores, busy, None)
    assert n == expected
    assert f"{cores} usable cores" in why


def test_an_unusable_omp_value_is_not_taken_as_a_count():
    assert threads.choose(4, 0, "abc")[0] == 4
    assert threads.choose(4, 0, "0")[0] == 4


def test_unknown_busy_cores_use_the_capped_core_count():
    n, why = threads.choose(4, None, None)
    assert n == 4 and "unknown" in why


def _task(proc, pid, tid, state, nice, comm="python (x) y"):
    d = proc / str(pid) / "task" / str(tid)
    d.mkdir(parents=True)
    rest = [state, "1", "1", "1", "0", "-1", "0"] + ["0"] * 8 + ["20", str(nice), "1"]
    (d / "stat").write_text(f"{tid} ({comm}) " + " ".join(rest) + "\n")


def test_busy_cores_count_runnable_threads_of_others_not_niced_ones(tmp_path, monkeypatch):
    """Runnable threads of other processes count; sleeping ones, this process's own and niced ones (a background
    job at nice 19 yields its core) do not. A comm with ") " in it does not shift the fields."""
    monkeypatch.setattr(threads, "SAMPLE_GAP_S", 0)
    own = os.getpid()
    _task(tmp_path, 100, 100, "R", 0)
    _task(tmp_path, 100, 101, "R", 0, comm="evil) R 1")
    _task(tmp_path, 100, 102, "S", 0)
    _task(tmp_path, 200, 200, "R", -5)
    _task(tmp_path, 300, 300, "R", 19)
    _task(tmp_path, 300, 301, "R", threads.NICE_YIELDS - 1)
    _task(tmp_path, own, own, "R", 0)
    (tmp_path / "self").mkdir()
    assert threads.busy_cores(tmp_path) == 4
    assert threads.busy_cores(tmp_path / "absent") is None


def test_with_autogroups_a_niced_thread_of_another_session_counts_unless_its_session_is_niced(tmp_path,
                                                                                             monkeypatch):
    """Autogroups on: a thread's nice weighs only within its session. Another session's `nice -n 19` job takes a
    core (counted) unless its autogroup is niced; in this process's own session the thread's nice decides."""
    monkeypatch.setattr(threads, "SAMPLE_GAP_S", 0)
    own = os.getpid()
    (tmp_path / "sys" / "kernel").mkdir(parents=True)
    (tmp_path / "sys" / "kernel" / "sched_autogroup_enabled").write_text("1\n")
    for pid, nice, group in ((own, 0, "/autogroup-1 nice 0"), (100, 19, "/autogroup-2 nice 0"),
                             (200, 19, "/autogroup-3 nice 19"), (300, 19, "/autogroup-1 nice 0"),
                             (400, 0, "/autogroup-4 nice 0")):
        _task(tmp_path, pid, pid, "R", nice)
        (tmp_path / str(pid) / "autogroup").write_text(group + "\n")
    assert threads.busy_cores(tmp_path) == 2  # 100 (another session, not niced as a group) and 400
    (tmp_path / "sys" / "kernel" / "sched_autogroup_enabled").write_text("0\n")
    assert threads.busy_cores(tmp_path) == 1  # autogroups off: each thread's own nice, only 400 counts


def test_the_wait_policy_is_set_before_torch_loads_and_recorded():
    """In a fresh interpreter (here torch is loaded already): the policy reaches the environment torch's OpenMP
    runtime reads at load, and the record says who set it and the threads chosen."""
    code = ("import os; from xtf import threads; threads.prepare_environment(); import torch; "
            "d = threads.apply(); assert torch.get_num_threads() == d['torch'] == 2, d; "
            "print(os.environ['OMP_WAIT_POLICY'], '|', d['omp_wait_policy'], '|', d['reason'])")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = "2"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    policy, recorded, reason = (s.strip() for s in out.split("|"))
    assert policy == "PASSIVE" and recorded == "PASSIVE (set by xtf before torch was loaded)"
    assert reason == "OMP_NUM_THREADS=2 set by the caller"


def test_a_wait_policy_set_by_the_caller_is_kept(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    monkeypatch.setattr(threads, "_state", {})
    monkeypatch.delitem(sys.modules, "torch", raising=False)  # as before torch loads (its module lives on elsewhere)
    threads.prepare_environment()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert threads._state["wait_policy"] == "ACTIVE (set by the caller)"


def test_a_policy_set_after_torch_loaded_is_recorded_as_not_in_effect(monkeypatch):
    import torch  # noqa: F401 - loaded: the OpenMP runtime has read its environment already

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.setattr(threads, "_state", {})
    threads.prepare_environment()
    assert "OMP_WAIT_POLICY" not in os.environ
    assert "torch was loaded before xtf could set" in threads.describe()["omp_wait_policy"]


def test_the_record_entry_without_apply_names_the_callers_setting(monkeypatch):
    import torch

    monkeypatch.setattr(threads, "_state", {})
    entry = threads.describe()
    assert entry["torch"] == torch.get_num_threads()
    assert "apply was not called" in entry["reason"]
