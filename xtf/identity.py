"""Content identity of model weights: what the run id and the score cache key use instead of a folder name.

    weights_identity("/models/llama3")   # sha256 over the weight, config and tokenizer files (16 hex chars)

Two folders holding the same bytes have the same identity; the same folder with new weights (even of the same
shape), a changed config or a changed tokenizer file gets a new one. Hashing a 16 GB model takes about a minute,
so each file's sha256 is remembered by (absolute path, mtime, size): in this process, and on disk under
`<cache_dir>/file_sha256/` when a cache folder is given. A file rewritten in place gets a new mtime and is
hashed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from xtf.cache import atomic_write_text, sha256_file

# Top-level files that determine what a model computes or how text becomes tokens. Subfolders are ignored (e.g.
# Meta's original/ copy of the same weights in another format); README, LICENSE and .gitattributes are too.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.json", "*.model", "*.txt", "*.tiktoken",
                   "*.jinja")
_NOT_CONTENT = {"LICENSE.txt", "USE_POLICY.txt", "README.txt"}
_memo: dict[tuple[str, int, int], str] = {}


def identity_files(folder: str | Path) -> list[Path]:
    """The files of `folder` that enter its identity, sorted by name."""
    folder = Path(folder)
    found = {p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    return sorted((p for p in found if p.name not in _NOT_CONTENT), key=lambda p: p.name)


def file_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of a file, computed once per (absolute path, mtime, size) and remembered (see module docstring)."""
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key in _memo:
        return _memo[key]
    record = None
    if cache_dir is not None:
        record = Path(cache_dir) / "file_sha256" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json"
        try:
            saved = json.loads(record.read_text())
            if [saved["path"], saved["mtime_ns"], saved["size"]] == list(key) and len(saved["sha256"]) == 64:
                _memo[key] = saved["sha256"]
                return saved["sha256"]
        except (OSError, ValueError, KeyError, TypeError):
            pass  # absent or unreadable: hash the file
    digest = sha256_file(path)
    _memo[key] = digest
    if record is not None:
        try:
            atomic_write_text(record, json.dumps({"path": key[0], "mtime_ns": key[1], "size": key[2],
                                                  "sha256": digest}))
        except OSError:
            pass  # a read-only cache only costs the hash next time
    return digest


def weights_identity(folder: str | Path, cache_dir: str | Path | None = None) -> str:
    """Content hash (16 hex chars) of a model folder: the names and sha256 of its weight, config and tokenizer
    files (`identity_files`). Raises FileNotFoundError if the folder holds none of them."""
    files = identity_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no weight, config or tokenizer files")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{file_sha256(f, cache_dir)}\n".encode())
    return h.hexdigest()[:16]

