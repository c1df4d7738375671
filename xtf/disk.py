"""Free space, checked before any work: a run that would fill its disk fails in seconds naming the folder, not in
the report writer after hours of training.

    check_free_space(cfg, weights, n_train_rows)   # ConfigError: paths.outputs_dir=/scratch has 60 kB free; ...

The estimate is deliberately rough and errs high (each term is listed in the message): checkpoints (the
trainable weights and Adam's two moments, save_total_limit + 1 of them, as one is written before the oldest is
deleted), the run's files (report, decisions, predictions, the export) and the cache's scores and tokens. Folders
on one file system add up.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from xtf import identity
from xtf.config import RunConfig
from xtf.errors import ConfigError

MIB = 2**20
RUN_FILES_FLOOR = 16 * MIB       # report page and plots, summaries, predictions of a small run
PER_ROW_RUN_FILES = 16 * 2**10   # decisions.npz + examples.jsonl + token samples, per training row (bytes)
PER_TOKEN_CACHE = 32             # tokens (4 B) and up to four float32 scores + spare, per token position (bytes)
LORA_SHARE = 0.05                # a LoRA adapter's share of the base's bytes (r 64 on every projection: ~2 %)
ADAM_COPIES = 3                  # trainable weights + Adam's first and second moments


def weights_bytes(weights: str) -> int:
    """Bytes of a local weights folder's weight/config/tokenizer files (0 for a Hub id not on disk)."""
    folder = Path(weights)
    return sum(f.stat().st_size for f in identity.identity_files(folder)) if folder.is_dir() else 0


def estimate(cfg: RunConfig, weights: str, n_train_rows: int) -> dict[str, list[tuple[str, int]]]:
    """{config key of a folder: [(what, bytes), ...]} that the run writes there."""
    base = weights_bytes(weights)
    trains = cfg.method.finetune and not cfg.score_only
    share = 1.0 if cfg.train.mode == "full" else LORA_SHARE
    per_ckpt = int(base * share * ADAM_COPIES)
    out: dict[str, list[tuple[str, int]]] = {"paths.results_dir": [], "paths.outputs_dir": [], "paths.cache_dir": []}
    if trains:
        n = cfg.train.save_total_limit + 1
        out["paths.outputs_dir"].append((f"{n} checkpoints of ~{_size(per_ckpt)}", n * per_ckpt))
        if cfg.train.mode == "full":
            out["paths.outputs_dir"].append(("the fine-tuned model", base))
    run_files = RUN_FILES_FLOOR + n_train_rows * PER_ROW_RUN_FILES * (2 if cfg.export.enabled else 1)
    out["paths.results_dir"].append(("report, decisions, predictions" + (", export" if cfg.export.enabled else ""),
                                     run_files))
    out["paths.cache_dir"].append(("tokens and scores", n_train_rows * cfg.data.max_len * PER_TOKEN_CACHE))
    return out


def check_free_space(cfg: RunConfig, weights: str, n_train_rows: int) -> None:
    """Raise ConfigError when a file system holding a run folder has less free space than the run writes there."""
    folders = {"paths.results_dir": Path(cfg.paths.results_dir), "paths.outputs_dir": Path(cfg.paths.outputs_dir),
               "paths.cache_dir": Path(cfg.paths.cache_dir)}
    needs = estimate(cfg, weights, n_train_rows)
    by_device: dict[int, list[str]] = {}
    for key, folder in folders.items():
        by_device.setdefault(_device(folder), []).append(key)
    for keys in by_device.values():
        need = sum(b for k in keys for _, b in needs[k])
        free = shutil.disk_usage(_existing(folders[keys[0]])).free
        if free < need:
            parts = "; ".join(f"{k}: {what} {_size(b)}" for k in keys for what, b in needs[k] if b)
            where = ", ".join(f"{k}={folders[k]}" for k in keys)
            raise ConfigError(
                f"not enough free space: {where} has {_size(free)} free, and this run writes about {_size(need)} "
                f"there ({parts}). Free space or choose another folder"
                + (" (or lower train.save_total_limit)" if any("checkpoints" in w for k in keys for w, _ in needs[k])
                   else ""))


def _existing(folder: Path) -> Path:
    """The folder, or its nearest existing parent (a folder the run creates later)."""
    folder = folder.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _device(folder: Path) -> int:
    return os.stat(_existing(folder)).st_dev


def _size(n: int) -> str:
    for unit, scale in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
