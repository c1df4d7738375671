"""Per-token scores from the base model, aligned to `input_ids` (xtf.data convention), cached on disk.

One batched forward pass (right padding) gives, for every token t of every row:
    nll[t] = -log P(input_ids[t] | input_ids[<t])                 via xtf.train.token_nll (the one shift),
    kn[t]  = PCP = exp(-nll[t])                                   computed per row from the final hidden states,
                                                                  so no [B, L, V] float32 softmax is ever held;
    ri[t]  = reasoning importance, reduced inside the attention function of each selected layer:
             "received" (default): mean over later valid queries q > t of (q + 1) · A[q, t], averaged over heads
                        and layers; 1.0 = as much attention as a uniform causal row gives. NaN where no later
                        query exists (the last token).
             "official" (the released code, `released_forward_scores`): one row at a time with eager attention,
                        as XTF_script.get_attention_score / get_ppl_score compute them: RI = the first layer's
                        attention ROW of t averaged over heads and over all L keys, which is ≈ 1/L for every
                        token (a causal softmax row sums to 1) — the filter then picks tokens by float rounding,
                        so this path reproduces the script's arithmetic op for op (a bug kept on purpose);
                        kn = float32 softmax of the logits at the gold token.
A second pass over the *unique* token ids gives
    tr[t]  = cosine(context-free last hidden state of token t, domain vector), the domain vector being the mean
             last hidden state of the task's expert words, each run alone. `method.tr.scorer`: "bos" runs
             [bos, token]; "released" (`released_tr_scores`) runs the token alone and keys scores by text.

Peak memory holds one layer's attention for one chunk of queries (`method.ri.query_chunk`) at a time: the
attention probabilities are reduced to per-token vectors as they are computed, never returned.

Cached per (scorer version, model identity, tokenizer, tokenised data, max_len, RI options): a threshold sweep
re-masks cached scores and runs zero forward passes after the first run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xtf import cache, distributed
from xtf.train import token_nll

log = logging.getLogger(__name__)
# forward_official / tr_released: the released code's scorers (xtf_official), versioned on their own so that a
# change to them re-scores only their runs.
SCORER_VERSIONS = {"forward": 1, "forward_official": 2, "tr": 1, "tr_released": 1, "reference": 2}
ATTN_NAME = "xtf_ri"


# ----------------------------------------------------------------------------------------------- RI attention
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


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTN_NAME, _ri_attention)
    AttentionMaskInterface.register(ATTN_NAME, eager_mask)  # an additive float mask [B, 1, Q, K]


def _attention_modules(model) -> list:
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "q_proj")]
    return sorted(mods, key=lambda m: m.layer_idx)


@contextlib.contextmanager
def ri_collection(model, definition: str, layers: tuple[int, ...], lengths: torch.Tensor, query_chunk: int):
    """Within the block, `model` runs the RI attention on the selected layers; yields the collector."""
    _register_attention()
    modules = _attention_modules(model)
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


# ------------------------------------------------------------------------------------------- forward scores
def _batches(rows: list[dict], batch_size: int):
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))  # little padding per batch
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


@torch.no_grad()
def forward_scores(model, rows: list[dict], pad_id: int, batch_size: int, ri_definition: str | None,
                   ri_layers: tuple[int, ...] = (), query_chunk: int = 64, desc: str = "scoring") -> dict:
    """{"nll": [...], "kn": [...], "ri": [...]} per row, float32 arrays aligned to input_ids (see module doc).
    `ri_definition=None` skips RI (plain sdpa: e.g. the reference model's losses)."""
    device = next(model.parameters()).device
    out = {"nll": [None] * len(rows), "kn": [None] * len(rows)}
    if ri_definition:
        out["ri"] = [None] * len(rows)
    backbone, head = model.get_decoder(), model.get_output_embeddings()
    # Inside distributed.collective(): this rank's share of the batches (whole batches, the same as one process
    # forms them, so each row's scores are computed exactly as one process computes them), merged below.
    for idx in tqdm(distributed.share(list(_batches(rows, batch_size))), desc=desc, unit="batch"):
        lengths = torch.tensor([len(rows[i]["input_ids"]) for i in idx], device=device)
        width = int(lengths.max())
        ids = torch.tensor([rows[i]["input_ids"] + [pad_id] * (width - len(rows[i]["input_ids"])) for i in idx],
                           device=device)
        attn = (torch.arange(width, device=device)[None, :] < lengths[:, None]).long()
        ctx = ri_collection(model, ri_definition, ri_layers, lengths, query_chunk) if ri_definition \
            else contextlib.nullcontext()
        with ctx as collector:
            hidden = backbone(input_ids=ids, attention_mask=attn).last_hidden_state   # [B, L, H]
        ri = collector.result().cpu().numpy() if ri_definition else None
        for j, i in enumerate(idx):
            n = int(lengths[j])
            # One row's logits at a time: [L, V] instead of [B, L, V].
            nll = token_nll(head(hidden[j:j + 1, :n]).float(), ids[j:j + 1, :n])[0].cpu().numpy()
            out["nll"][i] = nll.astype(np.float32)
            out["kn"][i] = np.exp(-nll).astype(np.float32)
            if ri is not None:
                out["ri"][i] = ri[j, :n].astype(np.float32)
    return {name: distributed.merge(values) for name, values in out.items()}


@torch.no_grad()
def tr_scores(model, tokenizer, rows: list[dict], expert_words: tuple[str, ...], batch_size: int = 512) -> dict:
    """{"tr": [...]}: cosine(context-free hidden state of each token, domain vector); one batched pass over the
    unique token ids ([bos, token] when the tokenizer has a BOS, else [token])."""
    device = next(model.parameters()).device
    backbone = model.get_decoder()
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []

    def last_hidden(seqs: list[list[int]]) -> torch.Tensor:
        """Mean last hidden state over each sequence's non-BOS tokens: [N, H]."""
        outs = []
        for s in range(0, len(seqs), batch_size):
            chunk = seqs[s:s + batch_size]
            width = max(len(q) for q in chunk)
            ids = torch.tensor([q + [tokenizer.pad_token_id] * (width - len(q)) for q in chunk], device=device)
            attn = torch.tensor([[1] * len(q) + [0] * (width - len(q)) for q in chunk], device=device)
            h = backbone(input_ids=ids, attention_mask=attn).last_hidden_state.float()
            keep = attn.clone()
            keep[:, : len(bos)] = 0
            outs.append((h * keep[..., None]).sum(1) / keep.sum(1, keepdim=True))
        return torch.cat(outs)

    words = [bos + tokenizer(w, add_special_tokens=False)["input_ids"] for w in expert_words]
    domain = last_hidden([w for w in words if len(w) > len(bos)]).mean(0)            # [H]
    unique = sorted({t for r in rows for t in r["input_ids"]})
    sims = F.cosine_similarity(last_hidden([bos + [t] for t in unique]), domain[None], dim=-1).cpu().numpy()
    lookup = dict(zip(unique, sims.astype(np.float32)))
    return {"tr": [np.array([lookup[t] for t in r["input_ids"]], dtype=np.float32) for r in rows]}


@torch.no_grad()
def released_forward_scores(model, rows: list[dict], desc: str = "scoring (released)") -> dict:
    """{"nll", "kn", "ri"} as XTF_script.py computes them (module doc, "official"), one row at a time, no
    padding and no attention mask (the script's batch of one). RI comes from a hook on the first attention
    module, which under eager attention returns its [1, H, L, L] probabilities; only that layer's are held."""
    device = next(model.parameters()).device
    first = _attention_modules(model)[0]
    grabbed = {}
    hook = first.register_forward_hook(lambda mod, args, output: grabbed.__setitem__("attn", output[1]))
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    out = {"nll": [None] * len(rows), "kn": [None] * len(rows), "ri": [None] * len(rows)}
    try:  # one row at a time: inside distributed.collective() each rank scores its share of the rows
        for i in tqdm(distributed.share(list(range(len(rows)))), desc=desc, unit="row"):
            ids = torch.tensor([rows[i]["input_ids"]], dtype=torch.long, device=device)
            logits = model(input_ids=ids).logits                                    # [1, L, V]
            attn = grabbed.pop("attn")                                              # [1, H, L, L]
            ri = torch.mean(torch.mean(attn, dim=1).squeeze(0), dim=1)              # the script's two means
            probs = F.softmax(logits[0, :-1].float(), dim=-1)                       # [L-1, V] float32
            kn = torch.zeros(ids.shape[1])
            kn[1:] = probs.gather(-1, ids[0, 1:, None])[:, 0].cpu()                 # position 0: the script's 0.0
            nll = token_nll(logits.float(), ids)[0].cpu().numpy()
            out["nll"][i] = nll.astype(np.float32)
            out["kn"][i] = kn.numpy().astype(np.float32)
            out["ri"][i] = ri.float().cpu().numpy()
    finally:
        hook.remove()
        model.set_attn_implementation(previous)
    return {name: distributed.merge(values) for name, values in out.items()}


def released_text_key(tokenizer, token_id: int) -> str:
    """The released code's TR cache key: the token decoded alone without special tokens, stripped — so every
    special token and every whitespace-only token share the key ""."""
    return tokenizer.decode([token_id], skip_special_tokens=True).strip()


@torch.no_grad()
def released_tr_scores(model, tokenizer, rows: list[dict], expert_words: tuple[str, ...],
                       batch_size: int = 256) -> dict:
    """{"tr": [...]} as XTF_script.get_score computes it: the domain vector is the mean over expert words of
    the mean last hidden state of the word's tokens run alone (ScoreR.get_word_vector: no special tokens);
    a token's score is cosine(last hidden state of the token run ALONE, no BOS, domain vector). Scores are
    cached by `released_text_key`, and the FIRST token id met with a key (rows in order, every position,
    prompt included) decides the score of every later token with that key — the released code's bug, kept:
    e.g. BOS, "\n" and " " all get the score of whichever came first. Single-token forwards are batched
    ([N, 1]: no padding, no interaction), which changes only float rounding."""
    device = next(model.parameters()).device

    def last_hidden(ids: list[int]) -> torch.Tensor:                                # [len, H]
        return model(input_ids=torch.tensor([ids], device=device),
                     output_hidden_states=True).hidden_states[-1][0].float()

    vectors = [last_hidden(ids).mean(0) for ids in (tokenizer(w, add_special_tokens=False)["input_ids"]
                                                    for w in expert_words) if ids]
    domain = torch.stack(vectors).mean(0)                                           # [H]
    first_id: dict[str, int] = {}
    for r in rows:
        for t in r["input_ids"]:
            first_id.setdefault(released_text_key(tokenizer, int(t)), int(t))
    unique = sorted(set(first_id.values()))
    sims = []
    for s in range(0, len(unique), batch_size):
        chunk = torch.tensor(unique[s:s + batch_size], device=device)[:, None]    # [N, 1]
        hidden = model(input_ids=chunk, output_hidden_states=True).hidden_states[-1][:, 0].float()
        sims.append(F.cosine_similarity(hidden, domain[None], dim=-1).cpu())
    by_id = dict(zip(unique, torch.cat(sims).numpy().astype(np.float32))) if unique else {}
    by_key = {k: by_id[i] for k, i in first_id.items()}
    return {"tr": [np.array([by_key[released_text_key(tokenizer, int(t))] for t in r["input_ids"]], dtype=np.float32)
                   for r in rows]}


# -------------------------------------------------------------------------------------------------- cache
def model_identity(weights: str, cache_dir: str | None = None) -> str:
    """Identity of the base weights by content (xtf.identity.weights_identity: sha256 of the weight, config and
    tokenizer files of a local folder, remembered by path + mtime + size), or the Hub id."""
    from xtf.identity import weights_identity

    return weights_identity(weights, cache_dir) if Path(weights).is_dir() else weights


def cached_scores(cache_dir: str, spec: dict, compute) -> tuple[dict, bool, Path]:
    """(scores, computed_now, folder). Scores are {name: [per-row float32 arrays]}, stored flat with row
    lengths; a "_model" entry (a trained model) is saved as folder/model.

    In a distributed run every rank comes here: rank 0 says whether the cache holds the entry; if not, every
    rank takes part in `compute` (each scores its share, xtf.distributed.merge), rank 0 alone writes the entry
    (atomically, xtf.cache) and the others wait for it, then every rank reads the one entry."""
    computed = []
    if distributed.runtime().world_size > 1:
        final = Path(cache_dir) / "scores" / cache.key_of(spec)
        if not distributed.broadcast(final.exists() and cache.verify(final) is None):
            scores = compute()  # every rank, in lockstep
            if distributed.is_main():
                cache.cached_dir(cache_dir, "scores", spec, lambda tmp: _save_scores(tmp, scores))
            distributed.barrier()
            computed.append(True)

    def build(tmp: Path) -> None:
        _save_scores(tmp, compute())
        computed.append(True)

    folder = cache.cached_dir(cache_dir, "scores", spec, build)
    data = np.load(folder / "scores.npz")
    scores = {}
    for name in json.loads((folder / "names.json").read_text()):
        offsets = np.concatenate([[0], np.cumsum(data[f"{name}__lengths"])])
        flat = data[name]
        scores[name] = [flat[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return scores, bool(computed), folder


def _save_scores(tmp: Path, scores: dict) -> None:
    trained = scores.pop("_model", None)  # a method's own trained model (TC chain): stored with its scores
    if trained is not None:
        trained.save_pretrained(tmp / "model")
    arrays = {}
    for name, per_row in scores.items():
        arrays[f"{name}__lengths"] = np.array([len(a) for a in per_row], dtype=np.int64)
        arrays[name] = np.concatenate(per_row).astype(np.float32) if per_row else np.zeros(0, np.float32)
    np.savez(tmp / "scores.npz", **arrays)
    (tmp / "names.json").write_text(json.dumps(sorted(scores)))


# ---------------------------------------------------------------------------------------------- orchestration
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
    from xtf import masking, rules
    from xtf.models import load_model, pick_device
    from xtf.train import finetune

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
                             desc=f"reference scoring {r + 1}/{len(plan)}")["nll"]
        for i, values in zip(scored, nll):
            ref_nll[i] = values
        if r + 1 < len(plan) or chain:  # evolve: train the chain on this part's selected tokens
            selected = rules.top_k_keep([masking.tc_scores(rows[i], base_nll[i], ref_nll[i]) for i in ranked],
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
    groups = {
        # One forward pass gives nll, kn (= PCP) and ri.
        "forward": ({"nll", "kn", "ri"},
                    {**base, "v": SCORER_VERSIONS["forward_official" if ri.definition == "official" else "forward"],
                     "ri": [ri.definition, list(ri.layers)]},
                    lambda: released_forward_scores(model, rows) if ri.definition == "official" else
                    forward_scores(model, rows, tokenizer.pad_token_id, cfg.eval.batch_size, ri.definition,
                                   ri.layers, ri.query_chunk)),
        "tr": ({"tr"}, {**base, "expert_words": list(expert_words),
                        **({"v": SCORER_VERSIONS["tr_released"], "scorer": "released"}
                           if cfg.method.tr.scorer == "released" else {"v": SCORER_VERSIONS["tr"]})},
               lambda: released_tr_scores(model, tokenizer, rows, expert_words) if cfg.method.tr.scorer == "released"
               else tr_scores(model, tokenizer, rows, expert_words)),
        "reference": ({"ref_nll"}, {**base, "v": SCORER_VERSIONS["reference"], "seed": cfg.seed,
                                    "warmup": cfg.method.reference_warmup, "train": dataclasses.asdict(cfg.train),
                                    "reference_train": dataclasses.asdict(reference_train_config(cfg)),
                                    "evolve": evolve_spec},
                      lambda: reference_nll(cfg, weights, tokenizer, rows, out_dir / "reference",
                                            scores["nll"] if evolving else None)),
    }
    for group, (names, spec, compute) in groups.items():
        if not names & set(needed):
            continue
        got, fresh, folder = cached_scores(cfg.paths.cache_dir, {"group": group, **spec}, compute)
        scores.update(got)
        if (folder / "model").is_dir():  # the method trained its own result (TC's chain): the pipeline uses it
            info["trained_model"] = str(folder / "model")
        info["cache_keys"][group] = cache.key_of({"group": group, **spec})
        if fresh:
            info["computed"].append(group)
    return scores, info
