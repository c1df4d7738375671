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
"""

from __future__ import annotations

import contextlib
import math

import torch

from xtf.attention import ATTN_NAME, attention_modules, register_attention
from xtf.lm_loss import token_nll
from xtf.methods.registry import Method

IGNORE = -100
_EPS = 1e-9


def signals(method) -> tuple[str, ...]:
    """The per-step signals ssToken needs (keys of PROVIDERS)."""
    return ("prompt_attention",) + (("history_nll",) if method.sstoken.history == "ema" else ())


def ceil_k(ratio: float, n: int) -> int:
    """⌈ratio · n⌉, float error guarded (0.6 · 5 = 3.0000000000000004 → 3), at most n."""
    return min(n, int(math.ceil(ratio * n - _EPS)))


def keep_mask(rel: torch.Tensor, attention: torch.Tensor, trainable: torch.Tensor, gamma: float,
              keep_ratio: float) -> torch.Tensor:
    """[B, L] bool: per sample, the top ⌈keep_ratio·n⌉ of its n trainable tokens by
    gamma · minmax(rel) + (1 − gamma) · attention (min–max over the sample's trainable tokens, +1e-8)."""
    keep = torch.zeros_like(trainable)
    for b in range(trainable.shape[0]):
        idx = trainable[b].nonzero()[:, 0]
        if idx.numel() == 0:
            continue
        r = rel[b, idx].float()
        r = (r - r.min()) / (r.max() - r.min() + 1e-8)
        score = gamma * r + (1 - gamma) * attention[b, idx].float()
        keep[b, idx[torch.topk(score, ceil_k(keep_ratio, idx.numel())).indices]] = True
    return keep


def select(step, method):
    """The online rule (xtf.online interface)."""
    cfg = method.sstoken
    history = step.signals["history_nll"] if "history_nll" in step.signals else step.cached["nll"]
    gamma = cfg.gamma if step.progress >= cfg.warmup else 0.0
    keep = keep_mask(history - step.nll, step.signals["prompt_attention"], step.labels != IGNORE, gamma,
                     method.keep_ratio)
    return torch.where(keep, step.labels, torch.full_like(step.labels, IGNORE)), None


# ------------------------------------------------------------------------------------------------ signals
class _PromptCollector:
    """Called by xtf.scoring's attention function on the layer it is attached to (the same `add` signature as
    xtf.attention.RICollector): value[b, q] = mean over heads of Σ_{k < prompt_len[b]} A[b, h, q, k]."""

    def __init__(self, prompt_len: torch.Tensor, query_chunk: int = 64):
        self.prompt_len = prompt_len        # [B] first answer position per row
        self.query_chunk = query_chunk
        self.value = None                   # [B, L] float32

    @torch.no_grad()
    def add(self, query, key, mask, scaling, window=None) -> None:
        # query [B, H, L, D]; key [B, Hkv, L, D]. Right padding + causal attention: valid queries see valid keys.
        b, h, length, _ = query.shape
        key = key.detach().float().repeat_interleave(h // key.shape[1], dim=1)
        query = query.detach().float() * scaling
        pos = torch.arange(length, device=query.device)
        in_prompt = (pos[None, :] < self.prompt_len[:, None]).float()              # [B, K]
        use_mask = mask is not None and window is not None and window < length
        value = torch.zeros(b, length, dtype=torch.float32, device=query.device)
        for q0 in range(0, length, self.query_chunk):
            q1 = min(q0 + self.query_chunk, length)
            scores = torch.matmul(query[:, :, q0:q1], key[:, :, :q1].transpose(-1, -2))   # [B, H, c, q1]
            if use_mask:
                scores += mask[:, :, q0:q1, :q1].float()
            else:
                causal = torch.ones(q1 - q0, q1 - q0, dtype=torch.bool, device=query.device).triu_(1)
                scores[..., q0:q1].masked_fill_(causal, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            value[:, q0:q1] = (probs * in_prompt[:, None, None, :q1]).sum(-1).mean(1)
        self.value = value


class PromptAttention:
    """Signal "prompt_attention" [B, L]: the last layer's (method.sstoken.layer) head-averaged attention mass from
    each query token to the prompt, in the training forward pass of the current model."""

    def __init__(self, model, method):
        self.layer = method.sstoken.layer

    @contextlib.contextmanager
    def capture(self, model, batch):
        register_attention()
        modules = attention_modules(model)
        target = modules[self.layer % len(modules)]
        response = batch["response_mask"].bool()
        prompt_len = torch.where(response.any(1), response.float().argmax(1), torch.zeros_like(response[:, 0],
                                                                                                dtype=torch.long))
        collector = _PromptCollector(prompt_len)
        previous = model.config._attn_implementation
        model.set_attn_implementation(ATTN_NAME)
        target._xtf_ri = collector
        try:
            yield lambda: collector.value
        finally:
            target.__dict__.pop("_xtf_ri", None)
            model.set_attn_implementation(previous)

    def state(self):
        return None

    def load_state(self, state) -> None:
        pass


class EMAHistory:
    """Signal "history_nll" [B, L]: NLL under the EMA of the trainable parameters (module docstring)."""

    def __init__(self, model, method):
        self.alpha = method.sstoken.ema_alpha
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]
        self.last_step = -1

    @torch.no_grad()
    def _update(self, step: int) -> None:
        if step == self.last_step:
            return
        for p, s in zip(self.params, self.shadow):
            s.mul_(self.alpha).add_(p.detach(), alpha=1 - self.alpha)
        self.last_step = step

    @contextlib.contextmanager
    def capture(self, model, batch):
        self._update(int(batch["step"]))

        @torch.no_grad()
        def history_nll():
            saved = [p.detach().clone() for p in self.params]
            training = model.training
            try:
                for p, s in zip(self.params, self.shadow):
                    p.data.copy_(s)
                model.eval()
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                return token_nll(logits.float(), batch["input_ids"])
            finally:
                for p, s in zip(self.params, saved):
                    p.data.copy_(s)
                model.train(training)

        yield history_nll

    def state(self):
        return {"shadow": [s.cpu() for s in self.shadow], "last_step": self.last_step}

    def load_state(self, state) -> None:
        if state:
            for s, saved in zip(self.shadow, state["shadow"]):
                s.copy_(saved.to(s.device))
            self.last_step = state["last_step"]


# Per-step signals: name → provider class; provider(model, method) has capture(model, batch) → a context manager
# around the training forward pass, yielding a callable that returns the [B, L] signal after the forward.
PROVIDERS = {"prompt_attention": PromptAttention, "history_nll": EMAHistory}
METHOD = Method(name="sstoken", kind="online", summary="per sample, keep the top tokens by REL and prompt attention",
                needs=("nll",), keys=("keep_ratio", "sstoken"), select=select, signals=signals,
                signal_providers=PROVIDERS)
METHODS = (METHOD,)
