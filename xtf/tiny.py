"""Tiny models built locally (no Hub): a byte-level BPE tokenizer trained on the spot and a small Llama / Qwen2 /
Mistral model, either randomly initialised (`model.tiny=random`, a stand-in that exercises the code path) or
pre-trained on CPU on the synthetic task's generated corpus (`model.tiny=pretrained`, so that the base model's
probabilities mean something: it knows chat boilerplate and arithmetic facts, but has never seen a solved
word problem).

    path = build_tiny(model_cfg, cache_dir)        # a folder in Hugging Face format, cached by content
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)

Tokenizer: byte-level BPE (any text encodes, nothing is unknown, decode(encode(text)) == text), special tokens
<|bos|> <|eos|> <|pad|> <|user|> <|assistant|> <|system|>; a post-processor prepends <|bos|> to every encoded
text (tokenizer.add_bos_token reads False after loading in transformers 5, as for real Llama 3 tokenizers; the
post-processor is what counts). The chat template starts with bos_token, like Llama 3's, so render it with
tokenize=True, or encode the rendered text with add_special_tokens=False. The corpus has few distinct words, so
BPE may learn fewer tokens than model.vocab_size: len(tokenizer) can be smaller than config.vocab_size (the
embedding is padded, as Qwen2's is).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from pathlib import Path

import torch

from xtf.cache import cached_dir
from xtf.tasks import synth

log = logging.getLogger(__name__)

TINY_VERSION = 1
SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|user|>", "<|assistant|>", "<|system|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
CORPUS = {"lines": 50_000, "seed": 0, "max_value": 50}      # synth.pretraining_corpus arguments
PRETRAIN = {"lr": 3e-3, "min_lr_ratio": 0.1, "warmup_ratio": 0.05, "batch_size": 32, "seq_len": 128,
            "weight_decay": 0.01, "betas": (0.9, 0.95), "max_grad_norm": 1.0, "seed": 0}
MAX_POSITIONS = 1024


@functools.lru_cache(maxsize=1)
def _texts() -> tuple[list[str], list[str]]:
    """(pre-training corpus lines, synth training texts); both deterministic, so computed once per process."""
    corpus = synth.pretraining_corpus(CORPUS["lines"], CORPUS["seed"], CORPUS["max_value"])
    train = synth.load(synth.Options()).splits["train"]
    return corpus, [ex["prompt"] + ex["response"] for ex in train]


def _spec(model_cfg, corpus: list[str], task_texts: list[str]) -> dict:
    import hashlib

    import tokenizers
    import transformers

    def digest(lines: list[str]) -> str:
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]

    pretrained = model_cfg.tiny == "pretrained"
    return {
        "tiny_version": TINY_VERSION, "family": model_cfg.family, "tiny": model_cfg.tiny,
        "hidden_size": model_cfg.hidden_size, "num_layers": model_cfg.num_layers, "num_heads": model_cfg.num_heads,
        "intermediate_size": model_cfg.intermediate_size, "vocab_size": model_cfg.vocab_size,
        "pretrain_steps": model_cfg.pretrain_steps if pretrained else 0,
        "pretrain": PRETRAIN if pretrained else None,
        "corpus": {**CORPUS, "sha256": digest(corpus)}, "tokenizer_texts_sha256": digest(task_texts),
        "torch": torch.__version__.split(".")[0], "transformers": transformers.__version__.split(".")[0],
        "tokenizers": tokenizers.__version__.split(".")[0],
    }


def train_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE trained on `texts` (deterministic), wrapped as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<|bos|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A:0", pair="<|bos|> $A:0 <|bos|>:1 $B:1", special_tokens=[("<|bos|>", bos)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>",
        additional_special_tokens=list(SPECIAL_TOKENS[3:]), clean_up_tokenization_spaces=False,
        model_max_length=MAX_POSITIONS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(model_cfg, tokenizer):
    """A randomly initialised (torch seed 0) model of `model_cfg.family` with the tiny sizes of `model_cfg`."""
    import transformers

    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM"),
               "mistral": ("MistralConfig", "MistralForCausalLM")}
    if model_cfg.family not in classes:
        raise ValueError(f"model.family={model_cfg.family!r} has no tiny builder; choose one of {sorted(classes)}")
    if len(tokenizer) > model_cfg.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens > model.vocab_size={model_cfg.vocab_size}")
    heads = model_cfg.num_heads
    kwargs = dict(
        vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.hidden_size,
        intermediate_size=model_cfg.intermediate_size, num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=heads, num_key_value_heads=heads // 2 if heads % 2 == 0 else heads,
        max_position_embeddings=MAX_POSITIONS, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, dtype="float32")
    if model_cfg.family == "mistral":
        kwargs["sliding_window"] = None
    config_cls, model_cls = (getattr(transformers, name) for name in classes[model_cfg.family])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = model_cls(config_cls(**kwargs))
    return model.float()


def _blocks(tokenizer, lines: list[str], seq_len: int) -> torch.Tensor:
    """Pack [bos] line [eos] [bos] line [eos] ... into a (n_blocks, seq_len) tensor."""
    ids: list[int] = []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for enc in tokenizer.backend_tokenizer.encode_batch(lines, add_special_tokens=False):
        ids += [bos, *enc.ids, eos]
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)


def pretrain(model, tokenizer, lines: list[str], steps: int, hp: dict | None = None) -> dict:
    """AdamW with linear warmup and cosine decay on random packed blocks of `lines` (hyper-parameters `hp`,
    default PRETRAIN); returns the loss record."""
    from tqdm.auto import tqdm

    hp = PRETRAIN if hp is None else hp
    blocks = _blocks(tokenizer, lines, hp["seq_len"])
    warmup = max(1, int(hp["warmup_ratio"] * steps))

    def lr_at(step: int) -> float:  # multiplier of hp["lr"]
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return hp["min_lr_ratio"] + (1 - hp["min_lr_ratio"]) * 0.5 * (1 + math.cos(math.pi * progress))

    opt = torch.optim.AdamW(model.parameters(), lr=hp["lr"], betas=hp["betas"], weight_decay=hp["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(hp["seed"])
    order = torch.randperm(len(blocks), generator=gen)
    pos, losses, start = 0, [], time.time()
    model.train()
    bar = tqdm(range(steps), desc="pre-training tiny base", mininterval=2.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(hp["seed"])
        for _ in bar:
            if pos + hp["batch_size"] > len(order):  # next epoch
                order, pos = torch.randperm(len(blocks), generator=gen), 0
            batch = blocks[order[pos: pos + hp["batch_size"]]]
            pos += hp["batch_size"]
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), hp["max_grad_norm"])
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 4))
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    model.eval()
    every = max(1, steps // 100)
    return {"steps": steps, "seconds": round(time.time() - start, 1), "tokens_per_step": blocks.shape[1] *
            hp["batch_size"], "corpus_blocks": len(blocks), "first_losses": losses[:10], "last_losses": losses[-10:],
            "final_loss": round(sum(losses[-10:]) / max(1, len(losses[-10:])), 4),
            "curve": {str(i): loss for i, loss in enumerate(losses) if i % every == 0 or i == steps - 1},
            "hparams": hp}


def build_tiny(model_cfg, cache_dir: str | Path) -> Path:
    """The folder of the tiny model described by `model_cfg` (model.tiny = "random" | "pretrained"), built and
    cached under `<cache_dir>/tiny_base/<key>/` on first use; loadable with AutoModelForCausalLM/AutoTokenizer."""
    if model_cfg.tiny not in ("random", "pretrained"):
        raise ValueError(f"build_tiny needs model.tiny in ('random', 'pretrained'), got {model_cfg.tiny!r}")
    corpus, task_texts = _texts()
    spec = _spec(model_cfg, corpus, task_texts)

    def build(folder: Path) -> None:
        started = time.time()
        tokenizer = train_tokenizer(corpus + task_texts, model_cfg.vocab_size)
        model = make_model(model_cfg, tokenizer)
        if model_cfg.tiny == "pretrained" and model_cfg.pretrain_steps > 0:
            record = pretrain(model, tokenizer, corpus, model_cfg.pretrain_steps, PRETRAIN)
            (folder / "pretrain.json").write_text(json.dumps(record, indent=1))
            log.info("tiny %s base: pre-trained %d steps in %.0fs, loss %.3f -> %.3f", model_cfg.family,
                     record["steps"], record["seconds"], record["first_losses"][0], record["final_loss"])
        tokenizer.save_pretrained(folder)
        model.save_pretrained(folder)
        log.info("built tiny %s base (%s) in %.0fs", model_cfg.family, model_cfg.tiny, time.time() - started)

    return cached_dir(cache_dir, "tiny_base", spec, build)
