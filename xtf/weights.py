"""Where a model's real weights are, checked without torch or transformers: `check_available` runs in xtf.cli
right after the config is validated, so that a missing model is reported in seconds, even on a busy machine where
loading the pipeline takes a minute; `xtf.models.resolve_weights` uses the same functions to find the weights.
Tiny models are built later (xtf.tiny) and need nothing here.
"""

from __future__ import annotations

import os
from pathlib import Path

from xtf import packaged
from xtf.config import ModelConfig
from xtf.errors import WeightsNotFound
from xtf.hub import hub_reachable


def missing_message(cfg: ModelConfig, why: str) -> str:
    return (
        f"weights for model '{cfg.name}' ({cfg.hub_id}) are not available: {why}.\n"
        f"  Download them where the Hub is reachable, e.g.\n"
        f"    hf download {cfg.hub_id} --local-dir /path/to/{cfg.name}\n"
        f"  then run with model.path=/path/to/{cfg.name} (or set it once in conf/local/default.yaml:\n"
        f"    model:\n      path: /path/to/{cfg.name}\n"
        f"  ). Without a GPU or the Hub, model=smollm2_135m and model=gemma3_270m are real LMs that pip ships."
    )


def is_gguf(cfg: ModelConfig) -> bool:
    """A GGUF file (a pip package's, or model.path's), converted once into a Hugging Face folder by xtf.packaged."""
    local = Path(cfg.path).expanduser() if cfg.path else None
    return bool(cfg.package) or (local is not None and (
        local.suffix == ".gguf" or (bool(cfg.gguf_file) and local.is_dir() and not (local / "config.json").is_file())))


def locate_gguf(cfg: ModelConfig) -> dict:
    """xtf.packaged.locate, its failures as WeightsNotFound."""
    try:
        return packaged.locate(cfg)
    except (packaged.PackageMissing, FileNotFoundError) as e:
        raise WeightsNotFound(f"weights for model '{cfg.name}': {e}") from None


def local_folder(cfg: ModelConfig) -> str:
    """model.path, checked to be a Hugging Face model folder."""
    p = Path(cfg.path).expanduser()
    if not p.exists():
        raise WeightsNotFound(f"model.path={cfg.path} does not exist")
    if not (p / "config.json").is_file():
        raise WeightsNotFound(f"model.path={cfg.path} has no config.json; point it at a Hugging Face model folder "
                              f"(or a .gguf file, or a folder holding model.gguf_file)")
    return str(p)


def hub_source(cfg: ModelConfig) -> str:
    """The model's folder in the local Hugging Face cache, else its Hub id when the Hub is reachable."""
    from huggingface_hub import snapshot_download  # ~0.3 s; not needed by tiny, packaged or local models

    try:  # already in the local Hugging Face cache?
        return snapshot_download(cfg.hub_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        pass
    if not hub_reachable():
        why = "HF_HUB_OFFLINE=1 and not in the local Hugging Face cache" if os.environ.get("HF_HUB_OFFLINE") == "1" \
            else "not in the local Hugging Face cache and the Hub is unreachable"
        raise WeightsNotFound(missing_message(cfg, why))
    return cfg.hub_id


def check_available(cfg: ModelConfig) -> None:
    """Raises WeightsNotFound (what is missing and how to get it) unless the model's weights can be had."""
    if cfg.tiny:
        return
    if is_gguf(cfg):
        locate_gguf(cfg)
    elif cfg.path:
        local_folder(cfg)
    else:
        hub_source(cfg)
