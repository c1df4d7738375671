"""What runs inside each sandbox: a small trusted init that forks the process doing the work and reports on it.

    argv = [python, "-I", "-c", sandbox_boot.script(), json.dumps(config)]   # the job (JSON) on stdin

The init (pid 1 of the sandbox's pid namespace: bwrap --as-pid-1) reads its job, keeps only its own descriptors,
makes itself non-dumpable (so a process of the same uid cannot ptrace it or open its /proc files: the program
runs without capabilities) and ignores every signal it can be sent from inside (pid 1 of a namespace gets only
those it handles), writes "ok" to its report pipe and forks the main process. That process restores the default
signal handling, becomes dumpable again, sets its rlimits (hard = soft, RLIMIT_CPU's hard one second above:
SIGXCPU first, SIGKILL if it is ignored) and does its role:

  program  run the program (runpy, as __main__, from /tmp/program.py), then write the job's token to the init
  serve    the candidate of a test: run the program, then answer calls: each request frame holds plain-data
           arguments; the answer is the function's result as plain data ("R"), the exception it raised ("E"), or
           why its result is not plain data ("N") (xtf.sandbox_plain). Its end of the request pipe closing ends it.
  check    the tests: exec the problem's prompt (trusted, from the data set) and test source (kept in memory: no
           file), wait for the candidate's "S" (its program ran), then call check() on a proxy whose calls cross
           the pipes as plain data; the verdict ("passed", "failed", "gone", "not_plain", "too_large") goes to
           the init.

The init reaps every process (orphans come to pid 1) until the main one ends, then reports one JSON line,
{"status": its wait status, "cpu": its CPU seconds (with the children it reaped), "end": what it wrote to the
init}, and exits; the kernel then kills whatever is left in the namespace. The main process cannot reach that
report: its descriptor is closed in the main process, and the init is non-dumpable. Without bubblewrap (the
unsafe mode) the same script runs as an ordinary child on the host, with none of those guarantees.
"""

from __future__ import annotations

import functools
from pathlib import Path

from xtf import sandbox_plain

