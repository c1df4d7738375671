"""ssToken's online rule and its per-step signals, in torch: the top ⌈ρ·n⌉ answer tokens of each sample by
γ·minmax(REL) + (1 − γ)·attention (`select`), the last layer's attention to the prompt (`PromptAttention`) and the
NLL under an EMA of the trained weights (`EMAHistory`). The method, its keys and what it does where the paper and
the released code differ: xtf/methods/sstoken.py, which names these by their paths; xtf.online imports this module
when training starts.
"""

from __future__ import annotations

import contextlib
import math

import torch

from xtf.attention import ATTN_NAME, attention_modules, register_attention
from xtf.lm_loss import IGNORE, token_nll

_EPS = 1e-9


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
