"""The memory arithmetic of the resource planner (xtf.plan): a decoder's shape (Arch), how one cell trains on one
device (Setup), and the bytes each device holds (memory). Pure functions of those two, no config or I/O; every
number is an estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

from xtf.lm_loss import chunk_rows

GIB = 2**30
OVERHEAD_GIB = 2.0          # CUDA context, cuBLAS / NCCL workspaces (assumed)
FRAGMENTATION = 0.05        # caching-allocator fragmentation, as a share of the rest (assumed)


@dataclass(frozen=True)
class Arch:
    """The shape of a decoder (Llama / Qwen2 / Mistral / Gemma-3 style: GQA attention, gated MLP)."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool                 # input embedding shared with the LM head
    head_dim: int = 0          # 0: hidden // heads
    qkv_bias: bool = False     # Qwen2
    params: int = 0            # the published parameter count (0: computed from the shape)

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads


def module_shapes(a: Arch) -> dict[str, tuple[int, int]]:
    """(in, out) features of each linear module of one decoder layer (the names PEFT's target_modules use)."""
    q, kv = a.heads * a.hd, a.kv_heads * a.hd
    return {"q_proj": (a.hidden, q), "k_proj": (a.hidden, kv), "v_proj": (a.hidden, kv), "o_proj": (q, a.hidden),
            "gate_proj": (a.hidden, a.intermediate), "up_proj": (a.hidden, a.intermediate),
            "down_proj": (a.intermediate, a.hidden)}


def layer_params(a: Arch) -> int:
    bias = (a.heads + 2 * a.kv_heads) * a.hd if a.qkv_bias else 0
    return sum(i * o for i, o in module_shapes(a).values()) + bias + 2 * a.hidden  # + two RMSNorms


def param_count(a: Arch) -> int:
    """Parameters computed from the shape (the published count, when given, is used for memory)."""
    return a.layers * layer_params(a) + a.vocab * a.hidden * (1 if a.tied else 2) + a.hidden


def lora_params(a: Arch, targets: tuple[str, ...], r: int) -> int:
    """LoRA adapters: r x (in + out) per target module per layer (A: in x r, B: r x out)."""
    shapes = module_shapes(a)
    unknown = [t for t in targets if t not in shapes]
    if unknown:
        raise ValueError(f"model.lora_target_modules has {unknown}, not a module the planner knows; known: "
                         f"{sorted(shapes)}")
    return a.layers * sum(r * sum(shapes[t]) for t in targets)


@dataclass(frozen=True)
class Setup:
    """How one cell trains on one device: what the memory estimate depends on."""
    mode: str                  # full | lora | eval (method=none: no training)
    strategy: str              # none | ddp | fsdp | deepspeed (none with world > 1 is DDP)
    world: int                 # processes = GPUs used
    micro_batch: int           # sequences per device per forward (xtf.distributed.batch_split)
    seq_len: int               # data.max_len: the padded length, an upper bound
    dtype_bytes: int           # model.dtype on GPU: 2 (bf16 / fp16) or 4
    mixed: bool                # bf16 / fp16 autocast (dist.mixed_precision, or model.dtype=bfloat16)
    checkpointing: bool = False
    zero_stage: int = 3
    offload: bool = False      # dist.fsdp_offload
    eager: bool = False        # attn_implementation=eager stores the s x s attention matrices
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    loss_impl: str = "full"    # train.loss_impl as it runs (chunked becomes kept under fsdp / deepspeed)


def activation_bytes(a: Arch, s: Setup) -> float:
    """Activations kept for backward, per device. Korthikanti et al. 2022 ("Reducing Activation Recomputation in
    Large Transformer Models", eq. 1) count s*b*h*(34 + 5*a*s/h) bytes per GPT layer in 16-bit; the same count
    for a Llama-style layer without dropout, with GQA (kv width h_kv) and a gated MLP (width i), in 2-byte
    activations per token: 2*(6h + 2h_kv) (two norm inputs and outputs, q/k/v, attention output) + 2*4i (gate,
    up, silu(gate), their product) — for Llama-3.2-3B 34.7*h, Korthikanti's 34. SDPA / flash attention stores no
    s x s matrix; eager adds 4*heads*s^2 bytes per sequence and layer (scores and probabilities). With activation
    checkpointing only each layer's input (2h bytes per token) is kept, plus one layer recomputed in backward.
    Counted the same for LoRA (an upper bound: frozen linears need not keep their inputs)."""
    tokens = s.micro_batch * s.seq_len
    scale = s.dtype_bytes / 2 if not s.mixed else 1.0
    per_layer = tokens * (2 * (6 * a.hidden + 2 * a.kv_heads * a.hd) + 2 * 4 * a.intermediate) * scale
    if s.eager:
        per_layer += s.micro_batch * a.heads * s.seq_len**2 * 4 * scale
    if s.checkpointing:
        return a.layers * tokens * 2 * a.hidden * scale + per_layer
    return a.layers * per_layer