BOOT = r"""
import ctypes, json, linecache, os, resource, runpy, signal, sys, traceback

CONFIG = json.loads(sys.argv[1])
JOB = json.loads(sys.stdin.buffer.read())
FDS = dict(CONFIG["fds"])
REPORT = FDS.pop("report")
LIMIT = CONFIG["frame_limit"]  # a result of the candidate: max_output_kb
REQUEST_LIMIT = 1 << 26       # arguments, from the trusted tests: only a guard
PR_SET_DUMPABLE = 4


def keep_only(fds):
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    low = 3
    for fd in sorted(fds):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
    for fd in fds:  # not into the program's own subprocesses
        os.set_inheritable(fd, False)


def dumpable(libc, flag):
    if libc.prctl(PR_SET_DUMPABLE, flag, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) failed")


def run_program():
    with open("program.py", "w", encoding="utf-8") as f:
        f.write(JOB["source"])
    return runpy.run_path("program.py", run_name="__main__")


def role_program(end):
    run_program()
    os.write(end, JOB["token"].encode())


def role_serve(end):
    found = run_program().get(JOB["entry_point"])
    req, resp = FDS["req"], FDS["resp"]
    write_frame(resp, b"S", b"")
    while True:
        try:
            payload = read_frame(req, REQUEST_LIMIT)[1]
        except EOFError:  # the tests are over
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        args, kwargs = decode(payload)
        try:
            if not callable(found):
                raise NameError(f"name {JOB['entry_point']!r} is not defined")
            value = found(*args, **kwargs)
        except Exception as e:
            traceback.print_exc()
            write_frame(resp, b"E", json.dumps([type(e).__name__, str(e)[:500]]).encode())
            continue
        try:
            data = encode(value)
        except Exception as e:  # not plain data, a cycle, an int too long to print
            write_frame(resp, b"N", str(e)[:500].encode("utf-8", "replace"))
        else:
            write_frame(resp, b"R", data)


class Broken(BaseException):
    # BaseException: a test's `except Exception` cannot swallow it, and the verdict remembers it anyway
    pass


def role_check(end):
    import builtins
    req, resp = FDS["req"], FDS["resp"]
    broken = []

    def receive():
        try:
            return read_frame(resp, LIMIT)
        except EOFError:
            broken.append(["gone", "the candidate's process ended"])
        except OverflowError as e:
            broken.append(["too_large", str(e)])
        raise Broken(broken[0][1])

    def candidate(*args, **kwargs):
        if broken:
            raise Broken(broken[0][1])
        try:
            write_frame(req, b"C", encode([list(args), kwargs]))
        except BrokenPipeError:
            broken.append(["gone", "the candidate's process ended"])
            raise Broken(broken[0][1])
        kind, payload = receive()
        if kind == b"R":
            try:
                return decode(payload)
            except Exception as e:
                broken.append(["not_plain", f"undecodable result ({type(e).__name__}: {str(e)[:200]})"])
        elif kind == b"E":
            name, message = json.loads(payload)
            cls = getattr(builtins, name, None) if name.isidentifier() else None
            # a builtin exception type as is, but never one that ends an iteration (map, next) as if it were done
            if not (isinstance(cls, type) and issubclass(cls, Exception)) or cls in (StopIteration,
                                                                                    StopAsyncIteration):
                cls = RuntimeError
            raise cls(f"the candidate raised {name}: {message}")
        else:
            broken.append(["not_plain", payload.decode("utf-8", "replace")[:300]])
        raise Broken(broken[0][1])

    scope = {"__name__": "__main__"}
    for name in ("prompt", "test"):
        filename = f"<{name}>"
        linecache.cache[filename] = (len(JOB[name]), None, JOB[name].splitlines(True), filename)
        exec(compile(JOB[name], filename, "exec"), scope)
    verdict = ["failed", ""]
    try:
        if receive()[0] != b"S":
            broken.append(["not_plain", "the candidate spoke before its program ran"])
            raise Broken(broken[0][1])
        scope[JOB["entry_point"]] = candidate  # a test that names the function means the candidate (HumanEval/33)
        scope["check"](candidate)
        verdict = ["passed", ""]
    except BaseException:
        traceback.print_exc()
    os.write(end, json.dumps(broken[0] if broken else verdict).encode())


def main_process(libc, end, handlers):
    for sig, handler in handlers.items():
        if handler is not None:  # None: set outside Python, nothing to restore
            signal.signal(sig, handler)
    dumpable(libc, 1)
    for name, value in CONFIG["rlimits"].items():
        resource.setrlimit(getattr(resource, name), (value, value + CONFIG["hard_extra"].get(name, 0)))
    ROLES[CONFIG["role"]](end)


def ignore_signals():
    # Ignore every signal a process of the sandbox could send the init; {signal: the handler it had}.
    handlers = {}
    for sig in signal.valid_signals() - {signal.SIGKILL, signal.SIGSTOP, signal.SIGCHLD}:
        try:
            handlers[sig] = signal.signal(sig, signal.SIG_IGN)
        except (OSError, ValueError):
            pass
    return handlers


def init(main, end):
    while True:
        pid, status, usage = os.wait4(-1, 0)
        if pid == main:
            break
    os.set_blocking(end, False)
    try:
        ended = os.read(end, 4096)
    except BlockingIOError:
        ended = b""
    cpu = usage.ru_utime + usage.ru_stime
    os.write(REPORT, json.dumps({"status": status, "cpu": cpu, "end": ended.decode("utf-8", "replace")}).encode())
    os._exit(0)


ROLES = {"program": role_program, "serve": role_serve, "check": role_check}
keep_only([REPORT, *FDS.values()])
LIBC = ctypes.CDLL(None, use_errno=True)
dumpable(LIBC, 0)
HANDLERS = ignore_signals()  # before the fork: the main process restores them
END_R, END_W = os.pipe()
os.write(REPORT, b"ok")
MAIN = os.fork()
if MAIN == 0:
    os.close(REPORT)
    os.close(END_R)
    main_process(LIBC, END_W, HANDLERS)
else:
    os.close(END_W)
    for fd in FDS.values():
        os.close(fd)
    init(MAIN, END_R)
"""


@functools.cache
def script() -> str:
    """The `python -c` source: xtf.sandbox_plain's codec, then BOOT."""
    return Path(sandbox_plain.__file__).read_text(encoding="utf-8") + "\n" + BOOT
