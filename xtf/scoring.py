"""Per-token scores from the base model, aligned to `input_ids` (xtf.data convention), cached on disk.

One batched forward pass (right padding) gives, for every token t of every row:
    nll[t] = -log P(input_ids[t] | input_ids[<t])                 via xtf.lm_loss.token_nll (the one shift),
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
re-masks cached scores and runs zero forward passes after the first run. While the forward pass runs, every
completed chunk of ~CHUNK_ROWS rows is kept beside the cache entry (xtf.cache.Chunks): a killed run resumes from
them and ends with the same floats (the batch plan is a function of the rows; a chunk is verified before use).
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from xtf import cache, distributed
from xtf.attention import attention_modules, ri_collection
from xtf.batching import token_budget_batches
from xtf.identity import weights_identity
from xtf.lm_loss import token_nll

log = logging.getLogger(__name__)
# forward_official / tr_released: the released code's scorers (xtf_official), versioned on their own so that a
# change to them re-scores only their runs.
SCORER_VERSIONS = {"forward": 1, "forward_official": 2, "tr": 1, "tr_released": 1, "reference": 2}


# ------------------------------------------------------------------------------------------- forward scores
# Rows per chunk of persisted progress (rounded to whole batches): a killed scoring pass loses at most one chunk.
CHUNK_ROWS = 1024


def _batches(rows: list[dict], batch_size: int, batch_tokens: int = 0) -> list[list[int]]:
    """The batch plan: row indices sorted by length (little padding per batch; the sort is stable, so the plan is
    a function of the rows alone: a resumed pass pads every row exactly as an uninterrupted one), cut every
    `batch_size` rows, or with batch_tokens > 0 by a token budget: rows x the batch's longest row <= batch_tokens
    (a longer row alone; xtf.batching.token_budget_batches)."""
    return token_budget_batches([len(r["input_ids"]) for r in rows], batch_size, batch_tokens)


def _in_chunks(rows: list[dict], batches: list[list[int]], score_batch, names: tuple[str, ...],
               partial: Path | None, chunk_rows: int | None, desc: str) -> dict:
    """{name: [float32 array per row]} from `score_batch(idx) -> {name: [array per row of idx]}` over `batches`.

    The batches go a chunk of ~chunk_rows rows at a time. With `partial` (a folder, cache.partial_dir) each
    completed chunk is kept there (cache.Chunks), and a chunk already there and verified is read back instead of
    scored, so a killed pass resumes where it stopped with the same floats.
    Inside distributed.collective() each rank scores its share of a chunk's batches (whole batches, formed as one
    process forms them) and the chunk is merged across ranks; rank 0 alone reads and writes chunks, and sends a
    chunk it read to the others (one process: broadcast is the identity).
    Memory: the scores go into one flat float32 array per name ([total tokens]) as each chunk completes, and the
    rows get views of it: 4 bytes per token and score; per-row temporaries live for one chunk only."""
    # Batches per chunk; at least one per rank, so that no rank idles through a chunk.
    every = max(1, (chunk_rows or CHUNK_ROWS) // len(batches[0]), distributed.runtime().world_size) if batches else 1
    chunks = cache.Chunks(partial, {"batches": batches, "every": every, "names": names}) if partial else None
    bounds = np.cumsum([0] + [len(r["input_ids"]) for r in rows])      # row i's tokens: flat[bounds[i]:bounds[i+1]]
    flat = {name: np.empty(int(bounds[-1]), np.float32) for name in names}
    bar = tqdm(total=len(batches), desc=desc, unit="batch")
    for k, start in enumerate(range(0, len(batches), every)):
        chunk = batches[start:start + every]
        members = [i for idx in chunk for i in idx]                   # the chunk's rows, in plan order
        got = None
        if chunks is not None:
            got = distributed.broadcast(_read_chunk(chunks, k, members, rows, names) if distributed.is_main() else None)
        if got is None:
            got = {name: [None] * len(members) for name in names}
            ends = np.cumsum([len(idx) for idx in chunk])             # [n batches]: where each batch's rows end
            for j in distributed.share(list(range(len(chunk)))):
                for name, values in score_batch(chunk[j]).items():
                    got[name][ends[j] - len(chunk[j]):ends[j]] = values
                bar.update(1)
            got = {name: distributed.merge(values) for name, values in got.items()}
            if chunks is not None and distributed.is_main():
                chunks.save(k, {"rows": np.asarray(members, np.int64),
                                "lengths": np.array([len(a) for a in got[names[0]]], np.int64),
                                **{name: np.concatenate(got[name]) for name in names}})
        else:
            bar.update(len(chunk))
        for name in names:
            for i, values in zip(members, got[name]):
                flat[name][bounds[i]:bounds[i + 1]] = values
    bar.close()
    return {name: [values[a:b] for a, b in zip(bounds[:-1], bounds[1:])] for name, values in flat.items()}


def _read_chunk(chunks: cache.Chunks, k: int, members: list[int], rows: list[dict],
                names: tuple[str, ...]) -> dict | None:
    """Chunk k split back into per-row arrays, or None when it is absent or does not hold exactly these rows."""
    arrays = chunks.load(k)
    if arrays is None:
        return None
    lengths = [len(rows[i]["input_ids"]) for i in members]
    if not (np.array_equal(arrays.get("rows"), members) and np.array_equal(arrays.get("lengths"), lengths)
            and all(name in arrays and arrays[name].shape == (sum(lengths),) for name in names)):
        log.warning("partial chunk %s of %s does not hold these rows' scores; recomputing it", k, chunks.folder.name)
        chunks.discard(k)
        return None
    bounds = np.cumsum([0] + lengths)
    return {name: [arrays[name][a:b] for a, b in zip(bounds[:-1], bounds[1:])] for name in names}


@torch.no_grad()
def forward_scores(model, rows: list[dict], pad_id: int, batch_size: int, ri_definition: str | None,
                   ri_layers: tuple[int, ...] = (), query_chunk: int = 64, desc: str = "scoring",
                   partial: Path | None = None, chunk_rows: int | None = None, batch_tokens: int = 0) -> dict:
    """{"nll": [...], "kn": [...], "ri": [...]} per row, float32 arrays aligned to input_ids (see module doc).
    `ri_definition=None` skips RI (plain sdpa: e.g. the reference model's losses). `partial`: keep progress there
    and resume from it (`_in_chunks`). Batches of `batch_size` rows, or with batch_tokens > 0 of at most that many
    padded positions (`_batches`): the same values to float rounding, so no cache key holds the batching."""
    device = next(model.parameters()).device
    backbone, head = model.get_decoder(), model.get_output_embeddings()

    def score_batch(idx: list[int]) -> dict:
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
        out = {"nll": [], "kn": [], **({"ri": []} if ri_definition else {})}
        for j in range(len(idx)):
            n = int(lengths[j])
            # One row's logits at a time: [L, V] instead of [B, L, V].
            nll = token_nll(head(hidden[j:j + 1, :n]).float(), ids[j:j + 1, :n])[0].cpu().numpy()
            out["nll"].append(nll.astype(np.float32))
            out["kn"].append(np.exp(-nll).astype(np.float32))
            if ri is not None:
                out["ri"].append(ri[j, :n].astype(np.float32))
        return out

    names = ("nll", "kn", "ri") if ri_definition else ("nll", "kn")
    return _in_chunks(rows, _batches(rows, batch_size, batch_tokens), score_batch, names, partial, chunk_rows, desc)


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
def released_forward_scores(model, rows: list[dict], desc: str = "scoring (released)",
                            partial: Path | None = None, chunk_rows: int | None = None) -> dict:
    """{"nll", "kn", "ri"} as XTF_script.py computes them (module doc, "official"), one row at a time, no
    padding and no attention mask (the script's batch of one). RI comes from a hook on the first attention
    module, which under eager attention returns its [1, H, L, L] probabilities; only that layer's are held.
    `partial`: keep progress there and resume from it (`_in_chunks`; each row is a batch of one)."""
    device = next(model.parameters()).device
    first = attention_modules(model)[0]
    grabbed = {}

    def score_row(idx: list[int]) -> dict:
        ids = torch.tensor([rows[idx[0]]["input_ids"]], dtype=torch.long, device=device)
        logits = model(input_ids=ids).logits                                        # [1, L, V]
        attn = grabbed.pop("attn")                                                  # [1, H, L, L]
        ri = torch.mean(torch.mean(attn, dim=1).squeeze(0), dim=1)                  # the script's two means
        probs = F.softmax(logits[0, :-1].float(), dim=-1)                           # [L-1, V] float32
        kn = torch.zeros(ids.shape[1])
        kn[1:] = probs.gather(-1, ids[0, 1:, None])[:, 0].cpu()                     # position 0: the script's 0.0
        nll = token_nll(logits.float(), ids)[0].cpu().numpy()
        return {"nll": [nll.astype(np.float32)], "kn": [kn.numpy().astype(np.float32)],
                "ri": [ri.float().cpu().numpy()]}

    hook = first.register_forward_hook(lambda mod, args, output: grabbed.__setitem__("attn", output[1]))
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:  # in row order; inside distributed.collective() each rank scores its share of each chunk's rows
        return _in_chunks(rows, [[i] for i in range(len(rows))], score_row, ("nll", "kn", "ri"), partial,
                          chunk_rows, desc)
    finally:
        hook.remove()
        model.set_attn_implementation(previous)


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
    keys: dict[int, str] = {}  # each distinct id decoded once: the loops below visit every token of every row
    first_id: dict[str, int] = {}
    for r in rows:
        for t in r["input_ids"]:
            if t not in keys:
                keys[t] = released_text_key(tokenizer, int(t))
            first_id.setdefault(keys[t], int(t))
    unique = sorted(set(first_id.values()))
    sims = []
    for s in range(0, len(unique), batch_size):
        chunk = torch.tensor(unique[s:s + batch_size], device=device)[:, None]    # [N, 1]
        hidden = model(input_ids=chunk, output_hidden_states=True).hidden_states[-1][:, 0].float()
        sims.append(F.cosine_similarity(hidden, domain[None], dim=-1).cpu())
    by_id = dict(zip(unique, torch.cat(sims).numpy().astype(np.float32))) if unique else {}
    by_key = {k: by_id[i] for k, i in first_id.items()}
    return {"tr": [np.array([by_key[keys[t]] for t in r["input_ids"]], dtype=np.float32) for r in rows]}


# -------------------------------------------------------------------------------------------------- cache
def model_identity(weights: str, cache_dir: str | None = None) -> str:
    """Identity of the base weights by content (xtf.identity.weights_identity: sha256 of the weight, config and
    tokenizer files of a local folder, remembered by path + mtime + size), or the Hub id."""
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
