"""glibc's malloc told to give freed tensor memory back to the system, at the start of each run, and recorded.

Why: torch on a CPU takes every tensor's memory from malloc. glibc serves a request of at least M_MMAP_THRESHOLD
bytes with a mapping of its own, unmapped on free; smaller ones come from its heap arenas, which keep freed memory
and fragment. The threshold starts at 128 KiB but is dynamic: each free of a mapped block raises it to that
block's size (up to 32 MiB), so after the first training step the 1–32 MiB activations of a 135M model (a
[8, 300, 1536] float32 MLP activation is 14 MiB) live in the arenas, and the process's resident memory only
grows. Measured (/tmp-free script: LoRA forward + backward of SmolLM2-135M, 8 rows x 300 tokens, activation
checkpointing, chunked loss, one thread, 2-core AMD EPYC at load ~1.5): peak RSS 5.95 GB with glibc's defaults,
1.84 GB with the threshold fixed at 1 MiB (5.62 GB at 16 MiB), for a step ~15 % slower (43 -> 51 s: a fresh
mapping's pages are faulted in on first use).

`configure()` (xtf.cli, at start) fixes the threshold with mallopt(3), which also turns the dynamic adjustment off.
It is glibc's: elsewhere (macOS, musl) nothing is done and the record says so. A threshold the caller set in the
environment (MALLOC_MMAP_THRESHOLD_, read by glibc at start) is kept. Memory layout changes no float a run
computes: the setting is recorded in the run (`describe()`), never part of its identity.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

MMAP_THRESHOLD = 1 << 20  # bytes; see the module doc for the measurement behind it
M_MMAP_THRESHOLD = -3      # <malloc.h>
ENV = "MALLOC_MMAP_THRESHOLD_"

_state: dict = {}


def _glibc():
    """glibc's handle with `mallopt`, or None (not glibc)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        version = libc.gnu_get_libc_version().decode()
    except (OSError, AttributeError):
        return None, None
    return libc, version


def configure(threshold: int = MMAP_THRESHOLD, environ=os.environ) -> dict:
    """Fix glibc's mmap threshold at `threshold` bytes unless the caller set one; returns what is recorded."""
    if environ.get(ENV):
        _state["malloc"] = {"mmap_threshold": environ[ENV], "reason": f"{ENV} set by the caller"}
        return describe()
    libc, version = _glibc()
    if libc is None:
        _state["malloc"] = {"mmap_threshold": None, "reason": "not glibc: the C library's own policy"}
    elif libc.mallopt(M_MMAP_THRESHOLD, int(threshold)) != 1:
        _state["malloc"] = {"mmap_threshold": None, "reason": f"glibc {version} refused mallopt({threshold})"}
    else:
        _state["malloc"] = {"mmap_threshold": int(threshold),
                            "reason": f"set by xtf (glibc {version}): freed activations go back to the system"}
    return describe()


def describe() -> dict:
    """The record's "malloc" entry: {"mmap_threshold": bytes or None, "reason"}."""
    return dict(_state.get("malloc") or {"mmap_threshold": None,
                                         "reason": "glibc's dynamic default (xtf.malloc.configure was not called)"})
