"""Checkpoints that are trusted only when whole: a checksum manifest written last, verified before resuming.

HF Trainer writes a checkpoint's files (weights or adapter, optimizer, scheduler, RNG state, trainer_state.json);
`seal` then adds what xtf keeps with it (an online method's books, by the caller), writes `manifest.json` (the
size and sha256 of every file, xtf.cache's manifest: written atomically, last) and only then removes the older
checkpoints beyond train.save_total_limit. So a checkpoint without a manifest was cut short, and one whose files
do not match theirs was damaged afterwards (a truncated copy, a deleted adapter file, a flipped byte in a
tensor with its header intact): `last_checkpoint` removes such a checkpoint with a warning and resumes from the
previous good one, or from the start when there is none. A relaunch never fails on, nor trusts, a broken
checkpoint. Checkpoints written before xtf wrote manifests are not trusted either (a warning says so).

The removal of old checkpoints is xtf's, not HF's (save_total_limit=None for the Trainer): HF rotated before the
new checkpoint was complete (with save_total_limit=1 a kill there left no checkpoint to resume from), ordered by
mtime (a checkpoint half-deleted by a kill looked newest) and deleted in place (a half-deleted checkpoint-N kept
its name). Here a checkpoint is renamed out of sight (`.removing-checkpoint-N`) before it is deleted.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from xtf import cache

log = logging.getLogger(__name__)
PREFIX = "checkpoint-"
REMOVING = ".removing-"


def step_of(ckpt: Path) -> int:
    return int(Path(ckpt).name[len(PREFIX):])


def checkpoints(ckpt_dir: Path) -> list[Path]:
    """The checkpoint-N folders in ckpt_dir, newest (highest step) first."""
    if not Path(ckpt_dir).is_dir():
        return []
    found = [p for p in Path(ckpt_dir).iterdir() if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=step_of, reverse=True)


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be trusted, or None: every file its manifest lists must be there with its size and sha256
    (xtf.cache.verify). No manifest: cut short while saving, or saved before xtf wrote manifests."""
    problem = cache.verify(Path(ckpt))
    if problem and problem.startswith("no manifest"):
        return "no checksum manifest (cut short while it was saved, or saved by an xtf that wrote none)"
    return problem


def seal(ckpt: Path, keep: int) -> None:
    """After every file of the checkpoint is written: its manifest, then the removal of all but the newest `keep`
    checkpoints beside it. One process (rank 0), once every rank has written its part."""
    cache.write_manifest(Path(ckpt), "checkpoint")
    for old in checkpoints(Path(ckpt).parent)[keep:]:
        if step_of(old) < step_of(ckpt):
            _remove(old)


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint in ckpt_dir that can be trusted (`checkpoint_problem`), or None. A newer one that
    cannot is removed with a warning, and the previous one is tried: a relaunch never fails on a broken
    checkpoint, and never resumes from one. One process: in a distributed run rank 0 decides (xtf.train)."""
    ckpt_dir = Path(ckpt_dir)
    if ckpt_dir.is_dir():  # removals a kill interrupted
        for stale in ckpt_dir.glob(f"{REMOVING}*"):
            shutil.rmtree(stale, ignore_errors=True)
    for ckpt in checkpoints(ckpt_dir):
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        log.warning("removing checkpoint %s, which cannot be resumed from (%s); falling back to the previous one",
                    ckpt, problem)
        _remove(ckpt)
    return None


def _remove(ckpt: Path) -> None:
    """Rename out of sight, then delete: a kill halfway leaves `.removing-checkpoint-N`, never a checkpoint-N with
    some of its files (HF's glob and ours see checkpoint-* only; `last_checkpoint` deletes the leftovers)."""
    hidden = ckpt.parent / f"{REMOVING}{ckpt.name}"
    shutil.rmtree(hidden, ignore_errors=True)
    try:
        ckpt.rename(hidden)
    except OSError:  # already gone, or a file system without rename: delete in place
        hidden = ckpt
    shutil.rmtree(hidden, ignore_errors=True)
