"""Plain data across a sandbox's boundary: the only values a candidate's result may be, and how they travel.

    payload = encode((1, [2.5, "x"], {3: None}))     # bytes (JSON with tags); TypeError for anything else
    value = decode(payload)                          # ValueError / TypeError / RecursionError unless plain
    write_frame(fd, b"R", payload); kind, payload = read_frame(fd, limit=256 << 10)

Plain data: None, bool, int, float (nan and infinities too), complex, str, bytes, and list, tuple, dict, set and
frozenset of plain data, checked by exact type (a subclass of int or list is not plain: its methods are the
candidate's). The decoder builds only those types from JSON (lists are arrays; every other container is a
one-key object: {"tuple": [...]}, {"set": [...]}, {"frozenset": [...]}, {"dict": [[key, value], ...]},
{"bytes": "<hex>"}, {"complex": [real, imag]}), so whatever bytes a candidate writes, the checking side holds
plain values whose ==, -, abs and str are Python's own.

This module is stdlib-only and self-contained: xtf.sandbox_boot runs its source inside each sandbox (the candidate
encodes with it, the checker decodes with it).
"""

from __future__ import annotations

import json
import os

FRAME_HEADER = 9  # 1 byte of kind, 8 bytes of big-endian payload length
_SCALARS = (type(None), bool, int, float, str)


def _tagged(value):
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [_tagged(v) for v in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [_tagged(v) for v in value]}
    if kind is dict:
        return {"dict": [[_tagged(k), _tagged(v)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": value.hex()}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    raise TypeError(f"a value of type {kind.__qualname__!r} is not plain data (None, bool, int, float, complex, "
                    f"str, bytes, list, tuple, dict, set, frozenset)")


def encode(value) -> bytes:
    """`value` as tagged JSON; TypeError if it is not plain data (RecursionError if it contains itself)."""
    return json.dumps(_tagged(value), separators=(",", ":"), allow_nan=True).encode()


def _number(v) -> bool:
    return type(v) in (int, float)


def _untag(obj: dict):
    if len(obj) != 1:
        raise ValueError(f"a plain-data object has exactly one tag, got {sorted(obj)[:4]}")
    (tag, v), = obj.items()
    if tag in ("tuple", "set", "frozenset") and type(v) is list:
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](v)
    if tag == "dict" and type(v) is list and all(type(kv) is list and len(kv) == 2 for kv in v):
        return dict(v)
    if tag == "bytes" and type(v) is str:
        return bytes.fromhex(v)
    if tag == "complex" and type(v) is list and len(v) == 2 and all(map(_number, v)):
        return complex(v[0], v[1])
    raise ValueError(f"not plain data: tag {tag!r} with a {type(v).__name__}")


def decode(data: bytes):
    """The plain value `data` encodes; ValueError (or TypeError for an unhashable key, RecursionError for deep
    nesting) for anything else."""
    return json.loads(data, object_hook=_untag)


def write_frame(fd: int, kind: bytes, payload: bytes) -> None:
    data = kind + len(payload).to_bytes(8, "big") + payload
    while data:
        data = data[os.write(fd, data):]


def _read_exactly(fd: int, n: int) -> bytes:
    parts, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError(f"the pipe closed {n - left} bytes into a {n}-byte read")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def read_frame(fd: int, limit: int) -> tuple[bytes, bytes]:
    """(kind, payload) of the next frame; EOFError when the writer is gone, OverflowError above `limit` bytes
    (before reading them)."""
    header = _read_exactly(fd, FRAME_HEADER)
    size = int.from_bytes(header[1:], "big")
    if size > limit:
        raise OverflowError(f"a frame of {size} bytes is over the limit of {limit} bytes")
    return header[:1], _read_exactly(fd, size)
