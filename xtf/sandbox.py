"""Run model-written Python programs under bubblewrap, never in the harness process.

    from xtf import sandbox
    outcomes = sandbox.run_programs(["assert 1 + 1 == 2"], SandboxConfig())   # [{"status": "passed", ...}]

Each program runs in its own `bwrap` sandbox: every namespace unshared (no network: only a private loopback),
the host filesystem read-only (`--ro-bind / /`), a fresh `/dev` remounted read-only, a fresh `/proc` of its own
pid namespace, and as the only writable places a size-capped tmpfs at /tmp (the cwd) and /dev/shm. As root, the
harness first drops to uid/gid 65534 (`setpriv`): the program is never root on the host. `--die-with-parent` and
`--new-session` tie the sandbox to the harness and detach it from the terminal; `--disable-userns` stops nested
user namespaces.

Inside the sandbox a small bootstrap (BOOTSTRAP) reads the program from stdin into /tmp/program.py, sets the
resource limits of `SandboxConfig` (hard = soft, so the program cannot raise them) and execs a fresh, isolated
interpreter (`python -I`) on it:
  RLIMIT_CPU    cpu_s (SIGXCPU → status "timeout")       RLIMIT_AS     memory_mb (MemoryError → "failed")
  RLIMIT_NPROC  max_processes (+1 for bwrap's own init)  RLIMIT_FSIZE  max_output_kb (stdout, stderr, scratch files)
plus a wall-clock timeout (timeout_s) after which the harness SIGKILLs the sandbox's process group; bwrap's
init then dies and the kernel kills everything left in the pid namespace.

Why NPROC is set inside the sandbox: since Linux 5.14 (ucounts) RLIMIT_NPROC is counted per user namespace,
so a limit set after bwrap has created the namespace counts only that sandbox's processes (threads included).
Parallel sandboxes sharing uid 65534 therefore do not share, or starve, each other's budget, and a non-root
user's own desktop processes do not count (checked: tests/test_sandbox.py). On older kernels the count is per
real uid: parallel sandboxes share one budget of max_processes.

Output is bounded without reading it: stdout and stderr go to two host temp files and RLIMIT_FSIZE kills a
program that writes more than max_output_kb to either (SIGXFSZ → "failed"); only the tail of stderr is kept.

Status: "passed" (exit code 0), "failed" (any other exit, including the memory and output limits), "timeout"
(wall clock or CPU limit), "error" (the sandbox itself did not start: the bootstrap never reported in; retried
once). The interpreter is the harness's own (resolved through venv links) if the sandbox user can run it, else
`python3` on PATH; programs get the standard library only.

Without bubblewrap nothing runs unless the caller opts in (eval.UNSAFE_allow_unsandboxed_code=true): then each
program runs directly on this machine in a temp dir with the same rlimits and timeout, no isolation at all.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

SANDBOX_VERSION = 1          # bump when isolation, limits or status rules change
SANDBOX_UID = 65534          # "nobody": the uid programs run as when the harness is root
SCRATCH_MB = 64              # tmpfs size of /tmp (the program's cwd); bounds host RAM a program can fill
SHM_MB = 16                  # tmpfs size of /dev/shm
STDERR_TAIL_CHARS = 1000     # stderr kept per program in the outcome
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`)"
UNSAFE_HINT = ("or, only on a disposable machine, opt in to running model-written code unsandboxed with "
               "eval.UNSAFE_allow_unsandboxed_code=true")

# Runs inside the sandbox with `python -I -c BOOTSTRAP <limits json>`; stdin carries the program.
BOOTSTRAP = r"""
import json, os, resource, sys
lim = json.loads(sys.argv[1])
src = sys.stdin.buffer.read()
with open("program.py", "wb") as f:
    f.write(src)
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
for name, value in lim["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value + lim["hard_extra"].get(name, 0)))
os.write(lim["ready_fd"], b"ok")
os.close(lim["ready_fd"])
os.execv(sys.executable, [sys.executable, "-I", "program.py"])
"""


class SandboxError(RuntimeError):
    """The sandbox failed to run programs (not a failure of the program itself)."""


class SandboxUnavailable(SandboxError):
    """bubblewrap is missing or does not work here; the message says how to fix it."""


@functools.cache
def _bwrap_help() -> str:
    return subprocess.run(["bwrap", "--help"], capture_output=True, text=True).stdout


def _bwrap_argv(python: str, limits_json: str) -> list[str]:
    """The command that runs the bootstrap in a fresh sandbox (program on stdin)."""
    prefix = []
    if os.geteuid() == 0:
        # RLIMIT_NPROC is not enforced for root, and the program must not be root on the host.
        prefix = [shutil.which("setpriv") or "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                  "--clear-groups"]
    # Hardening that bubblewrap < 0.8 lacks (Ubuntu 22.04 ships 0.6): nested user namespaces stay possible there.
    no_userns = ["--disable-userns"] if "--disable-userns" in _bwrap_help() else []
    return prefix + [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all", "--unshare-user", *no_userns, "--die-with-parent", "--new-session",
        "--hostname", "sandbox",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--size", str(SHM_MB << 20), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",                          # device nodes stay usable; no new files in /dev
        "--proc", "/proc",
        "--size", str(SCRATCH_MB << 20), "--tmpfs", "/tmp",
        "--chdir", "/tmp",
        "--", python, "-I", "-c", BOOTSTRAP, limits_json,
    ]


def _clean_env(home: str) -> dict:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": home, "TMPDIR": home}


def _count_tasks(uid: int) -> int:
    """Processes + threads of `uid` now (what RLIMIT_NPROC counts without a user namespace)."""
    n = 0
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{pid}/task"))
            except OSError:
                pass
    return n


def _limits_json(limits, ready_fd: int, sandboxed: bool) -> str:
    rl = {
        "RLIMIT_CPU": int(limits.cpu_s),
        "RLIMIT_AS": int(limits.memory_mb) << 20,
        "RLIMIT_FSIZE": int(limits.max_output_kb) << 10,
        "RLIMIT_CORE": 0,
    }
    if sandboxed:
        rl["RLIMIT_NPROC"] = int(limits.max_processes) + 1  # + bwrap's init (pid 1 of the sandbox)
    elif os.geteuid() != 0:
        # No user namespace: the count is per real uid, so leave room for the user's own processes (racy,
        # best effort). As root NPROC is not enforced at all: unsafe mode has no fork-bomb guard then.
        rl["RLIMIT_NPROC"] = _count_tasks(os.getuid()) + int(limits.max_processes)
    # hard CPU limit one second above the soft one: SIGXCPU first (a clear signal), SIGKILL if ignored.
    return json.dumps({"rlimits": rl, "hard_extra": {"RLIMIT_CPU": 1}, "ready_fd": ready_fd})


def _tail(f, chars: int) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - 4 * chars))
    return f.read().decode("utf-8", errors="replace")[-chars:]


def _run_one(program: str, python: str, limits, sandboxed: bool) -> dict:
    """Run one program to completion or timeout; never raises for the program's behaviour."""
    ready_r, ready_w = os.pipe()
    scratch = None if sandboxed else tempfile.TemporaryDirectory(prefix="xtf_unsafe_")
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            limits_json = _limits_json(limits, ready_w, sandboxed)
            if sandboxed:
                argv, cwd, env = _bwrap_argv(python, limits_json), "/", _clean_env("/tmp")
            else:
                argv = [python, "-I", "-c", BOOTSTRAP, limits_json]
                cwd, env = scratch.name, _clean_env(scratch.name)
            start = time.monotonic()
            timed_out = False
            try:
                # start_new_session: the sandbox leads its own process group, killed as a whole on timeout.
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd, env=env,
                                        pass_fds=(ready_w,), start_new_session=True)
            except OSError as e:
                return {"status": "error", "returncode": -1, "seconds": 0.0, "stderr_tail": f"cannot start: {e}"}
            finally:
                os.close(ready_w)
                ready_w = -1
            try:
                proc.communicate(program.encode("utf-8", errors="replace"), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            seconds = time.monotonic() - start
            os.set_blocking(ready_r, False)
            try:
                ready = os.read(ready_r, 2) == b"ok"
            except BlockingIOError:
                ready = False
            rc = proc.returncode
            # bwrap reports a signal death of the program as 128 + signal; a direct child as -signal.
            sig = -rc if rc < 0 else (rc - 128 if sandboxed and rc > 128 else 0)
            if not ready:
                status = "error"
            elif timed_out or sig == signal.SIGXCPU:
                status = "timeout"
            elif rc == 0:
                status = "passed"
            else:
                status = "failed"
            return {"status": status, "returncode": rc, "seconds": round(seconds, 3),
                    "stderr_tail": _tail(err, STDERR_TAIL_CHARS)}
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
        if scratch is not None:
            scratch.cleanup()


def _probe(python: str, sandboxed: bool) -> tuple[bool, str]:
    """Run a trivial program; (works, python version or the reason it failed)."""
    from xtf.config import SandboxConfig

    code = "import sys; sys.stderr.write(sys.version.split()[0])"
    out = _run_one(code, python, SandboxConfig(timeout_s=30.0), sandboxed)
    return out["status"] == "passed", out["stderr_tail"].strip()


def _interpreters() -> list[str]:
    """Candidates, in order: the harness's interpreter (through venv symlinks), then python3 on PATH."""
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
        if "--size" not in _bwrap_help():  # without it a program could fill host RAM through its tmpfs
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
    return True, f"{version}, python {detail} ({python})"


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
            "runtime": available()[1] if kind == "bubblewrap" else f"python {version} ({python})"}


