"""The training loss computed only where it counts: the LM head and the cross-entropy at the positions whose
label is trained, never a [B, L, V] logits tensor.

    train.loss_impl=chunked   (default) the backbone's last hidden state is captured (a forward hook on the decoder,
                              inside the model's own forward, so DDP's hooks fire as usual) and the model computes
                              no logits at all (logits_to_keep = an all-False mask); then `LinearCrossEntropy`
                              projects the kept positions onto the vocabulary `chunk` rows at a time and computes the
                              loss and its gradients in the same pass: at most [chunk, V] logits exist, never saved
                              for backward.
    train.loss_impl=kept      the model's own forward with logits_to_keep = the kept positions ([N, V] logits, N = kept
                              tokens): every model family's head (softcapping, scaling) as the model defines it, and
                              the sharded engines (FSDP, DeepSpeed), which must see every weight used in forward.
    train.loss_impl=full      the reference: logits at every position ([B, L, V]), `token_nll`.

All three give the same loss and gradients to float tolerance (tests/test_lm_loss.py), so the choice is recorded
in the run record but never in the run id. Alignment (xtf.data): label t is predicted by the hidden state at t - 1;
`predicting(labels)` is that shift for labels and `token_nll` for full logits, each written once here (below
xtf.train, xtf.scoring and xtf.methods.sstoken, which all use token_nll).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from xtf.errors import ConfigError

IGNORE = -100
LOSS_IMPLS = ("chunked", "kept", "full")
CHUNK_ROWS = 1024  # at most this many positions projected onto the vocabulary at once
# ... and at most this many logits: a chunk's [n, V] float32 logits and their softmax gradient, 64 MiB each, whatever
# V (1024 rows were 2 x 200 MB at SmolLM2's V = 49k, 2 x 0.5 GB at V = 128k, on top of the saved activations).
LOGITS_BUDGET = 2 ** 24


def chunk_rows(vocab: int) -> int:
    """Positions per chunk for a vocabulary of `vocab`: CHUNK_ROWS, fewer when their logits exceed LOGITS_BUDGET."""
    return max(1, min(CHUNK_ROWS, LOGITS_BUDGET // max(1, vocab)))


def predicting(labels: torch.Tensor) -> torch.Tensor:
    """[B, L] bool: position t - 1 predicts a trained label at t (labels [B, L], -100 = not trained)."""
    out = torch.zeros_like(labels, dtype=torch.bool)
    out[:, :-1] = labels[:, 1:] != IGNORE
    return out


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood aligned to input_ids (xtf.data convention).

    logits: [B, L, V] (logits[:, t] predict token t+1); input_ids: [B, L] → nll: [B, L] float32, where
    nll[:, t] = -log softmax(logits[:, t-1])[input_ids[:, t]] and nll[:, 0] = 0 (nothing predicts token 0).
    This is the one place where the shift between tokens and logits happens."""
    b, length, v = logits.shape
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, v), input_ids[:, 1:].reshape(-1), reduction="none")
    return torch.cat([nll.new_zeros(b, 1), nll.view(b, length - 1)], dim=1).float()


def scatter_nll(values: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N] per-kept-token NLL (in the order of labels[:, 1:] != -100, row-major) → [B, L] float32 aligned to
    input_ids, 0 elsewhere (as token_nll: nll[:, t] is the NLL of token t). Differentiable."""
    trained = labels != IGNORE
    trained[:, 0] = False  # nothing predicts token 0 (never trained: xtf.data)
    return values.new_zeros(labels.shape, dtype=torch.float32).masked_scatter(trained, values.float())


def _logits(hidden: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """[n, H] @ [V, H]^T → [n, V] float32, with the head's final softcapping (Gemma-2 style) when the model has it."""
    logits = hidden @ weight.t()
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 → float32; float64 stays
    if softcap:
        logits = softcap * torch.tanh(logits / softcap)
    return logits


