"""Reasoning importance inside the attention function: the attention probabilities of selected layers are reduced
to per-token vectors as they are computed (one chunk of queries at a time), never returned or held for a whole layer
(xtf.scoring's module docstring gives the two RI definitions; ssToken's attention score uses the same hook).

    with ri_collection(model, "received", layers=(), lengths=lengths, query_chunk=64) as collector:
        hidden = model.get_decoder()(input_ids=ids, attention_mask=attn).last_hidden_state
    ri = collector.result()        # [B, L] float32, NaN where no later query exists
"""

from __future__ import annotations

import contextlib

import torch

ATTN_NAME = "xtf_ri"


class RICollector:
    """Accumulates RI numerators for the layers it is attached to during one forward pass.

    received: acc[b, t] = Σ_layers Σ_heads Σ_{q > t, q valid} (q + 1) · A[b, h, q, t]   → divided later by
              n_layers · n_heads · (number of valid q > t).
    official: acc[b, t] = Σ_heads Σ_k A[b, h, t, k] / L_b  (first layer only)          → divided by n_heads."""

    def __init__(self, definition: str, lengths: torch.Tensor, query_chunk: int):
        self.definition = definition
        self.lengths = lengths            # [B] valid tokens per row (right padding)
        self.query_chunk = query_chunk
        self.acc = None                   # [B, L] float32
        self.layers_seen = 0
        self.heads = 0

    def add(self, query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scaling: float,
            window: int | None = None) -> None:
        # query: [B, H, L, D]; key: [B, Hkv, L, D] (grouped-query attention repeats keys over heads).
        # Rows are right-padded and attention is causal, so a valid query q only sees keys <= q, all valid: the
        # chunk [q0, q1) needs keys [0, q1) and only its diagonal block needs the causal mask. Padded queries
        # get weight 0. The additive mask is used only when a sliding window shorter than L restricts keys.
        b, h, length, _ = query.shape
        key = key.float().repeat_interleave(h // key.shape[1], dim=1)
        query = query.float() * scaling
        if self.acc is None:
            self.acc = torch.zeros(b, length, dtype=torch.float32, device=query.device)
        pos = torch.arange(length, device=query.device)
        valid_q = (pos[None, :] < self.lengths[:, None]).float()            # [B, L]
        use_mask = mask is not None and window is not None and window < length
        for q0 in range(0, length, self.query_chunk):
            q1 = min(q0 + self.query_chunk, length)
            c = q1 - q0
            scores = torch.matmul(query[:, :, q0:q1], key[:, :, :q1].transpose(-1, -2))   # [B, H, c, q1]
            if use_mask:
                scores += mask[:, :, q0:q1, :q1].float()
            else:
                causal = torch.ones(c, c, dtype=torch.bool, device=query.device).triu_(1)
                scores[..., q0:q1].masked_fill_(causal, float("-inf"))
            probs = torch.softmax(scores, dim=-1)
            if self.definition == "official":
                self.acc[:, q0:q1] += probs.sum(dim=(1, 3)) / self.lengths[:, None].float()  # Σ_h Σ_k A / L_b
                continue
            w = (pos[q0:q1] + 1).float()[None, :] * valid_q[:, q0:q1]        # [B, c]: (q + 1), 0 if padded
            # Σ_h Σ_q w[q] · A[q, t] for every t (one batched mat-vec), then remove t == q: RI counts q > t only.
            w_hq = w[:, None, :].expand(b, h, c).reshape(b, 1, h * c)
            self.acc[:, :q1] += torch.bmm(w_hq, probs.reshape(b, h * c, q1))[:, 0]
            self.acc[:, q0:q1] -= w * probs[..., q0:q1].diagonal(dim1=-2, dim2=-1).sum(dim=1)
        self.layers_seen += 1
        self.heads = h

    def result(self) -> torch.Tensor:
        """[B, L] RI per token (NaN where undefined)."""
        if self.definition == "official":
            return self.acc / self.heads
        length = self.acc.shape[1]
        pos = torch.arange(length, device=self.acc.device)
        n_later = (self.lengths[:, None] - 1 - pos[None, :]).clamp(min=0).float()   # valid q > t
        ri = self.acc / (self.layers_seen * self.heads * n_later)
        return torch.where(n_later > 0, ri, torch.full_like(ri, float("nan")))


def _ri_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """sdpa for the layer's output; plus, on layers carrying a collector, the RI reduction of the probabilities."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    collector = getattr(module, "_xtf_ri", None)
    if collector is not None:
        collector.add(query, key, attention_mask, scaling if scaling is not None else query.shape[-1] ** -0.5,
                      getattr(module.config, "sliding_window", None))
    return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                  **kwargs)


def register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_NAME, _ri_attention)
    AttentionMaskInterface.register(ATTN_NAME, eager_mask)  # an additive float mask [B, 1, Q, K]


def attention_modules(model) -> list:
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    return sorted(mods, key=lambda m: m.layer_idx)


@contextlib.contextmanager
def ri_collection(model, definition: str, layers: tuple[int, ...], lengths: torch.Tensor, query_chunk: int):
    """Within the block, `model` runs the RI attention on the selected layers; yields the collector."""
    register_attention()
    modules = attention_modules(model)
    n = len(modules)
    chosen = [0] if definition == "official" else ([i % n for i in layers] if layers else list(range(n)))
    collector = RICollector(definition, lengths, query_chunk)
    previous = model.config._attn_implementation
    model.set_attn_implementation(ATTN_NAME)
    for i in chosen:
        modules[i]._xtf_ri = collector
    try:
        yield collector
    finally:
        for m in modules:
            m.__dict__.pop("_xtf_ri", None)
        model.set_attn_implementation(previous)