def run_programs(programs: list[str], limits, unsafe_no_sandbox: bool = False, desc: str = "sandbox") -> list[dict]:
    """Run each program (Python source) in its own sandbox, `limits.parallel` at a time (0 = CPU cores).

    Returns one outcome per program, in input order: {"status": "passed"|"failed"|"timeout"|"error",
    "returncode": int, "seconds": float (wall), "stderr_tail": str}. Raises SandboxUnavailable if bubblewrap
    does not work here and `unsafe_no_sandbox` is False."""
    kind = check(unsafe_no_sandbox)
    sandboxed = kind == "bubblewrap"
    ok, python, detail = _find(sandboxed)
    if not ok:
        raise SandboxError(f"cannot run programs even unsandboxed: {detail}")
    if not sandboxed:
        log.warning("UNSAFE: bubblewrap is unavailable and eval.UNSAFE_allow_unsandboxed_code=true: running %d "
                    "model-written programs DIRECTLY ON THIS MACHINE with only rlimits and a timeout (no "
                    "filesystem or network isolation)", len(programs))
    workers = limits.parallel or os.cpu_count() or 1
    outcomes: list[dict | None] = [None] * len(programs)

    def run(i: int) -> None:
        out = _run_one(programs[i], python, limits, sandboxed)
        if out["status"] == "error":  # a transient start failure (e.g. fork EAGAIN under load): one retry
            out = _run_one(programs[i], python, limits, sandboxed)
        outcomes[i] = out

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(run, i) for i in range(len(programs))]
        try:
            for f in tqdm(as_completed(futures), total=len(futures), desc=desc, unit="program"):
                f.result()
        except BaseException:  # Ctrl-C or a bug: do not start the queued programs while the pool winds down
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    return outcomes  # type: ignore[return-value]
