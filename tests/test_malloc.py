"""xtf.malloc: glibc's mmap threshold fixed at the start of a run (freed activations go back to the system), a
caller's own setting kept, and what the run records. Each probe runs in a fresh interpreter: glibc's state is
per process and cannot be reset."""

import json
import platform
import subprocess
import sys

import pytest

from xtf import malloc

# Frees a 4 MiB block and asks for 4 MiB again: under glibc's dynamic threshold the first free raises the threshold
# above 4 MiB, so the second block comes from the heap arena (fragmenting, never returned); with the threshold
# fixed below 4 MiB it is a mapping of its own again. Prints whether it lies in the [heap] region, then the record.
PROBE = """
import ctypes, json, sys
from xtf import malloc
if sys.argv[1] == "configure":
    malloc.configure()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 4 << 20
libc.free(libc.malloc(size))
p = libc.malloc(size)
heap = [line.split()[0].split("-") for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
in_heap = any(int(a, 16) <= p < int(b, 16) for a, b in heap)
print(json.dumps({"in_heap": in_heap, "record": malloc.describe()}))
"""

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="xtf.malloc acts on glibc only")


def _probe(arg: str, env: dict | None = None) -> dict:
    env = {k: v for k, v in (env or {}).items()} | {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", PROBE, arg], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@glibc
def test_glibcs_default_keeps_a_freed_large_block_in_the_heap():
    """The cause, shown: without xtf.malloc the second 4 MiB block is carved from the heap arena."""
    out = _probe("default")
    assert out["in_heap"] is True and out["record"]["mmap_threshold"] is None, out
    assert "not called" in out["record"]["reason"]


@glibc
def test_configure_fixes_the_threshold_and_records_it():
    out = _probe("configure")
    assert out["in_heap"] is False, out
    assert out["record"]["mmap_threshold"] == malloc.MMAP_THRESHOLD == 1 << 20
    assert out["record"]["reason"].startswith("set by xtf (glibc ")


@glibc
def test_a_threshold_the_caller_set_is_kept():
    """glibc reads MALLOC_MMAP_THRESHOLD_ at start; xtf neither overrides it nor claims it."""
    out = _probe("configure", {malloc.ENV: str(8 << 20)})
    assert out["in_heap"] is True, out  # 8 MiB: the 4 MiB block is the heap's, as the caller asked
    assert out["record"] == {"mmap_threshold": str(8 << 20), "reason": f"{malloc.ENV} set by the caller"}

