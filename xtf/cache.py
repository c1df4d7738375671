"""Content-addressed, atomically written artifacts (tiny base models, tokenised data, scores).

An artifact lives in `<cache_dir>/<kind>/<key>/`, where key = sha256 of a JSON dict of everything that
determines it. It is built in a temporary sibling folder; `manifest.json` (file sizes + sha256) is written
last and the folder renamed into place, so a half-built artifact is never visible. On load every file is
checked against the manifest; a missing, truncated or corrupted artifact is reported with a warning, removed
and rebuilt — never trusted. Two processes that need the same absent artifact at once (two sweep cells sharing
a TC reference model) build it once: the second waits on a per-key lock and then finds it built.
A long build (scoring 100k rows) keeps its completed chunks in `<kind>/.<key>.partial/` (`Chunks`, each chunk
verified like an artifact), so a killed build resumes from them; the folder is removed once the artifact is in place.

    path = cached_dir(cache_dir, "tiny_base", {"config": ...}, build=lambda tmp: ...)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from xtf import ranks

try:
    import fcntl  # POSIX; without it (Windows) builds are not serialised, which costs time, never correctness
except ImportError:  # pragma: no cover
    fcntl = None

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"


def key_of(spec: dict) -> str:
    """Stable hash of a JSON-serialisable spec (16 hex chars)."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)


def _manifest_problem(manifest) -> str | None:
    """Why a parsed manifest does not have the shape `cached_dir` writes, or None. It is checked whole before any
    of it is used, so a valid-JSON but malformed manifest means "rebuild", never a crash."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not files:
        return "manifest has no 'files' mapping"
    for rel, meta in files.items():
        if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            return f"manifest names a path outside the artifact: {rel!r}"
        if not (isinstance(meta, dict) and isinstance(meta.get("size"), int) and not isinstance(meta["size"], bool)
                and isinstance(meta.get("sha256"), str) and len(meta["sha256"]) == 64):
            return f"manifest entry for {rel!r} needs an integer 'size' and a sha256 hex 'sha256'"
    return None


# Folders verified in this process, with the (path, mtime, size) of every file then: a folder unchanged since is
# not hashed again (a converted SmolLM2 folder is 0.5 GB, and a sweep asks for it once per cell it composes).
_verified: dict[Path, tuple] = {}


def _stats(folder: Path) -> tuple:
    """(path, mtime ns, size) of every file: what must not have changed since the folder was last verified."""
    out = []
    for p in sorted(folder.rglob("*")):
        try:
            st = p.stat()  # one stat per entry (is_file() would be a second)
        except FileNotFoundError:  # a dangling link or a file removed meanwhile: not a file, as is_file() said
            continue
        if stat.S_ISREG(st.st_mode):
            out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


def verify(folder: Path) -> str | None:
    """None if `folder` holds a complete artifact matching its manifest, else the reason it does not."""
    folder = Path(folder)
    if folder in _verified and _verified[folder] == _stats(folder):
        return None
    problem = _verify(folder)
    if problem is None:
        _verified[folder] = _stats(folder)
    return problem


def _verify(folder: Path) -> str | None:
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        return "no manifest (incomplete build)"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return "manifest is unreadable"
    problem = _manifest_problem(manifest)
    if problem:
        return problem
    for rel, meta in manifest["files"].items():
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != meta["size"]:
            return f"{rel} has {p.stat().st_size} bytes, manifest says {meta['size']} (truncated?)"
        if sha256_file(p) != meta["sha256"]:
            return f"{rel} checksum mismatch (corrupted)"
    return None


def write_manifest(folder: Path, kind: str) -> None:
    """`folder`/manifest.json: the size and sha256 of every other file in it (what `verify` checks), written
    atomically. Write it last: a folder with a manifest is complete."""
    files = {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256_file(p)}
             for p in _files(Path(folder))}
    atomic_write_text(Path(folder) / MANIFEST, json.dumps({"kind": kind, "files": files}, indent=1))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(folder: bool = False) -> int:
    """The mode `open()` / `mkdir()` would give a new file / folder (0644 / 0755 under the usual umask 022).
    mkstemp and mkdtemp create 0600 / 0700, which hid finished runs from the other users of a shared folder."""
    return (0o777 if folder else 0o666) & ~_umask()


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temp file in the same folder + rename: readers see the old file or the new one, never half.
    The file gets the ordinary mode of a new file (`default_mode`), not mkstemp's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, default_mode())
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class LockHeld(RuntimeError):
    """`file_lock(wait=False)` found the lock taken; `holder` is what its holder wrote into the lock file."""

    def __init__(self, path: Path, holder: str):
        self.path, self.holder = Path(path), holder
        super().__init__(f"{path} is held by {holder}")


def _holder(fd: int) -> str:
    """What the lock's holder wrote into it ("pid N on HOST"); empty for an instant after it took the lock."""
    return os.pread(fd, 256, 0).decode("utf-8", "replace").strip() or "another process (pid not yet written)"


