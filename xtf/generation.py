"""Batched text generation and the answer normal form, shared by the evaluators below which it sits
(xtf.evaluate, xtf.lmeval, xtf.lmeval_hf, xtf.humaneval) and by xtf.augment: left padding, the KV cache, batches by
prompt count or by a token budget, and a per-row stop on stop strings. Imports no evaluator (no import cycle).
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from xtf import distributed
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


def token_budget_batches(lengths: list[int], batch_size: int, batch_tokens: int = 0, new_tokens: int = 0,
                         n: int = 1) -> list[list[int]]:
    """Indices of `lengths` (prompt tokens) sorted by length (shortest first), cut into batches.

    batch_tokens = 0: `batch_size` prompts per batch. batch_tokens > 0 (batch_size is then not used): as many
    prompts as fit the budget, at least one: sequences (prompts × n) × (longest prompt + new_tokens) <= batch_tokens,
    i.e. the padded [rows, length] block of the batch's last step, which bounds the KV cache and the work per step."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    if batch_tokens <= 0:
        return [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    batches, current = [], []
    for i in order:  # ascending: the prompt joining a batch is its longest
        if current and (len(current) + 1) * n * (lengths[i] + new_tokens) > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    return batches + [current] if current else batches


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
        criteria = StoppingCriteriaList([StopOnStrings(tokenizer, stop, length, len(idx) * n)] if stop else [])
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
