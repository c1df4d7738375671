"""Memory and task limits for a whole sandbox (every process it starts, together), for xtf.sandbox.

    box = Box(memory_mb=256, max_tasks=34)
    proc = subprocess.Popen(box.wrap(argv), ...)     # joins the box before argv runs: nothing forks outside it
    box.watch(proc.pid)
    ...                                              # wait for proc, kill it on timeout
    hit = box.close()                                # "memory", "tasks" or None; removes the cgroup

rlimits are per process (six children of 100 MB each pass RLIMIT_AS=256 MB), so a sandbox needs a limit over its
whole process tree. The mechanism is chosen once per process (`mechanism()`), best first:

  cgroup v1   the memory and pids hierarchies are mounted and this process may create cgroups below its own in
              both (root in a container with cgroup v1, as on the machines this project is developed on): one
              child cgroup per sandbox with memory.limit_in_bytes (+ memory.memsw.limit_in_bytes, so swap does not
              extend it) and pids.max. Above the limit the kernel reclaims, then its OOM killer kills a process of
              that sandbox; memory.oom_control's oom_kill count tells the harness it happened.
  cgroup v2   this process's own cgroup delegates memory and pids to its children (both in its
              cgroup.subtree_control) and is writable: one child per sandbox with memory.max, memory.swap.max=0,
              memory.oom.group=1 (an OOM kills the whole sandbox) and pids.max. Rare in practice: cgroup v2 forbids
              enabling controllers for the children of a non-root cgroup that holds processes, and the harness's
              own cgroup holds the harness.
  watchdog    neither (e.g. an ordinary user on a systemd machine): a host thread reads /proc every POLL_S, sums
              the resident memory (RSS) and the task count of every process descended from the sandbox's first
              process, and SIGKILLs all of them above memory_mb or max_tasks. Every sandbox process is such a
              descendant: bwrap's init is pid 1 of the sandbox's pid namespace, so orphans are re-parented to it,
              not to the host's init. Limits: it polls, so a burst between two polls can overshoot (each process
              is still capped by RLIMIT_AS, the task count by RLIMIT_NPROC); RSS counts pages shared between
              processes once per process (an over-estimate, never an under-estimate); tmpfs pages are not RSS
              (the sandbox's tmpfs mounts have their own size caps). It costs one /proc scan per poll per sandbox.

The cgroup is joined race-free: the Popen'd command is a one-line `sh` that writes its own pid into the cgroup's
cgroup.procs and then execs the sandbox, so every later process is born inside. The sandbox never sees
/sys/fs/cgroup and, as an unprivileged uid, could not write to it.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid

log = logging.getLogger(__name__)

POLL_S = 0.05                # watchdog poll period (seconds)
REMOVE_WAIT_S = 60.0         # how long a finished sandbox's cgroup may take to empty before it is left behind
PAGE = os.sysconf("SC_PAGE_SIZE")
# sh: join each cgroup given before "--" (write our own pid), then exec the command after it; 125 if a join fails.
JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


def _mounts() -> dict[str, tuple[str, str]]:
    """{"memory" | "pids" | "v2": (root of the hierarchy mounted, mount point)} from /proc/self/mountinfo."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, fs = left.split(), right.split()
            if len(fields) < 5 or len(fs) < 3:
                continue
            if fs[0] == "cgroup":
                for c in fs[2].split(","):
                    if c in ("memory", "pids"):
                        found.setdefault(c, (fields[3], fields[4]))
            elif fs[0] == "cgroup2":
                found.setdefault("v2", (fields[3], fields[4]))
    return found


def _own() -> dict[str, str]:
    """{controller | "v2": this process's cgroup path} from /proc/self/cgroup."""
    own = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else ["v2"]:
                own[c] = path
    return own


def _host_dir(key: str, mounts: dict, own: dict) -> str | None:
    """Where this process's cgroup of hierarchy `key` is on the file system, if it is mounted and writable."""
    if key not in mounts or key not in own:
        return None
    root, point = mounts[key]
    path = own[key]
    if root != "/" and not (path + "/").startswith(root.rstrip("/") + "/"):
        return None  # this process's cgroup is outside the mounted subtree
    d = os.path.normpath(os.path.join(point, os.path.relpath(path, root)))
    return d if os.path.isdir(d) and os.access(d, os.W_OK) else None


def _parents() -> tuple[str, dict[str, str]] | None:
    """("cgroup v1" | "cgroup v2", {"memory": dir, "pids": dir}) under which sandboxes' cgroups can go, or None."""
    mounts, own = _mounts(), _own()
    mem, pids = _host_dir("memory", mounts, own), _host_dir("pids", mounts, own)
    if mem and pids:
        return "cgroup v1", {"memory": mem, "pids": pids}
    v2 = _host_dir("v2", mounts, own)
    if v2:
        try:
            with open(os.path.join(v2, "cgroup.subtree_control")) as f:
                enabled = f.read().split()
        except OSError:
            enabled = []
        if "memory" in enabled and "pids" in enabled:
            return "cgroup v2", {"memory": v2, "pids": v2}
    return None