@contextmanager
def file_lock(path: Path, wait: bool = True, waiting: str = "waiting for a lock") -> Iterator[bool]:
    """Hold an exclusive lock (flock) on the file `path` for the block; yields whether it is locked. The holder
    writes "pid N on HOST" into the file, so that a process that finds it taken can name the holder. The kernel
    drops the lock when its holder exits, killed or not, so a crashed holder never blocks the next one.
    wait=True: wait for it (logging `waiting` and the holder); wait=False: raise LockHeld at once.
    Where locks are not available (no fcntl, a read-only folder, a network mount without locking) the block runs
    unlocked (yields False). The lock is per open file, so two opens in one process exclude each other too."""
    fd = None
    if fcntl is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, default_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                if not wait:
                    os.close(fd)
                    fd = None
                    raise LockHeld(path, holder) from None
                log.info("%s (held by %s)", waiting, holder)
                fcntl.flock(fd, fcntl.LOCK_EX)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        except OSError as e:
            log.debug("%s: running without a lock (%s)", path, e)
            if fd is not None:
                os.close(fd)
                fd = None
    try:
        yield fd is not None
    finally:
        if fd is not None:
            with suppress(OSError):
                os.ftruncate(fd, 0)  # still held: no later holder's pid is erased
            os.close(fd)  # releases the lock


@contextmanager
def build_lock(cache_dir: Path, kind: str, key: str) -> Iterator[None]:
    """Hold an exclusive lock on `<cache_dir>/.locks/<kind>-<key>.lock` (`file_lock`, waiting for it) for the
    block. Where locks are not available the block runs unlocked: a duplicate build costs time, and the atomic
    rename in `cached_dir` keeps the result whole either way.
    The ranks of one distributed run never lock: a build may run collectives (every rank evaluating its share),
    and a rank waiting here would stall the one holding the lock; they coordinate through xtf.distributed."""
    if ranks.runtime().world_size != 1:
        yield
        return
    with file_lock(Path(cache_dir) / ".locks" / f"{kind}-{key}.lock",
                   waiting=f"waiting for another process that is building cache {kind}/{key}"):
        yield


def _valid(final: Path, kind: str) -> bool:
    """True if the artifact is in place and whole; an invalid one is reported and removed."""
    if not final.exists():
        return False
    problem = verify(final)
    if problem is None:
        return True
    log.warning("cache %s/%s is invalid (%s); rebuilding", kind, final.name, problem)
    shutil.rmtree(final, ignore_errors=True)
    return False


