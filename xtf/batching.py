"""Cutting rows into batches by a token budget: generation batches (xtf.generation, xtf.lmeval_hf) and the pieces a
training micro-batch runs as (xtf.train, train.micro_batch_tokens). Pure Python: no torch.
"""

from __future__ import annotations


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
