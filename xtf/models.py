"""Model resolution and loading: real weights (a local folder, a GGUF file or a pip package that ships one —
see xtf.packaged — or the Hugging Face Hub) or a tiny model built locally (xtf.tiny). `resolve_weights` fails
within seconds — never hangs on the network — when real weights are missing, saying how to get them.
"""

from __future__ import annotations

import torch

from xtf import packaged, weights
from xtf.config import ModelConfig
from xtf.errors import WeightsNotFound  # noqa: F401 - re-exported: callers catch it from here
from xtf.tiny import build_tiny


def resolve_weights(cfg: ModelConfig, cache_dir: str) -> str:
    """A local folder (or, when the Hub is reachable, a Hub id) from which `load` can read the weights.
    Tiny models are built (and cached) here; a GGUF file is converted once (xtf.packaged). Where and how the
    weights are looked for: xtf.weights (also run before the pipeline loads, by xtf.cli)."""
    if cfg.tiny:
        return str(build_tiny(cfg, cache_dir))
    if weights.is_gguf(cfg):
        weights.locate_gguf(cfg)  # a missing package or file as WeightsNotFound, before anything is hashed
        return str(packaged.hf_folder(cfg, cache_dir))
    if cfg.path:
        return weights.local_folder(cfg)
    return weights.hub_source(cfg)


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