def cached_dir(cache_dir: str | Path, kind: str, spec: dict, build: Callable[[Path], None]) -> Path:
    """Return the folder of the artifact described by `spec`, building it with `build(tmp_folder)` if it is
    absent or fails verification. `spec` is stored beside the files as spec.json (for humans)."""
    final = Path(cache_dir) / kind / key_of(spec)
    if _valid(final, kind):
        return final
    with build_lock(Path(cache_dir), kind, final.name):
        if _valid(final, kind):  # built by the process this one waited for
            return final
        _build(final, kind, spec, build)
        shutil.rmtree(partial_dir(cache_dir, kind, spec), ignore_errors=True)  # the build's progress: done with
    return final


def _build(final: Path, kind: str, spec: dict, build: Callable[[Path], None]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.building."))
    try:
        build(tmp)
        (tmp / "spec.json").write_text(json.dumps(spec, sort_keys=True, indent=1, default=str))
        write_manifest(tmp, kind)
        os.chmod(tmp, default_mode(folder=True))  # mkdtemp's 0700 would hide a shared cache from its other users
        try:
            os.replace(tmp, final)
        except OSError:  # another process won the race and its artifact is in place
            if verify(final) is not None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------- partial progress
def partial_dir(cache_dir: str | Path, kind: str, spec: dict) -> Path:
    """Where a long build of the artifact `spec` keeps its completed chunks (`Chunks`): beside the artifact's
    folder, hidden as the temporary build folders are; `cached_dir` removes it once the artifact is in place."""
    return Path(cache_dir) / kind / f".{key_of(spec)}.partial"


class Chunks:
    """The completed chunks of one long build, kept on disk as they complete so that a killed build resumes.

    Chunk k is `chunk-<k>.npz` (arrays) and then `chunk-<k>.json` (its size and sha256, and a hash of `plan`: what
    decides a chunk's content beyond the artifact's key, e.g. the batch plan, since padding changes float rounding),
    each written atomically, the JSON last. `load` returns a chunk only when its JSON matches the file and the
    plan; a torn, truncated or corrupted chunk, or one written under another plan, is reported, removed and
    recomputed, never trusted. One writer at a time (the caller holds the artifact's build lock, or is rank 0)."""

    def __init__(self, folder: Path, plan) -> None:
        self.folder = Path(folder)
        self.plan = hashlib.sha256(json.dumps(plan, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _paths(self, k: int) -> tuple[Path, Path]:
        return self.folder / f"chunk-{k:06d}.npz", self.folder / f"chunk-{k:06d}.json"

    def load(self, k: int) -> dict[str, np.ndarray] | None:
        """Chunk k's arrays when a verified copy is on disk, else None (an invalid one is removed)."""
        data, meta = self._paths(k)
        if not data.exists() and not meta.exists():
            return None
        problem = self._problem(data, meta)
        if problem is None:
            try:
                with np.load(data) as npz:
                    return {name: npz[name] for name in npz.files}
            except (OSError, ValueError, EOFError) as e:  # verified bytes that numpy cannot read: not ours
                problem = f"unreadable ({e})"
        log.warning("partial chunk %s of %s is invalid (%s); recomputing it", k, self.folder.name, problem)
        self.discard(k)
        return None

    def _problem(self, data: Path, meta: Path) -> str | None:
        try:
            m = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return "no readable manifest (killed while writing?)"
        if not isinstance(m, dict) or m.get("plan") != self.plan:
            return "written under another plan (another batch size or chunk size)"
        if not data.is_file() or data.stat().st_size != m.get("size"):
            return "missing or truncated"
        if sha256_file(data) != m.get("sha256"):
            return "checksum mismatch (corrupted)"
        return None

    def save(self, k: int, arrays: dict[str, np.ndarray]) -> None:
        """Write chunk k: the arrays via a temp file + rename, then its manifest (atomic_write_text)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        data, meta = self._paths(k)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{data.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, data)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_write_text(meta, json.dumps({"plan": self.plan, "size": data.stat().st_size,
                                            "sha256": sha256_file(data)}))

    def discard(self, k: int) -> None:
        for p in self._paths(k):
            p.unlink(missing_ok=True)
