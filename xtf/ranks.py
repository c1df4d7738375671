"""This process's place in a distributed run (rank, world size, strategy), without torch: what the modules below
the distributed runtime (the cache's build locks) need to know about it. xtf.distributed sets it when a run starts
(`start`) and resets it when the run ends (`finish`); it re-exports `Runtime`, `runtime` and `is_main`."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Runtime:
    """This process's place in the run: rank, world size, and the strategy in effect (after `none` → `ddp`)."""
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    strategy: str = "none"
    backend: str | None = None           # gloo | nccl (None: one process)
    launcher: str | None = None          # torchrun (any launcher that sets RANK/WORLD_SIZE) | slurm | None


# runtime: this process's Runtime; dist, train: the run's DistConfig and TrainConfig; collective: inside a
# `collective()` block; owns_group: xtf.distributed started the process group (and destroys it at `finish`).
STATE: dict[str, Any] = {"runtime": Runtime(), "dist": None, "train": None, "collective": False,
                         "owns_group": False}


def runtime() -> Runtime:
    return STATE["runtime"]


def is_main() -> bool:
    return runtime().rank == 0
