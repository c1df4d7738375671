"""Batched text generation and the answer normal form, shared by the evaluators below which it sits
(xtf.evaluate, xtf.lmeval, xtf.lmeval_hf, xtf.humaneval) and by xtf.augment: left padding, the KV cache, batches by
prompt count or by a token budget, and a per-row stop on stop strings. Imports no evaluator (no import cycle).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from xtf import distributed
from xtf.batching import token_budget_batches  # also xtf.generation.token_budget_batches
from xtf.data import prompt_ids


class StopOnStrings(StoppingCriteria):
    """Per-row stop: a row is done once one of `stop` appears in the decoded text of its last generated tokens,
    and stays done (generate then pads it); the batch ends when every row is done (or at EOS / max_new_tokens).

    The test is lm-eval's (MultiTokenEOSCriteria: the stop string inside the decoded last len(ids)+2 tokens) with a
    wider window (len(stop) characters + 2 tokens: a token decodes to >= 1 character), applied per row: lm-eval's
    own criterion ends a batch only when every row has met the SAME stop string, so a batch whose rows stop on
    different strings ran to max_new_tokens. Rows stop at or after the first occurrence of a stop string, and the
    protocols cut the text there (lm-eval's postprocess, xtf.tasks.code.extract_completion): same text, less work."""

    def __init__(self, tokenizer, stop, prompt_len: int, batch_size: int):
        self.tokenizer, self.stop, self.prompt_len = tokenizer, [s for s in stop if s], prompt_len
        self.window = max((len(s) for s in self.stop), default=0) + 2
        self.done = torch.zeros(batch_size, dtype=torch.bool)

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:  # -> [B] bool, per row
        if not self.stop:
            return self.done.to(input_ids.device)
        tail = input_ids[:, self.prompt_len:][:, -self.window:]
        for i, text in enumerate(self.tokenizer.batch_decode(tail)):
            if not self.done[i] and any(s in text for s in self.stop):
                self.done[i] = True
        return self.done.to(input_ids.device)


ROUND_TOKENS = 16  # greedy decoding: new tokens per round of `generate_in_rounds`


class _GrowingLayer(DynamicLayer):
    """A DynamicLayer whose keys and values live in buffers grown by doubling: a decoding step writes its position
    in place instead of copying the layer's whole cache (DynamicLayer's torch.cat: 60 copies of the cache per step
    of a 30-layer model, ~30 % of a CPU decoding step at batch 16). The same values, so the same tokens."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self._n = 0
        n, add = self._n, key_states.shape[-2]
        if self._k is None or n + add > self._k.shape[-2]:  # [B, heads, capacity, head_dim]
            capacity = max(2 * (n + add), 64)
            k = key_states.new_empty(*key_states.shape[:-2], capacity, key_states.shape[-1])
            v = value_states.new_empty(*value_states.shape[:-2], capacity, value_states.shape[-1])
            if n:
                k[..., :n, :], v[..., :n, :] = self.keys, self.values
            self._k, self._v = k, v
        self._k[..., n:n + add, :] = key_states
        self._v[..., n:n + add, :] = value_states
        self._n = n + add
        self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized and self._n:
            self._k, self._v = self._k[indices], self._v[indices]
            self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]

    def crop(self, tokens_to_remove: int) -> None:  # as DynamicLayer.crop: a negative count of tokens to drop
        if tokens_to_remove > 0:
            raise ValueError(f"crop({tokens_to_remove}): pass the negative number of tokens to remove")
        if self.is_initialized and tokens_to_remove:
            self._n = max(self._n + tokens_to_remove, 0)
            self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.is_initialized and self._n:
            self._k, self._v = self._k.repeat_interleave(repeats, 0), self._v.repeat_interleave(repeats, 0)
            self.keys, self.values = self._k[..., :self._n, :], self._v[..., :self._n, :]


class _GrowingCache(DynamicCache):
    def __init__(self):
        Cache.__init__(self, layer_class_to_replicate=_GrowingLayer)


def _kv_cache(model) -> DynamicCache:
    """The growing cache when every layer of the model's cache would be a plain DynamicLayer (full attention), else
    the DynamicCache `generate` builds itself (sliding-window layers: Gemma 3)."""
    cache = DynamicCache(config=model.config)
    return _GrowingCache() if all(type(layer) is DynamicLayer for layer in cache.layers) else cache


@torch.no_grad()
def generate_in_rounds(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                       pad_id: int, eos_ids, stopping=None, round_tokens: int = ROUND_TOKENS,
                       **generate_kwargs) -> torch.Tensor:
    """Greedy `model.generate` of a left-padded batch, `round_tokens` new tokens at a time: between rounds the rows
    that have ended (an EOS among `eos_ids`, or the stopping criterion `stopping(rows)` builds, e.g. StopOnStrings,
    marked them done) leave the batch together with their rows of the KV cache, so that a batch no longer decodes
    every row for as long as its longest one (a row that never stops kept 15 others decoding to max_new_tokens).
    Returns [B, prompt + new tokens] as `generate` does, each ended row padded with pad_id. Greedy decoding is per
    row, so the tokens are those of one `generate` call (tests/test_eval_speed.py)."""
    rows, prompt = input_ids.shape
    out = input_ids.new_full((rows, prompt + max_new_tokens), pad_id)
    out[:, :prompt] = input_ids
    if eos_ids is None:  # as generate: the model's generation config
        eos_ids = model.generation_config.eos_token_id
    eos = torch.tensor([e for e in ([eos_ids] if isinstance(eos_ids, int) else eos_ids or ()) if e is not None],
                       dtype=input_ids.dtype, device=input_ids.device)
    active = torch.arange(rows, device=input_ids.device)
    ids, attn, cache, made = input_ids, attention_mask, _kv_cache(model), 0
    while made < max_new_tokens:
        step = min(round_tokens, max_new_tokens - made)
        criteria = stopping(len(active)) if stopping is not None else None
        seq = model.generate(input_ids=ids, attention_mask=attn, past_key_values=cache, max_new_tokens=step,
                             do_sample=False, pad_token_id=pad_id, eos_token_id=eos.tolist() or None, use_cache=True,
                             stopping_criteria=StoppingCriteriaList([criteria] if criteria else []),
                             **generate_kwargs)
        new = seq[:, ids.shape[1]:]                                    # [rows left, <= step]
        out[active, prompt + made: prompt + made + new.shape[1]] = new
        made += new.shape[1]
        ended = torch.isin(new, eos).any(1) if eos.numel() else new.new_zeros(len(active), dtype=torch.bool)
        if criteria is not None:
            ended |= criteria.done.to(ended.device)
        if ended.all() or new.shape[1] < step:  # generate ends early only when every row has ended
            break
        keep = (~ended).nonzero().squeeze(1)
        cache.batch_select_indices(keep)  # the cache holds every token but the last: generate continues from it
        ids = seq[keep]
        attn = torch.cat([attn, attn.new_ones(len(active), new.shape[1])], 1)[keep]
        active = active[keep]
    return out[:, :prompt + made]


@torch.no_grad()
def generate_many(model, tokenizer, prompts: list[str], chat_template: bool, batch_size: int, max_new_tokens: int,
                  n: int = 1, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                  num_beams: int = 1, seed: int = 0, desc: str = "evaluate", batch_tokens: int = 0,
                  stop: tuple[str, ...] = ()) -> list[list[str]]:
    """`n` continuations per prompt (decoded, special tokens removed), in input order: list[prompt][n].

    Batched with left padding and the KV cache; prompts sorted by length and batched by `batch_size` prompts or,
    with batch_tokens > 0, by a token budget (token_budget_batches). A row stops at EOS or, given `stop`, once
    it has written a stop string (StopOnStrings; the text is NOT cut here: each protocol cuts its own way).
    Greedy outputs do not depend on the batching (tests/test_eval_speed.py). Sampling is seeded once
    (torch.manual_seed(seed)) so a run is reproducible on the same device and batching; with num_beams > 1 the
    n best beams are returned (n <= num_beams)."""
    device = next(model.parameters()).device
    encoded = [prompt_ids(tokenizer, p, chat_template) for p in prompts]
    batches = token_budget_batches([len(e) for e in encoded], batch_size, batch_tokens, max_new_tokens,
                                   max(n, num_beams))
    outputs: dict[int, list[str]] = {}
    pad = tokenizer.pad_token_id
    decoding = {"do_sample": do_sample, "num_return_sequences": n, "num_beams": num_beams}
    if do_sample:
        decoding.update(temperature=temperature, top_p=top_p, top_k=0)  # top_k=0: nucleus sampling only
    torch.manual_seed(seed)
    # In a distributed run (xtf.distributed.collective) each rank decodes its share of the greedy / beam batches
    # (the batches one process forms: the same outputs); sampled batches share one seeded stream: not split.
    for idx in tqdm(batches if do_sample else distributed.share(batches), desc=desc, unit="batch"):
        length = max(len(encoded[i]) for i in idx)
        # Left padding: every prompt ends at the same position, so generation continues each one directly.
        ids = torch.tensor([[pad] * (length - len(encoded[i])) + encoded[i] for i in idx], device=device)
        attn = torch.tensor([[0] * (length - len(encoded[i])) + [1] * len(encoded[i]) for i in idx], device=device)
        if not do_sample and num_beams == 1 and n == 1:  # greedy: ended rows leave the batch between rounds
            stopping = (lambda rows, at=length: StopOnStrings(tokenizer, stop, at, rows)) if stop else None
            out = generate_in_rounds(model, ids, attn, max_new_tokens, pad, tokenizer.eos_token_id, stopping)
        else:
            rows = len(idx) * n
            criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stop, length, rows)] if stop else [])
            out = model.generate(input_ids=ids, attention_mask=attn, max_new_tokens=max_new_tokens,
                                 pad_token_id=pad, eos_token_id=tokenizer.eos_token_id, use_cache=True,
                                 stopping_criteria=criteria, **decoding)
        texts = tokenizer.batch_decode(out[:, length:], skip_special_tokens=True)  # [len(idx) * n], prompt-major
        for j, i in enumerate(idx):
            outputs[i] = texts[j * n : (j + 1) * n]
    return distributed.merge([outputs.get(i) for i in range(len(prompts))])


def generate(model, tokenizer, prompts: list[str], chat_template: bool, batch_size: int, max_new_tokens: int,
             desc: str = "evaluate", batch_tokens: int = 0) -> list[str]:
    """Greedy continuations of `prompts` (decoded, special tokens removed), in input order."""
    return [g[0] for g in generate_many(model, tokenizer, prompts, chat_template, batch_size, max_new_tokens,
                                        desc=desc, batch_tokens=batch_tokens)]


def normalise(answer: str | None) -> str | None:
    """Canonical form for exact match: stripped, commas removed in numbers, "72.0" → "72"."""
    if answer is None:
        return None
    a = answer.strip().replace(",", "").rstrip(".").strip()
    try:
        f = float(a)
        return str(int(f)) if f.is_integer() else str(f)
    except ValueError:
        return a.lower()
