"""One sandbox seen from the host: start it, wait for it against a deadline, read its init's report, and name
the limit that ended it.

    proc = Process("program", {"source": src, "token": t}, {}, python, limits, sandboxed=True)
    if not proc.wait(deadline):
        proc.kill()                       # the wall clock: the whole sandbox, SIGKILL
    ended = proc.finish()                 # Ended(...): always call, it frees the pipes, files and cgroup
    limit_status(ended, limits)           # ("timeout", "CPU limit (cpu_s=10 s)") or None
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import tempfile
import time

from xtf import sandbox_limits
from xtf.sandbox_boot import script
from xtf.sandbox_bwrap import HARD_EXTRA, HOST_ENV, SandboxError, bwrap_argv, rlimits

STDERR_TAIL_CHARS = 1000     # stderr kept per program in the outcome
# A process killed at RLIMIT_CPU reports at least this share of cpu_s in its rusage (utime + stime is sampled at
# clock ticks: it came up to 3.5 % short of the limit here; a SIGKILL at the hard limit is one second later still).
CPU_SHARE = 0.9


@dataclasses.dataclass
class Ended:
    """How one sandbox ended. returncode, cpu_s and end describe its main process, from its init's report
    (exit status or -signal; CPU seconds with reaped children; what it wrote to the init); without a report
    (the init was killed too) returncode is the host process's, as -signal where it died of one."""
    ready: bool                # the init started and said so: False means the sandbox itself failed
    reported: bool
    returncode: int
    cpu_s: float
    end: str
    timed_out: bool            # the harness killed it at the wall-clock deadline
    hit: str | None            # the whole-sandbox limit it reached: "memory", "tasks" or None
    mechanism: str             # what enforced the whole-sandbox limits: a cgroup, the watchdog or "none"
    seconds: float
    stderr_tail: str
    output_full: bool          # stdout or stderr reached max_output_kb