def logits_bytes(a: Arch, s: Setup) -> float:
    """Logits of one micro-batch (xtf/lm_loss.py), per train.loss_impl:
      full     [micro_batch, max_len, vocab]: bf16 logits kept in the model output (2 bytes), their float32 upcast
               for the loss (4) and the float32 log-softmax saved for backward (4);
      kept     the same at the trained positions only, [N, vocab]; N <= micro_batch x max_len, counted at that
               upper bound (prompt positions are never trained, so the real N is smaller);
      chunked  at most [chunk_rows(vocab), vocab] float32 logits and their gradient at a time, never saved."""
    positions = s.micro_batch * s.seq_len
    if s.loss_impl == "chunked":
        return min(chunk_rows(a.vocab), positions) * a.vocab * (4 + 4)
    return positions * a.vocab * (2 + 4 + 4)


def memory(a: Arch, s: Setup) -> dict[str, float]:
    """Estimated bytes per device: weights, grads, optimizer, activations, logits, overhead, total.

    What each strategy holds per parameter (P parameters, W = world, d = model.dtype bytes), as the code runs:
      none / ddp  weights d, grads d (+ d for DDP's all-reduce buckets when W > 1), AdamW moments 2d: the model is
                  loaded in model.dtype and HF's bf16 flag is autocast, so there is no fp32 master copy;
      fsdp        accelerate upcasts trainable weights to an fp32 master under mixed precision: 4 + 4 + 8 bytes,
                  all / W, plus the bf16 weights gathered for compute (two layers: current + prefetch, and the
                  root unit: embeddings, LM head); fsdp_offload moves the shards to CPU memory;
      deepspeed   ZeRO's mixed-precision optimizer: d weights, d grads, 12 bytes (fp32 master + moments); stage 1
                  shards the optimizer, 2 also the grads, 3 also the weights (/ W);
      LoRA        frozen base weights d, adapters in float32 (PEFT's autocast_adapter_dtype): 4 + 4 + 8 bytes.
    """
    p = a.params or param_count(a)
    w, d = s.world, s.dtype_bytes
    out = {"weights": float(p * d), "grads": 0.0, "optimizer": 0.0, "activations": 0.0, "logits": 0.0}
    if s.mode == "lora":
        n = lora_params(a, s.lora_targets, s.lora_r)
        out.update(weights=p * d + 4.0 * n, grads=4.0 * n * (2 if w > 1 else 1), optimizer=8.0 * n)
    elif s.mode == "full" and s.strategy == "fsdp":
        master = 4 if s.mixed else d
        root = a.vocab * a.hidden * (1 if a.tied else 2)
        gathered = (2 * layer_params(a) + root) * 2 if w > 1 else 0  # bf16 copies, bytes
        shard = 0.0 if s.offload else p / w
        out.update(weights=master * shard + gathered, grads=master * shard, optimizer=2 * master * shard)
    elif s.mode == "full" and s.strategy == "deepspeed":
        z = s.zero_stage
        out.update(weights=p * d / (w if z >= 3 else 1), grads=p * d / (w if z >= 2 else 1), optimizer=12.0 * p / w)
    elif s.mode == "full":
        out.update(grads=p * d * (2 if w > 1 else 1), optimizer=2.0 * p * d)
    if s.mode != "eval":
        out.update(activations=activation_bytes(a, s), logits=logits_bytes(a, s))
    rest = sum(out.values())
    out["overhead"] = OVERHEAD_GIB * GIB + FRAGMENTATION * rest
    out["total"] = rest + out["overhead"]
    return out
