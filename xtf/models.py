"""Model resolution and loading: real weights (a local folder, a GGUF file or a pip package that ships one —
see xtf.packaged — or the Hugging Face Hub) or a tiny model built locally (xtf.tiny). `resolve_weights` fails
within seconds — never hangs on the network — when real weights are missing, saying how to get them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from xtf import packaged
from xtf.config import ModelConfig
from xtf.errors import WeightsNotFound  # noqa: F401 - re-exported: callers catch it from here
from xtf.hub import hub_reachable
from xtf.tiny import build_tiny


def _missing_weights_message(cfg: ModelConfig, why: str) -> str:
    return (
        f"weights for model '{cfg.name}' ({cfg.hub_id}) are not available: {why}.\n"
        f"  Download them where the Hub is reachable, e.g.\n"
        f"    hf download {cfg.hub_id} --local-dir /path/to/{cfg.name}\n"
        f"  then run with model.path=/path/to/{cfg.name} (or set it once in conf/local/default.yaml:\n"
        f"    model:\n      path: /path/to/{cfg.name}\n"
        f"  ). Without a GPU or the Hub, model=smollm2_135m and model=gemma3_270m are real LMs that pip ships."
    )


def resolve_weights(cfg: ModelConfig, cache_dir: str) -> str:
    """A local folder (or, when the Hub is reachable, a Hub id) from which `load` can read the weights.
    Tiny models are built (and cached) here."""
    if cfg.tiny:
        return str(build_tiny(cfg, cache_dir))
    local = Path(cfg.path).expanduser() if cfg.path else None
    gguf_path = local is not None and (local.suffix == ".gguf" or (bool(cfg.gguf_file) and local.is_dir()
                                                                   and not (local / "config.json").is_file()))
    if cfg.package or gguf_path:  # a GGUF file: converted once into a Hugging Face folder in the cache
        try:
            return str(packaged.hf_folder(cfg, cache_dir))
        except (packaged.PackageMissing, FileNotFoundError) as e:
            raise WeightsNotFound(f"weights for model '{cfg.name}': {e}") from None
    if cfg.path:
        p = Path(cfg.path).expanduser()
        if not p.exists():
            raise WeightsNotFound(f"model.path={cfg.path} does not exist")
        if not (p / "config.json").is_file():
            raise WeightsNotFound(f"model.path={cfg.path} has no config.json; point it at a Hugging Face model folder "
                                  f"(or a .gguf file, or a folder holding model.gguf_file)")
        return str(p)
    from huggingface_hub import snapshot_download

    try:  # already in the local Hugging Face cache?
        return snapshot_download(cfg.hub_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        pass
    if not hub_reachable():
        why = "HF_HUB_OFFLINE=1 and not in the local Hugging Face cache" if os.environ.get("HF_HUB_OFFLINE") == "1" \
            else "not in the local Hugging Face cache and the Hub is unreachable"
        raise WeightsNotFound(_missing_weights_message(cfg, why))
    return cfg.hub_id


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def torch_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are slow and fp16 unsupported there); the configured dtype on GPU."""
    if device.type == "cpu":
        return torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[cfg.dtype]


def load_tokenizer(weights: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(weights)
    if tok.pad_token is None:  # Llama/Mistral ship none; padding positions are masked out anyway
        tok.pad_token = tok.eos_token
    return tok


def load_model(cfg: ModelConfig, weights: str, device: torch.device):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        weights, dtype=torch_dtype(cfg, device), attn_implementation=cfg.attn_implementation
    )
    return model.to(device)
