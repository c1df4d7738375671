"""One process (or one distributed job) per run at a time.

Two launches of one run (a sweep started twice by mistake, a requeued SLURM job beside its first) would both
train from the same checkpoint folder. So a run holds `<outputs_dir>/<experiment>/<run_id>/run.lock` (xtf.cache's
`file_lock`: flock, which the kernel releases when its holder exits, killed or not) while it runs, and a second
launch stops at once with an error naming the holder's pid and host. It does not wait: a waiting launch would
hold its GPUs (or its SLURM allocation) idle for hours, and the user who launched twice wants to know now.
Relaunched after the first finishes, it finds the run complete and skips it; after the first was killed, it
resumes from its checkpoints.

In a distributed run rank 0 alone takes the lock and tells the others (xtf.distributed.broadcast): the ranks of
one run never wait on each other, and all of them stop when another launch holds it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from xtf import distributed, results
from xtf.cache import LockHeld, file_lock
from xtf.config import RunConfig
from xtf.errors import DataError, RunBusy, WeightsNotFound

LOCK_FILE = "run.lock"


def lock_path(cfg: RunConfig) -> Path:
    return results.outputs_dir(cfg) / LOCK_FILE


@contextmanager
def held(cfg: RunConfig) -> Iterator[None]:
    """Hold the run's lock for the block; raise RunBusy, naming the holder, when another launch holds it."""
    with ExitStack() as stack:
        busy = None
        if distributed.is_main() and _identifiable(cfg):
            path = lock_path(cfg)
            try:
                stack.enter_context(file_lock(path, wait=False))
            except LockHeld as e:
                busy = (f"run {path.parent.name} ({cfg.experiment}) is already running: {e.holder} holds {path}. "
                        "Two launches of one run would train from the same checkpoints, so this one stops. Wait "
                        "for it (relaunched afterwards, this run is found complete and skipped), or stop that "
                        "process and relaunch: the run resumes from its last checkpoint.")
        busy = distributed.broadcast(busy)
        if busy:
            raise RunBusy(busy)
        yield


def _identifiable(cfg: RunConfig) -> bool:
    """Whether the run id can be computed here: the weights and the data it holds by content are readable. When
    not, the run fails at its own load with that error (no lock needed), rather than here with a run id from the
    config alone (results.run_id's fallback, and its warning)."""
    try:
        results.content_identity(cfg)  # remembered per process: the pipeline's own load right after is cheap
    except (WeightsNotFound, DataError):
        return False
    return True
