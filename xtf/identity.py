"""Content identity of model weights and of the code behind each stage: what the run id, the score cache key and a
run's record use instead of a folder name or a version number someone may forget to bump.

    weights_identity("/models/llama3")   # sha256 over the weight, config and tokenizer files (16 hex chars)
    code_hashes(tasks.TASKS["gsm8k"])    # {stage: sha256 of its source files (12 hex chars)}, in results.json

Two folders holding the same bytes have the same identity; the same folder with new weights (even of the same
shape), a changed config or a changed tokenizer file gets a new one. Hashing a 16 GB model takes about a minute,
so each file's sha256 is remembered by (absolute path, device, inode, size, mtime, ctime): in this process, and on
disk under `<cache_dir>/file_sha256/` when a cache folder is given. A file rewritten in place gets a new ctime even
when its mtime is set back (`os.utime` cannot set ctime), and a file replaced by another gets a new inode. File
times tick coarsely (a few ms), so a file changed within `RACY_NS` of being hashed could change again without moving
its ctime: such a hash is used but not remembered (git's "racily clean" rule).
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path
from time import time_ns

from xtf.cache import atomic_write_text, sha256_file

# Top-level files that determine what a model computes or how text becomes tokens. Subfolders are ignored (e.g.
# Meta's original/ copy of the same weights in another format); README, LICENSE and .gitattributes are too.
WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf", "*.json", "*.model", "*.txt", "*.tiktoken",
                   "*.jinja")
_NOT_CONTENT = {"LICENSE.txt", "USE_POLICY.txt", "README.txt"}
RACY_NS = 2_000_000_000  # a file changed less than 2 s before its hash started is hashed again next time
_memo: dict[tuple, str] = {}

PACKAGE = Path(__file__).resolve().parent
# The source files (relative to xtf/) at the root of every stage whose output is a number of the record; each stage
# also covers the xtf modules these import (`imported_files`: a helper split out of a stage stays in it). Version
# constants (xtf.pipeline.code_versions) stay the deliberate "numbers changed" signal; these hashes catch the change
# nobody versioned. The task's own module is hashed per task (`task_files`).
# The method modules (xtf/methods: each method's mask, online selection or augmentation) are in every stage that runs
# a method's rule: the package's __init__ only registers them, so `imported_files` does not reach them.
METHOD_FILES = tuple(sorted(p.relative_to(PACKAGE).as_posix() for p in (PACKAGE / "methods").glob("*.py")
                            if p.name != "__init__.py"))
CODE_STAGES = {
    "model": ("models.py", "tiny.py", "packaged.py"),
    "tokenize": ("data.py", "chat.py"),
    "augment": ("augment.py", "methods/da.py"),
    "score": ("scoring.py", "attention.py"),
    "mask": ("masking.py", "rules.py", "detection.py", *METHOD_FILES),
    "train": ("train.py", "lm_loss.py", "online.py", *METHOD_FILES),
    "evaluate": ("evaluate.py", "lmeval.py", "lmeval_named.py", "humaneval.py", "sandbox.py"),
}
# Imported by nearly every stage, and computing none of its numbers: the config and its sections (their values are in
# the run id), the shared error classes, the cache, the record and these identities (where numbers are stored and
# how they are named).
_NOT_STAGE_CODE = {"xtf.config", "xtf.config_sections", "xtf.errors", "xtf.cache", "xtf.results", "xtf.identity"}
_source_memo: dict[Path, str] = {}
_imports_memo: dict[Path, list[Path]] = {}


def identity_files(folder: str | Path) -> list[Path]:
    """The files of `folder` that enter its identity, sorted by name."""
    folder = Path(folder)
    found = {p for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern) if p.is_file()}
    return sorted((p for p in found if p.name not in _NOT_CONTENT), key=lambda p: p.name)


def stat_key(path: Path) -> tuple:
    """What a change of the file's content always moves: (path, device, inode, size, mtime, ctime)."""
    st = path.stat()
    return (str(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _memo_file(cache_dir: str | Path, path: Path) -> Path:
    return Path(cache_dir) / "file_sha256" / f"{hashlib.sha256(str(path).encode()).hexdigest()[:24]}.json"


def _saved(record: Path, key: tuple) -> str | None:
    try:
        saved = json.loads(record.read_text())
        if saved["key"] == list(key) and len(saved["sha256"]) == 64:
            return saved["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, unreadable or in the older (path, mtime, size) form: hash the file
    return None


def file_sha256(path: str | Path, cache_dir: str | Path | None = None) -> str:
    """sha256 of a file, remembered by its stat key (see the module docstring)."""
    path = Path(path).resolve()
    key = stat_key(path)
    if key in _memo:
        return _memo[key]
    record = None if cache_dir is None else _memo_file(cache_dir, path)
    digest = None if record is None else _saved(record, key)
    if digest is not None:
        _memo[key] = digest
        return digest
    started = time_ns()
    digest = sha256_file(path)
    if stat_key(path) != key or key[-1] > started - RACY_NS:
        return digest  # changed while hashed, or too recently for its ctime to show the next change: not remembered
    _memo[key] = digest
    if record is not None:
        try:
            atomic_write_text(record, json.dumps({"key": list(key), "sha256": digest}))
        except OSError:
            pass  # a read-only cache only costs the hash next time
    return digest


def weights_sha256(folder: str | Path, cache_dir: str | Path | None = None) -> dict[str, str]:
    """{file name: sha256} of the folder's weight, config and tokenizer files (`identity_files`), recorded in
    results.json. Raises FileNotFoundError if the folder holds none of them."""
    files = identity_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no weight, config or tokenizer files")
    return {f.name: file_sha256(f, cache_dir) for f in files}


def identity_of(sha256_by_name: dict[str, str]) -> str:
    """The folder identity (16 hex chars) of `weights_sha256`'s answer."""
    h = hashlib.sha256()
    for name in sorted(sha256_by_name):
        h.update(f"{name}\0{sha256_by_name[name]}\n".encode())
    return h.hexdigest()[:16]


def weights_identity(folder: str | Path, cache_dir: str | Path | None = None) -> str:
    """Content hash (16 hex chars) of a model folder: the names and sha256 of its weight, config and tokenizer
    files (`identity_files`). Raises FileNotFoundError if the folder holds none of them."""
    return identity_of(weights_sha256(folder, cache_dir))


def _source_sha(path: Path) -> str:
    """sha256 of a source file, once per process: the code this process runs is the code it read at import."""
    if path not in _source_memo:
        _source_memo[path] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _source_memo[path]


def _files_hash(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(set(files)):
        h.update(f"{f.relative_to(PACKAGE.parent).as_posix()}\0{_source_sha(f)}\n".encode())
    return h.hexdigest()[:12]


def _module_file(name: str) -> Path | None:
    """The source file of an xtf module named in an import, found without importing it; None for a name outside
    xtf/, a package (its __init__.py only registers names), or one of _NOT_STAGE_CODE."""
    parts = name.split(".")
    if parts[0] != "xtf" or len(parts) < 2 or name in _NOT_STAGE_CODE:
        return None
    path = PACKAGE.joinpath(*parts[1:]).with_suffix(".py")
    return path if path.is_file() else None


def imported_files(path: Path) -> list[Path]:
    """The source files of the xtf modules that `path` imports itself, at its top or inside a function (`from xtf
    import noise`, `from xtf.tasks import medqa`, `import xtf.rules`), read from its syntax tree, once per process."""
    if path not in _imports_memo:
        found = []
        for node in ast.walk(ast.parse(path.read_bytes())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            found += [f for f in map(_module_file, names) if f is not None]
        _imports_memo[path] = sorted(set(found))
    return _imports_memo[path]


def stage_files(stage: str) -> list[Path]:
    """A stage's root files (CODE_STAGES) and the xtf modules they import."""
    roots = [PACKAGE / name for name in CODE_STAGES[stage]]
    return sorted({*roots, *(f for root in roots for f in imported_files(root))})


def task_files(task_module) -> list[Path]:
    """The task module's file, the xtf modules it imports (`imported_files`) and the lm-eval task YAMLs it names
    (eval/<name>.yaml): how its data is read, its answers extracted and its evaluation set up."""
    own = Path(task_module.__file__).resolve()
    yamls = (PACKAGE.parent / "eval" / f"{name}.yaml" for name in getattr(task_module, "LM_EVAL_TASKS", ()))
    return [own, *imported_files(own), *(p for p in yamls if p.is_file())]


def code_hashes(task_module) -> dict[str, str]:
    """{stage: 12 hex chars of sha256 over its source files' names and bytes} for CODE_STAGES (`stage_files`), plus
    "task" for the task module (`task_files`; left out when `task_module` is None: a task no longer in the
    registry). Cheap: each file is read once per process, the code this process runs."""
    out = {stage: _files_hash(stage_files(stage)) for stage in CODE_STAGES}
    if task_module is not None:
        out["task"] = _files_hash(task_files(task_module))
    return out


def changed_stages(recorded: dict, current: dict) -> list[str]:
    """The stages whose code hash differs between a record and this code (a stage missing on either side too)."""
    return sorted(s for s in set(recorded) | set(current) if recorded.get(s) != current.get(s))