class LinearCrossEntropy(torch.autograd.Function):
    """loss = sum_i w_i · CE(hidden_i @ weight^T, target_i), chunk by chunk; the gradients with respect to hidden and
    weight are computed in the forward pass (the weights w are known then), so nothing of size V is kept for
    backward. Shapes: hidden [N, H], weight [V, H], targets [N] long, w [N] float (detached)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, w, softcap, chunk):
        loss = torch.zeros((), dtype=torch.promote_types(hidden.dtype, torch.float32), device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if hidden.requires_grad else None
        grad_weight = (torch.zeros_like(weight, dtype=torch.promote_types(weight.dtype, torch.float32))
                       if weight.requires_grad else None)  # accumulated over chunks in float32 at least
        for s in range(0, hidden.shape[0], chunk):
            h, t, wc = hidden[s:s + chunk], targets[s:s + chunk], w[s:s + chunk].to(loss.dtype)
            logits = _logits(h, weight, softcap)                                  # [n, V] float32
            lse = torch.logsumexp(logits, dim=-1)
            loss += ((lse - logits.gather(1, t[:, None])[:, 0]) * wc).sum()
            # d loss / d logits = w · (softmax - onehot); through the softcap: · (1 - tanh²)
            d = torch.softmax(logits, dim=-1)
            d[torch.arange(len(t), device=d.device), t] -= 1.0
            d *= wc[:, None]
            if softcap:
                d *= 1.0 - (logits / softcap) ** 2
            d = d.to(weight.dtype)
            if grad_hidden is not None:
                grad_hidden[s:s + chunk] = d @ weight
            if grad_weight is not None:
                grad_weight += d.t().to(grad_weight.dtype) @ h.to(grad_weight.dtype)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.has, ctx.weight_dtype = (grad_hidden is not None, grad_weight is not None), weight.dtype
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        saved = iter(ctx.saved_tensors)
        grad_hidden = next(saved) * grad_loss if ctx.has[0] else None
        grad_weight = (next(saved) * grad_loss).to(ctx.weight_dtype) if ctx.has[1] else None
        return grad_hidden, grad_weight, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, w: torch.Tensor,
                         softcap: float | None = None, chunk: int | None = None) -> torch.Tensor:
    """Σ_i w_i · NLL_i over kept positions (see LinearCrossEntropy); a scalar with gradients to hidden and weight.
    `chunk`: positions per chunk (None: `chunk_rows` of the vocabulary)."""
    return LinearCrossEntropy.apply(hidden, weight, targets, w.detach(), softcap, chunk or chunk_rows(weight.shape[0]))


@torch.no_grad()
def chunked_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None = None,
                chunk: int | None = None) -> torch.Tensor:
    """[N] NLL of each target without gradients (an online method's selection signal), chunk by chunk."""
    chunk = chunk or chunk_rows(weight.shape[0])
    out = [F.cross_entropy(_logits(hidden[s:s + chunk], weight, softcap), targets[s:s + chunk], reduction="none")
           for s in range(0, hidden.shape[0], chunk)]
    return torch.cat(out) if out else hidden.new_zeros(0, dtype=torch.float32)


# ------------------------------------------------------------------------------------------ the model's parts
def causal_lm(model):
    """The Hugging Face *ForCausalLM inside a DDP / PEFT wrapper (the module that owns get_decoder and the head)."""
    inner = getattr(model, "module", model)          # DDP
    if hasattr(inner, "get_base_model"):             # PEFT: LoRA layers live inside the base model's modules
        inner = inner.get_base_model()
    return inner


def head_of(model) -> tuple[torch.Tensor, float | None]:
    """(head weight [V, H], final logit softcap or None). Refuses a head `chunked` cannot reproduce (a bias or a
    logit scale), naming the way out."""
    lm = causal_lm(model)
    head = lm.get_output_embeddings()
    scaled = [k for k in ("logit_scale", "logits_scaling", "output_multiplier_scale") if getattr(lm.config, k, None)]
    if getattr(head, "bias", None) is not None or scaled:
        raise ConfigError(f"train.loss_impl=chunked reproduces a plain linear head (with optional softcapping); "
                          f"{type(lm).__name__} has {'a head bias' if not scaled else scaled}: use "
                          f"train.loss_impl=kept (the model's own head at kept positions)")
    return head.weight, getattr(lm.config, "final_logit_softcapping", None)


@contextlib.contextmanager
def captured_hidden(model):
    """Yields a dict whose "hidden" is the decoder's last hidden state [B, L, H] of the forward run inside the
    block (the input of the LM head, after the final norm)."""
    box: dict = {}

    def hook(module, args, output):
        box["hidden"] = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

    handle = causal_lm(model).get_decoder().register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()
