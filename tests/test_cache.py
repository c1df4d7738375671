"""Content-addressed artifacts: reuse, atomicity, corruption detection."""

import json

from xtf.cache import atomic_write_text, cached_dir, key_of, verify


def test_key_is_order_independent_and_content_sensitive():
    assert key_of({"a": 1, "b": [1, 2]}) == key_of({"b": [1, 2], "a": 1})
    assert key_of({"a": 1}) != key_of({"a": 2})


def test_built_once_then_reused(tmp_path):
    calls = []

    def build(folder):
        calls.append(1)
        (folder / "x.txt").write_text("hello")

    a = cached_dir(tmp_path, "kind", {"v": 1}, build)
    b = cached_dir(tmp_path, "kind", {"v": 1}, build)
    assert a == b and len(calls) == 1 and (a / "x.txt").read_text() == "hello"
    assert json.loads((a / "spec.json").read_text()) == {"v": 1}


def test_truncated_or_corrupted_artifact_is_rebuilt(tmp_path, caplog):
    calls = []

    def build(folder):
        calls.append(1)
        (folder / "x.bin").write_bytes(b"0123456789")

    a = cached_dir(tmp_path, "kind", {"v": 1}, build)
    (a / "x.bin").write_bytes(b"01234")                       # truncated
    assert "truncated" in verify(a)
    cached_dir(tmp_path, "kind", {"v": 1}, build)
    assert len(calls) == 2 and "rebuilding" in caplog.text
    assert verify(a) is None and verify(a) is None            # the second one from this process's memo
    (a / "x.bin").write_bytes(b"0123456780")                  # same size, different bytes: the memo sees it too
    assert "checksum" in verify(a)
    cached_dir(tmp_path, "kind", {"v": 1}, build)
    assert len(calls) == 3 and verify(a) is None


def test_failed_build_leaves_nothing_behind(tmp_path):
    def build(folder):
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("killed")

    try:
        cached_dir(tmp_path, "kind", {"v": 1}, build)
    except RuntimeError:
        pass
    assert list((tmp_path / "kind").iterdir()) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two" and [f.name for f in tmp_path.iterdir()] == ["r.json"]


_HOLDER = """
import sys, time
from pathlib import Path
from xtf.cache import cached_dir

def build(folder):
    Path(sys.argv[2]).touch()          # tell the test the build (and its lock) has started
    time.sleep(float(sys.argv[3]))
    (folder / "x.txt").write_text("built by the holder")

cached_dir(sys.argv[1], "kind", {"v": 1}, build)
"""


def _start_holder(tmp_path, seconds):
    import subprocess
    import sys
    import time

    started = tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / "cache"), str(started), str(seconds)])
    deadline = time.monotonic() + 60
    while not started.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the holder process did not start its build"
        time.sleep(0.05)
    return proc


def test_concurrent_builds_of_one_key_build_once(tmp_path, caplog):
    """A second process that needs an artifact another is building waits for it instead of building it again
    (two sweep cells sharing a TC reference model computed it twice before)."""
    caplog.set_level("INFO", logger="xtf.cache")
    proc = _start_holder(tmp_path, seconds=2)
    calls = []
    folder = cached_dir(tmp_path / "cache", "kind", {"v": 1}, lambda f: calls.append(1))
    assert proc.wait(timeout=60) == 0
    assert calls == [] and (folder / "x.txt").read_text() == "built by the holder"
    assert "waiting for another process" in caplog.text


def test_a_killed_builder_does_not_block_the_next(tmp_path):
    import signal

    def stuck(*_):
        raise TimeoutError("still waiting for the lock of a killed builder after 60 s")

    proc = _start_holder(tmp_path, seconds=60)
    proc.kill()
    proc.wait(timeout=60)
    previous = signal.signal(signal.SIGALRM, stuck)  # a leaked lock fails the test instead of hanging it
    signal.alarm(60)
    try:
        folder = cached_dir(tmp_path / "cache", "kind", {"v": 1}, lambda f: (f / "x.txt").write_text("mine"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert (folder / "x.txt").read_text() == "mine" and verify(folder) is None
