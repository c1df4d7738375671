"""The scores a method needs (xtf.methods.scores_needed), each group from the score cache or computed now:
the base model's forward pass (nll, kn, ri) and TR from xtf.scoring's scorers, and the reference model's losses
(ref_nll, TC and SLM), for which a reference is fine-tuned here (xtf.train). Above xtf.scoring, which neither
trains nor masks.

    scores, info = compute_scores(methods.scores_needed(cfg.method), cfg, model, tokenizer, rows, weights,
                                  tokens_key, expert_words, out_dir)
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import torch

from xtf import cache, rules
from xtf.methods.tc import tc_scores
from xtf.models import load_model, pick_device
from xtf.scoring import (
    SCORER_VERSIONS,
    cached_scores,
    forward_scores,
    model_identity,
    released_forward_scores,
    released_tr_scores,
    tr_scores,
)
from xtf.train import finetune


def reference_train_config(cfg):
    """The reference model's training: one epoch of LoRA with TC's settings (method.reference_*: r 64, alpha 16,
    dropout 0.1, lr 1e-4, 3 % warm-up by default, as TC's bash_src/finetune.sh), everything else as the run's
    train config."""
    m = cfg.method
    return dataclasses.replace(cfg.train, epochs=1.0, mode="lora", lora_r=m.reference_lora_r,
                               lora_alpha=m.reference_lora_alpha, lora_dropout=m.reference_lora_dropout,
                               lr=m.reference_lr, warmup_ratio=m.reference_warmup_ratio)


def reference_nll(cfg, weights: str, tokenizer, rows: list[dict], out_dir: Path,
                  base_nll: list[np.ndarray] | None = None) -> dict:
    """{"ref_nll": [...]}: the base fine-tuned (`reference_train_config`) on the first `method.reference_warmup`
    rows (all answer tokens, the run's seed), then scored on every row. Used by TC and SLM.

    TC's self-evolving variant (`method.rounds` = R > 1, needs `base_nll`):
      evolve=chain (TC's self_evolving_cleaning.sh): the rows are split as TC's generate_subset.py splits them
              (xtf.rules.evolve_parts: R contiguous parts of ⌊N/R⌋ rows; the last N mod R rows are in no part).
              Part 0 is the warm-up: the base fine-tuned (`reference_train_config`) on all its answer tokens
              (`method.reference_warmup` is not used). Each later part r is scored by the current reference,
              its top-`keep_ratio` tokens (base − reference loss, ranked WITHIN the part, `method.scope`)
              fine-tune that reference (the run's train config) into the next one; the chain's last model IS
              the result, returned as "_model" (cached_scores stores it with the scores; the pipeline
              evaluates it instead of fine-tuning the base). Part 0's rows are scored by the warm-up reference,
              rows outside every part by the reference that scored the last part (for the reports only).
      evolve=score_only (v1 of this harness): warm-up on the first `reference_warmup` rows, then R parts of
              np.array_split; part r is scored by the reference of round r, whose selected tokens train the
              next one; the last part does not train; the chain only scores."""
    ref_train = reference_train_config(cfg)
    rounds = cfg.method.rounds if base_nll is not None else 1
    chain = rounds > 1 and cfg.method.evolve == "chain"
    if chain:
        parts, outside = rules.evolve_parts(len(rows), rounds)
        if not len(parts[0]):
            raise ValueError(f"method.rounds={rounds} needs at least {rounds} training rows, got {len(rows)}")
        warm_idx = parts[0]
        # per round: (rows its reference scores, rows ranked and trained on); part 0 is scored with part 1, the
        # rows outside every part with the last part
        scored = list(parts[1:])
        scored[0] = np.concatenate([warm_idx, scored[0]])
        scored[-1] = np.concatenate([scored[-1], outside])
        plan = list(zip(scored, parts[1:]))
    else:
        warm_idx = np.arange(min(cfg.method.reference_warmup, len(rows)))
        plan = [(idx, idx) for idx in np.array_split(np.arange(len(rows)), rounds)]
    warm = [rows[i] for i in warm_idx]
    torch.manual_seed(cfg.seed)
    ref = load_model(cfg.model, weights, pick_device(cfg.device))
    ref, _ = finetune(ref, tokenizer, warm, [np.asarray(r["response_mask"], bool) for r in warm],
                      ref_train, cfg.model, 1, cfg.seed, out_dir)
    ref_nll: list = [None] * len(rows)
    for r, (scored, ranked) in enumerate(plan):
        nll = forward_scores(ref, [rows[i] for i in scored], tokenizer.pad_token_id, cfg.eval.batch_size, None,
                             desc=f"reference scoring {r + 1}/{len(plan)}",
                             batch_tokens=cfg.eval.forward_batch_tokens)["nll"]
        for i, values in zip(scored, nll):
            ref_nll[i] = values
        if r + 1 < len(plan) or chain:  # evolve: train the chain on this part's selected tokens
            selected = rules.top_k_keep([tc_scores(rows[i], base_nll[i], ref_nll[i]) for i in ranked],
                                        cfg.method.keep_ratio, cfg.method.scope)
            keeps = []
            for i, sel in zip(ranked, selected):
                k = np.zeros(len(rows[i]["input_ids"]), dtype=bool)
                k[np.asarray(rows[i]["response_mask"], bool)] = sel
                keeps.append(k)
            trainable = [j for j, k in enumerate(keeps) if k.any()]
            ref, _ = finetune(ref, tokenizer, [rows[ranked[j]] for j in trainable], [keeps[j] for j in trainable],
                              cfg.train if chain else ref_train, cfg.model,
                              cfg.method.epochs_factor if chain else 1, cfg.seed, out_dir / f"round{r + 1}")
    if chain:
        return {"ref_nll": ref_nll, "_model": ref}
    del ref
    return {"ref_nll": ref_nll}


def compute_scores(needed: tuple[str, ...], cfg, model, tokenizer, rows: list[dict], weights: str, tokens_key: str,
                   expert_words: tuple[str, ...], out_dir: Path) -> tuple[dict, dict]:
    """The scores `needed` by the method, each group from the cache or computed now. Returns (scores, info);
    info["computed"] lists the groups computed in this run (empty when every score came from the cache)."""
    base = {"model": model_identity(weights), "tokens": tokens_key}
    ri = cfg.method.ri
    # The self-evolving chain needs the base losses; SLM's reference never evolves (its rounds stay 1).
    evolving = cfg.method.rounds if cfg.method.rounds > 1 else 0
    # "tc_parts": the chain follows TC's generate_subset.py split with part 0 as the warm-up (v1 of the chain used
    # np.array_split and a separate warm-up): a new key, so no earlier chain is reused.
    evolve_spec = [evolving, cfg.method.keep_ratio, cfg.method.scope, cfg.method.evolve,
                   cfg.method.epochs_factor] + (["tc_parts"] if cfg.method.evolve == "chain" else []) \
        if evolving else None
    scores, info = {}, {"computed": [], "cache_keys": {}}
    # compute(partial): partial = the folder where a long pass keeps its progress (the forward pass, the one whose
    # cost grows with the rows; TR's is bounded by the vocabulary, the reference's training has its checkpoints).
    groups = {
        # One forward pass gives nll, kn (= PCP) and ri.
        "forward": ({"nll", "kn", "ri"},
                    {**base, "v": SCORER_VERSIONS["forward_official" if ri.definition == "official" else "forward"],
                     "ri": [ri.definition, list(ri.layers)]},
                    lambda partial: released_forward_scores(model, rows, partial=partial)
                    if ri.definition == "official" else
                    forward_scores(model, rows, tokenizer.pad_token_id, cfg.eval.batch_size, ri.definition,
                                   ri.layers, ri.query_chunk, partial=partial,
                                   batch_tokens=cfg.eval.forward_batch_tokens)),
        "tr": ({"tr"}, {**base, "expert_words": list(expert_words),
                        **({"v": SCORER_VERSIONS["tr_released"], "scorer": "released"}
                           if cfg.method.tr.scorer == "released" else {"v": SCORER_VERSIONS["tr"]})},
               lambda partial: released_tr_scores(model, tokenizer, rows, expert_words)
               if cfg.method.tr.scorer == "released" else tr_scores(model, tokenizer, rows, expert_words)),
        "reference": ({"ref_nll"}, {**base, "v": SCORER_VERSIONS["reference"], "seed": cfg.seed,
                                    "warmup": cfg.method.reference_warmup, "train": dataclasses.asdict(cfg.train),
                                    "reference_train": dataclasses.asdict(reference_train_config(cfg)),
                                    "evolve": evolve_spec},
                      lambda partial: reference_nll(cfg, weights, tokenizer, rows, out_dir / "reference",
                                                    scores["nll"] if evolving else None)),
    }
    for group, (names, spec, compute) in groups.items():
        if not names & set(needed):
            continue
        progress = cache.partial_dir(cfg.paths.cache_dir, "scores", {"group": group, **spec})
        got, fresh, folder = cached_scores(cfg.paths.cache_dir, {"group": group, **spec},
                                           functools.partial(compute, progress))
        scores.update(got)
        if (folder / "model").is_dir():  # the method trained its own result (TC's chain): the pipeline uses it
            info["trained_model"] = str(folder / "model")
        info["cache_keys"][group] = cache.key_of({"group": group, **spec})
        if fresh:
            info["computed"].append(group)
    return scores, info
