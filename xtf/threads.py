"""How many CPU threads torch uses, chosen at the start of each run from the cores this process may use and how
many of them other jobs keep busy, and recorded in the run (`describe()`: the record's "threads" entry).

Why: torch on a CPU runs each operator on a pool of OpenMP threads that meet at a barrier after every operator. On a
machine whose cores are busy with other jobs some of those threads are descheduled, the others spin at the barrier
waiting for them (OpenMP's default wait policy spins, taking the very cores the late threads need), and a run gets
an order of magnitude slower than with fewer threads. So:
  - `prepare_environment()`, before torch is imported (xtf.cli.main): OMP_WAIT_POLICY=PASSIVE, so that a thread
    waiting at a barrier sleeps instead of spinning. The OpenMP runtime reads it once, when torch loads it; a value
    the caller set is kept.
  - `apply()`, at the start of each run (xtf.cli): torch.set_num_threads(n), n = `choose(...)`:
      OMP_NUM_THREADS set by the caller (or by torchrun, 1 per rank): that number, as asked;
      else min(usable cores, MAX_THREADS) less the cores other jobs keep busy now, at least 1.
    "Busy now" is the number of runnable threads of other processes (state R in /proc/<pid>/task/<tid>/stat),
    the median of a few samples over ~0.2 s: the 1-minute load average would still count the run that just
    ended (`make run` runs two in a row), and make the second one needlessly use one thread. A thread niced to
    NICE_YIELDS or more is not counted: against a run at nice 0 the kernel gives it under a tenth of a core
    (CFS weight 110 against 1024), so its core is as good as free. With the kernel's autogroups on
    (/proc/sys/kernel/sched_autogroup_enabled, the default of many desktop kernels) a thread's own nice weighs
    only within its session: a thread of another session yields only when its session's autogroup is niced
    (/proc/<pid>/autogroup: "... nice N"); a `nice -n 19` job started from another terminal takes a full core.
The thread count changes a run's floats only by rounding (a reduction's order): it is recorded in the run (with
the reason) but is no part of its identity.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

# Beyond this many threads a 135M–1B model on a CPU gains little (each operator's work is small) while every
# barrier costs more; a machine with more cores serves more runs at once (a sweep's cells) instead.
MAX_THREADS = 8
WAIT_POLICY = "PASSIVE"
SAMPLES, SAMPLE_GAP_S = 5, 0.05
NICE_YIELDS = 10  # a thread at this nice or more is not counted as busy (module doc)

_state: dict = {}


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask: a container's or a SLURM job's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _autogroup(proc: Path, pid: str) -> tuple[str, int] | None:
    """(autogroup name, its nice) of a process, from /proc/<pid>/autogroup ("/autogroup-12 nice 0"); None when
    unreadable."""
    try:
        name, _, nice = (proc / pid / "autogroup").read_text().split()
        return name, int(nice)
    except (OSError, ValueError):
        return None


def _effective_nice(proc: Path, pid: str, thread_nice: int, own_group: tuple[str, int] | None) -> int:
    """The nice that decides a thread's share against this process: its own, or with autogroups on and the thread
    in another session, its autogroup's (module doc)."""
    group = _autogroup(proc, pid) if own_group is not None else None
    return thread_nice if group is None or group[0] == own_group[0] else group[1]


def _runnable_threads(proc: Path, own: str) -> int | None:
    """Threads of other processes in state R whose effective nice is < NICE_YIELDS now; None where /proc is not
    there (not Linux)."""
    try:
        pids = [p for p in os.listdir(proc) if p.isdigit() and p != own]
    except OSError:
        return None
    try:
        autogroups = (proc / "sys" / "kernel" / "sched_autogroup_enabled").read_text().strip() == "1"
    except OSError:
        autogroups = False
    own_group = _autogroup(proc, own) if autogroups else None
    n = 0
    for pid in pids:
        try:
            tids = os.listdir(proc / pid / "task")
        except OSError:  # ended meanwhile, or not ours to read
            continue
        for tid in tids:
            try:
                fields = (proc / pid / "task" / tid / "stat").read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            # after "(comm)": state is field 0, nice field 16 (proc(5): fields 3 and 19)
            n += fields[0] == "R" and _effective_nice(proc, pid, int(fields[16]), own_group) < NICE_YIELDS
    return n


def busy_cores(proc: Path = Path("/proc")) -> float | None:
    """Threads of other processes runnable now (module doc); None where /proc is not there (not Linux)."""
    counts = []
    for i in range(SAMPLES):
        n = _runnable_threads(proc, str(os.getpid()))
        if n is None:
            return None
        counts.append(n)
        if i + 1 < SAMPLES:
            time.sleep(SAMPLE_GAP_S)
    return statistics.median(counts)


def _explicit(omp_env: str | None) -> bool:
    return bool(omp_env) and omp_env.strip().isdigit() and int(omp_env) >= 1


def choose(cores: int, busy: float | None, omp_env: str | None) -> tuple[int, str]:
    """(torch threads, why): `cores` usable, `busy` of the machine's cores taken by other jobs (None: unknown),
    `omp_env` OMP_NUM_THREADS as set (None: unset)."""
    if _explicit(omp_env):
        return int(omp_env), f"OMP_NUM_THREADS={omp_env.strip()} set by the caller"
    cap = min(cores, MAX_THREADS)
    why = f"min({cores} usable cores, {MAX_THREADS})"
    if busy is None:
        return cap, why + "; busy cores unknown (no /proc/stat)"
    n = max(1, min(cap, cores - round(busy)))
    if n < cap:
        return n, why + f" less the cores other jobs keep busy ({busy:g} runnable threads), at least 1"
    return n, why + f"; {busy:g} runnable threads of other jobs"


def prepare_environment() -> None:
    """Before torch is imported: the OpenMP wait policy (module doc). Keeps a value the caller set."""
    if "torch" in sys.modules:
        _state["wait_policy"] = (f"{os.environ.get('OMP_WAIT_POLICY', 'the OpenMP default (spinning)')} "
                                 f"(torch was loaded before xtf could set {WAIT_POLICY})")
    elif os.environ.get("OMP_WAIT_POLICY"):
        _state["wait_policy"] = f"{os.environ['OMP_WAIT_POLICY']} (set by the caller)"
    else:
        os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
        _state["wait_policy"] = f"{WAIT_POLICY} (set by xtf before torch was loaded)"


def apply() -> dict:
    """Sets torch's intra-op threads for this run (module doc); returns what `describe()` records."""
    import torch

    omp = os.environ.get("OMP_NUM_THREADS")
    busy = None if _explicit(omp) else busy_cores()  # asked for a number: the machine's state plays no part
    n, why = choose(usable_cores(), busy, omp)
    torch.set_num_threads(n)
    _state["chosen"] = {"reason": why, "cores": usable_cores(), "busy": busy}
    return describe()


def describe() -> dict:
    """The record's "threads" entry: {"torch": threads torch uses now, "reason", "cores", "busy", "omp_wait_policy"}."""
    import torch

    chosen = _state.get("chosen") or {"reason": "the caller's (xtf.threads.apply was not called)"}
    policy = _state.get("wait_policy") or f"{os.environ.get('OMP_WAIT_POLICY', 'unset')} (the caller's environment)"
    return {"torch": torch.get_num_threads(), **chosen, "omp_wait_policy": policy}
