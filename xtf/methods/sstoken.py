"""ssToken (Qin et al. 2025, "Self-modulated and Semantic-aware Token Selection for LLM Fine-tuning", ICLR 2026,
arXiv 2510.18250; code github.com/jianke0604/ssToken, scripts/finetune_with_hook.py at 2a0c57d): an online rule
(xtf.online) that keeps, in every sample of every batch, the top ⌈ρ·n⌉ answer tokens by

    score = γ · minmax(REL) + (1 − γ) · attention,       REL = NLL_history − NLL_current  (per token)

    python run.py model=tiny_llama method=sstoken data.limit=32
    python run.py method=sstoken method.sstoken.history=ema          # the "history model" = EMA of the trained one

`attention` is the attention mass each answer token (as a query) puts on the prompt in the last layer, averaged
over heads, from the model being trained, in the same forward pass. Defaults: γ = 0.5 (`method.sstoken.gamma`,
the code's --ratio), ρ = 0.6 (`method.keep_ratio`, the code's --data_prop).

Where the paper and the released code differ, or leave something open, and what is done here:
- History model. Paper: the history model is the base model before fine-tuning, or optionally an exponential
  moving average θ_his ← α·θ_his + (1 − α)·θ of the model being trained. Code: only the base model, whose
  per-token losses are computed once before training (bash_src/calculate_loss.sh). Here: history=base (default)
  reads the base NLL that xtf.scoring caches ("nll"); history=ema keeps an EMA of the *trainable* parameters
  (LoRA adapters, or all weights under full fine-tuning), updated once per optimiser step and starting at the
  base, and runs one extra no-grad forward pass per micro-batch with it (in eval mode: no dropout; the current
  NLL is that of the training forward pass, as in the code). α = `method.sstoken.ema_alpha`, default 0.99: the
  paper's value could not be read from the text available here.
- Warm-up. Paper: attention alone in the early stage of training. Code: γ = 0 until the first sample whose
  dataset index is ≥ pre_index = 10000 is met in the epoch, then γ for the rest of the epoch (reset each epoch);
  with a shuffled 50k pool that happens at the first or second sample, so the code's warm-up is in effect
  nothing. Here: γ = 0 while progress (optimiser steps done / total) < `method.sstoken.warmup`, default 0.2 =
  10000 / 50000, the share of the code's pool below pre_index (what the switch appears meant to do), once for the
  whole run; warmup=0 gives the code's effective behaviour.
- Attention. Code: a pre-hook on the last decoder layer keeps its input; after the forward, that layer's
  self-attention is recomputed with output_attentions=True (eager) and averaged over heads; the score of a
  response token is the sum of its row over the prompt columns (raw, in [0, 1], not normalised). Here: the same
  quantity, reduced inside the attention function of the last layer only (xtf.scoring's custom attention
  function with a collector on that layer), in query chunks, without gradient — the model keeps sdpa and no
  L×L matrix is returned. The prompt is every token before the first answer token (BOS included, as in the
  code, whose prompt length is the number of -100 labels).
- REL normalisation: min–max over the sample's selectable tokens with +1e-8 in the denominator (the code's),
  here the trainable tokens after the offline mask (= the answer tokens; the code: every non-prompt token).
- k = ⌈ρ·n⌉ per sample (the code's math.ceil), n = that sample's trainable tokens; ties as torch.topk orders them.
- Loss: the code's CrossEntropy mean over the batch's selected tokens = train.loss_norm=kept (the default).
- Structural tokens (EOS) get no exemption, as in the code.

This module is the method's declaration (its keys, SSTokenConfig, its signals, its registry entry; no torch); the
rule and the signal providers, in torch, are xtf/methods/sstoken_step.py, which xtf.online imports when training
starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from xtf.methods.registry import Method


@dataclass(frozen=True)
class SSTokenConfig:
    """ssToken: per sample keep the top ⌈keep_ratio·n⌉ by gamma·minmax(REL) + (1-gamma)·attention
    (xtf/methods/sstoken_step.py)."""
    gamma: float = 0.5                 # weight of the normalised REL (the code's --ratio); 1 - gamma: attention
    warmup: float = 0.2                # attention alone (gamma = 0) while steps done / total < warmup
    history: Literal["base", "ema"] = "base"  # REL = NLL_history - NLL_current; base: cached base NLL
    ema_alpha: float = 0.99            # history=ema: θ_his ← α·θ_his + (1-α)·θ each optimiser step
    layer: int = -1                    # the layer whose attention to the prompt is the semantic score


def signals(method) -> tuple[str, ...]:
    """The per-step signals ssToken needs (keys of PROVIDERS)."""
    return ("prompt_attention",) + (("history_nll",) if method.sstoken.history == "ema" else ())


# Per-step signals: name → provider class (xtf/methods/sstoken_step.py); provider(model, method) has
# capture(model, batch) → a context manager around the training forward pass, yielding a callable that returns the
# [B, L] signal after the forward.
PROVIDERS = {"prompt_attention": "xtf.methods.sstoken_step:PromptAttention",
             "history_nll": "xtf.methods.sstoken_step:EMAHistory"}
METHOD = Method(name="sstoken", kind="online", summary="per sample, keep the top tokens by REL and prompt attention",
                needs=("nll",), keys=("keep_ratio", "sstoken"), select="xtf.methods.sstoken_step:select",
                signals=signals, signal_providers=PROVIDERS)
METHODS = (METHOD,)