@functools.cache
def mechanism() -> tuple[str, dict[str, str] | None]:
    """(name, cgroup parents or None): a cgroup if creating and joining one works here (tried once), else the
    watchdog."""
    try:
        found = _parents()
    except OSError as e:
        found, why = None, f"cannot read /proc/self cgroup data: {e}"
    else:
        why = "no writable cgroup with the memory and pids controllers"
    if found is not None:
        kind, parents = found
        box = None
        try:
            box = Box(64, 8, _mech=(kind, parents))
            rc = subprocess.run(box.wrap(["true"]), capture_output=True).returncode
            if rc == 0:
                return kind, parents
            why = f"joining a test cgroup failed (sh exit {rc})"
        except OSError as e:
            why = f"creating a test cgroup failed: {e}"
        finally:
            if box is not None:
                box.close()
    log.debug("sandbox limits: watchdog (%s)", why)
    return "watchdog", None


class Box:
    """One sandbox's whole-tree limits; see the module docstring. Not reusable: one Box per sandbox run."""

    def __init__(self, memory_mb: int, max_tasks: int, _mech: tuple | None = None):
        self.kind, parents = _mech or mechanism()
        self.memory = int(memory_mb) << 20
        self.max_tasks = int(max_tasks)
        self.hit: str | None = None
        self.dirs: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if parents:
            try:
                self._create(parents)
            except OSError:
                self.close()
                raise

    def _create(self, parents: dict[str, str]) -> None:
        name = f"xtf-sandbox-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        for ctrl, parent in parents.items():
            d = os.path.join(parent, name)
            if d not in self.dirs.values():
                os.mkdir(d)
            self.dirs[ctrl] = d
        mem, pids = self.dirs["memory"], self.dirs["pids"]
        if self.kind == "cgroup v1":
            _write(mem, "memory.limit_in_bytes", self.memory)
            _write(mem, "memory.memsw.limit_in_bytes", self.memory, optional=True)  # only with swap accounting
        else:
            _write(mem, "memory.max", self.memory)
            _write(mem, "memory.swap.max", 0, optional=True)
            _write(mem, "memory.oom.group", 1, optional=True)
        _write(pids, "pids.max", self.max_tasks)

    def wrap(self, argv: list[str]) -> list[str]:
        """The command to Popen: argv itself (watchdog), or argv run from inside this box's cgroup(s)."""
        if not self.dirs:
            return list(argv)
        procs = [os.path.join(d, "cgroup.procs") for d in dict.fromkeys(self.dirs.values())]
        return [shutil.which("sh") or "/bin/sh", "-c", JOIN, "sh", *procs, "--", *argv]

    def watch(self, pid: int) -> None:
        """Start the watchdog over the process tree rooted at `pid` (no-op for a cgroup)."""
        if self.kind == "watchdog":
            self._thread = threading.Thread(target=self._poll, args=(pid,), daemon=True, name=f"xtf-watch-{pid}")
            self._thread.start()

    def _poll(self, root: int) -> None:
        while not self._stop.wait(POLL_S):
            tree = _tree(root)
            if not tree:
                return
            rss = sum(r for r, _ in tree.values()) * PAGE
            tasks = sum(t for _, t in tree.values())
            if rss > self.memory or tasks > self.max_tasks:
                self.hit = "memory" if rss > self.memory else "tasks"
                for pid in tree:  # the root first (dict order): no new children are re-parented outside
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except OSError:
                        pass
                return

    def close(self) -> str | None:
        """Stop watching, read whether a limit was hit, remove the cgroup(s); returns "memory", "tasks" or None."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.dirs:
            if self.kind == "cgroup v1":
                oom = _field(self.dirs["memory"], "memory.oom_control", "oom_kill")
            else:
                oom = _field(self.dirs["memory"], "memory.events", "oom_kill")
            if oom:
                self.hit = "memory"
            elif _field(self.dirs["pids"], "pids.events", "max"):
                self.hit = "tasks"
            for d in dict.fromkeys(self.dirs.values()):
                _remove(d)
            self.dirs = {}
        return self.hit


def _write(d: str, name: str, value: int, optional: bool = False) -> None:
    path = os.path.join(d, name)
    if optional and not os.path.exists(path):
        return
    with open(path, "w") as f:
        f.write(str(value))


def _field(d: str, name: str, key: str) -> int:
    """The integer after `key` in a flat-keyed cgroup file (0 if absent)."""
    try:
        with open(os.path.join(d, name)) as f:
            for line in f:
                k, _, v = line.partition(" ")
                if k == key:
                    return int(v)
    except (OSError, ValueError):
        pass
    return 0


def _remove(d: str) -> None:
    """rmdir a sandbox's cgroup, killing what is left in it; its pid namespace may take a moment to empty (long
    on a loaded machine: the wait ends as soon as it is empty, or after REMOVE_WAIT_S)."""
    deadline = time.monotonic() + REMOVE_WAIT_S
    while time.monotonic() < deadline:
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError:
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
            threading.Event().wait(0.02)
    log.warning("could not remove the sandbox cgroup %s (still busy)", d)


def _tree(root: int) -> dict[int, tuple[int, int]]:
    """{pid: (resident pages, threads)} of `root` and all its descendants, root first; {} if root is gone."""
    stats, children = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                rest = f.read().rpartition(b")")[2].split()  # after "pid (comm)": comm may hold spaces
        except OSError:
            continue  # exited meanwhile
        # rest[0] is field 3 (state): ppid = field 4, num_threads = field 20, rss = field 24 (pages)
        pid = int(name)
        stats[pid] = (int(rest[21]), int(rest[17]))
        children.setdefault(int(rest[1]), []).append(pid)
    if root not in stats:
        return {}
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid]
            todo.extend(children.get(pid, ()))
    return tree