class Process:
    """One started sandbox running xtf.sandbox_boot with `role`, `job` on stdin and `fds` (name -> host fd,
    inherited; the caller closes its own copies after starting). Raises SandboxError if its cgroup cannot be
    made; a failed start of the process itself shows as Ended.ready=False."""

    def __init__(self, role: str, job: dict, fds: dict[str, int], python: str, limits, sandboxed: bool):
        self.limits, self.sandboxed, self.box, self.proc = limits, sandboxed, None, None
        self.start_error, self.timed_out, self.ended_at = "", False, None
        self.started_at = time.monotonic()
        self._report_r, report_w = os.pipe()
        self._stdin, self._out, self._err = (tempfile.TemporaryFile() for _ in range(3))
        self._scratch = None if sandboxed else tempfile.TemporaryDirectory(prefix="xtf_unsafe_")
        try:
            self._start(role, job, {"report": report_w, **fds}, python, sandboxed)
        except BaseException:
            self._cleanup()
            raise
        finally:
            os.close(report_w)

    def _start(self, role: str, job: dict, fds: dict[str, int], python: str, sandboxed: bool) -> None:
        self._stdin.write(json.dumps(job).encode())
        self._stdin.seek(0)
        config = json.dumps({"role": role, "fds": fds, "rlimits": rlimits(self.limits, sandboxed),
                             "hard_extra": HARD_EXTRA, "frame_limit": int(self.limits.max_output_kb) << 10})
        if sandboxed:
            # + 2 tasks: bwrap outside the sandbox and the init inside (the cgroup or watchdog sees both).
            try:
                self.box = sandbox_limits.Box(self.limits.memory_mb, self.limits.max_processes + 2)
            except OSError as e:
                raise SandboxError(f"cannot create the sandbox's {sandbox_limits.mechanism()[0]}: {e}") from e
            argv, cwd, env = self.box.wrap(bwrap_argv(python, script(), config)), "/", HOST_ENV
        else:
            argv = [python, "-I", "-c", script(), config]
            cwd, env = self._scratch.name, {**HOST_ENV, "HOME": self._scratch.name, "TMPDIR": self._scratch.name}
        self.started_at = time.monotonic()
        try:
            # start_new_session: the sandbox leads its own process group, killed as a whole at the deadline.
            self.proc = subprocess.Popen(argv, stdin=self._stdin, stdout=self._out, stderr=self._err, cwd=cwd,
                                         env=env, pass_fds=tuple(fds.values()), start_new_session=True)
        except OSError as e:
            self.start_error = f"cannot start: {e}"
            return
        if self.box is not None:
            self.box.watch(self.proc.pid)

    def wait(self, deadline: float) -> bool:
        """Wait until it ends or until time.monotonic() reaches `deadline`; True if it has ended."""
        if self.proc is None:
            return True
        try:
            self.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            return False
        self.ended_at = self.ended_at or time.monotonic()
        return True

    def kill(self) -> None:
        """SIGKILL its process group (bwrap dies; --die-with-parent then ends the init and the namespace)."""
        if self.proc is None or self.proc.returncode is not None:
            return
        self.timed_out = True
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.ended_at = time.monotonic()

    def finish(self) -> Ended:
        """Read how it ended and free everything it held. Kills it first if it is still running."""
        try:
            self.kill()
            hit = self.box.close() if self.box is not None else None
            report = _read_all(self._report_r)
            try:
                info = json.loads(report[2:]) if report[:2] == b"ok" and len(report) > 2 else None
            except ValueError:
                info = None
            rc = self.proc.returncode if self.proc is not None else -1
            if self.sandboxed and rc > 128:  # bwrap: 128 + the signal its pid 1 died of
                rc = 128 - rc
            stderr = _tail(self._err, STDERR_TAIL_CHARS) if self.proc is not None else self.start_error
            cap = int(self.limits.max_output_kb) << 10
            return Ended(
                ready=report[:2] == b"ok", reported=info is not None,
                returncode=os.waitstatus_to_exitcode(info["status"]) if info else rc,
                cpu_s=float(info["cpu"]) if info else 0.0, end=info["end"] if info else "",
                timed_out=self.timed_out, hit=hit, mechanism=self.box.kind if self.box is not None else "none",
                seconds=round((self.ended_at or time.monotonic()) - self.started_at, 3),
                stderr_tail=stderr, output_full=max(_size(self._out), _size(self._err)) >= cap)
        finally:
            self._cleanup()

    def _cleanup(self) -> None:
        if self.box is not None:
            self.box.close()
        for f in (self._stdin, self._out, self._err):
            f.close()
        if self._report_r >= 0:
            os.close(self._report_r)
            self._report_r = -1
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def limit_status(ended: Ended, limits, whose: str = "") -> tuple[str, str] | None:
    """(status, detail) when a limit of the harness ended this sandbox's main process (or its whole sandbox),
    else None. `whose` is added to the detail (e.g. " of the tests' process")."""
    if ended.timed_out:
        return "timeout", f"wall-clock limit (timeout_s={limits.timeout_s} s){whose}"
    sig = -ended.returncode if ended.returncode < 0 else 0
    # SIGXCPU at cpu_s, SIGKILL at cpu_s + 1 if ignored; a SIGKILL of a process that did not use its CPU time is
    # someone else's (the OOM killer, the watchdog: `hit`, or the program's own).
    if sig in (signal.SIGXCPU, signal.SIGKILL) and ended.cpu_s >= CPU_SHARE * limits.cpu_s:
        how = "SIGXCPU" if sig == signal.SIGXCPU else "SIGXCPU ignored, SIGKILL one second later"
        return "timeout", f"CPU limit (cpu_s={limits.cpu_s} s; {how}){whose}"
    if ended.hit == "memory":
        return "failed", (f"the sandbox's processes together exceeded memory_mb={limits.memory_mb} "
                          f"({ended.mechanism}){whose}")
    if ended.hit == "tasks":
        return "failed", f"the sandbox reached max_processes={limits.max_processes} ({ended.mechanism}){whose}"
    if sig == signal.SIGXFSZ or ended.output_full:
        return "failed", f"output limit (max_output_kb={limits.max_output_kb} for stdout, stderr, each file){whose}"
    return None


def _read_all(fd: int) -> bytes:
    """Everything in the report pipe now (its writers are gone or never wrote more than a few kB)."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < 1 << 16:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _size(f) -> int:
    return os.fstat(f.fileno()).st_size


def _tail(f, chars: int) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - 4 * chars))
    return f.read().decode("utf-8", errors="replace")[-chars:]
