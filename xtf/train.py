"""Fine-tuning with masked answer tokens: HF Trainer (checkpoints, resume, seeded shuffling, progress bars)
plus PEFT for LoRA. XTF's own parts are only the labels and the loss normalisation, both written here once.

    labels[t] = input_ids[t] if keep[t] else -100              (make_labels; the only conversion)
    nll[t]    = -log p(input_ids[t] | input_ids[<t])           (xtf.lm_loss.token_nll; the only shift)
    loss      = sum_t nll[t]·[labels[t] != -100] / D,
        D = number of kept tokens in the micro-batch           (train.loss_norm = "kept", what HF does)
        D = number of answer tokens in the micro-batch         (train.loss_norm = "answer": masking a token
                                                                 lowers the step size instead of re-weighting
                                                                 the remaining tokens)
With train.micro_batch_tokens > 0 a micro-batch runs as pieces (xtf.batching), each piece's sum over the same D.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xtf import checkpoints, distributed, lm_loss
from xtf.batching import token_budget_batches
from xtf.checkpoints import last_checkpoint
from xtf.config import ModelConfig, TrainConfig
from xtf.finite import LossWatch, NonFiniteError
from xtf.lm_loss import token_nll  # also xtf.train.token_nll (tests/test_numeric.py)

log = logging.getLogger(__name__)
IGNORE = -100
TRAIN_VERSION = 1  # bump when the loss or the data order changes for the same config


def make_labels(input_ids: list[int] | np.ndarray, keep: np.ndarray) -> list[int]:
    """labels = input_ids where keep else -100: the only place a keep mask becomes labels."""
    ids = np.asarray(input_ids)
    return np.where(np.asarray(keep, dtype=bool), ids, IGNORE).tolist()


def masked_loss(nll: torch.Tensor, labels: torch.Tensor, response_mask: torch.Tensor, loss_norm: str,
                weights: torch.Tensor | None = None, denominator: torch.Tensor | None = None) -> torch.Tensor:
    """Mean NLL of the kept tokens, normalised per `loss_norm` (see module docstring). Shapes [B, L]. `weights`
    (an online method's detached per-token loss weights, e.g. DFT's) multiply each kept token's NLL; the
    denominator stays a token count (`denominator`: given, for a piece of a micro-batch)."""
    kept = (labels != IGNORE).float()
    if weights is not None:
        kept = kept * weights
    if denominator is None:
        denominator = loss_denominator(labels, response_mask, loss_norm)
    return (nll * kept).sum() / denominator


def loss_denominator(labels: torch.Tensor, response_mask: torch.Tensor, loss_norm: str) -> torch.Tensor:
    """D of the module docstring: the micro-batch's kept tokens (loss_norm=kept) or answer tokens (answer), >= 1."""
    count = (labels != IGNORE).float().sum() if loss_norm == "kept" else response_mask.float().sum()
    return count.clamp(min=1.0)


class Collator:
    """Right-pads rows {input_ids, labels, response_mask} into a batch; padding is never trained on.

    packed=True (train.packing): no padding at all: the rows are concatenated into one [1, T] sequence with
    position ids restarting at 0 for each row; transformers builds the block-diagonal causal mask from those
    position ids (masking_utils.find_packed_sequence_indices; flash-attention's varlen kernel on GPU), so no token
    attends across rows. A row's first token is never trained (xtf.data), so no label is predicted across a row
    boundary: the loss equals the padded batch's (tests/test_lm_loss.py)."""

    def __init__(self, pad_id: int, packed: bool = False):
        self.pad_id, self.packed = pad_id, packed

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        if self.packed:
            return {
                "input_ids": torch.tensor([[t for r in rows for t in r["input_ids"]]]),
                "position_ids": torch.tensor([[p for r in rows for p in range(len(r["input_ids"]))]]),
                "labels": torch.tensor([[t for r in rows for t in r["labels"]]]),
                "response_mask": torch.tensor([[m for r in rows for m in r["response_mask"]]]),
            }
        length = max(len(r["input_ids"]) for r in rows)

        def pad(key: str, value: int) -> torch.Tensor:
            return torch.tensor([r[key] + [value] * (length - len(r[key])) for r in rows])

        return {
            "input_ids": pad("input_ids", self.pad_id),
            "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * (length - len(r["input_ids"]))
                                            for r in rows]),
            "labels": pad("labels", IGNORE),
            "response_mask": pad("response_mask", 0),
            **({"row": torch.tensor([r["row"] for r in rows])} if "row" in rows[0] else {}),  # online methods
        }


def step_loss(model, batch: dict, labels: torch.Tensor, response_mask: torch.Tensor, loss_norm: str,
              impl: str = "chunked", select=None, around_forward=None,
              denominator: torch.Tensor | None = None) -> torch.Tensor:
    """One micro-batch's loss (module docstring), its logits computed per `impl` (xtf.lm_loss: chunked | kept |
    full, the same loss to float tolerance). batch: the model's inputs (input_ids, attention_mask or position_ids).
    `denominator`: D when these rows are a piece of a larger micro-batch (micro_batch_pieces), else computed here.
    `select(nll [B, L] detached, labels, signals) -> (labels, weights | None)`: an online method's rule, given the
    current NLL of every token the offline labels train (the only ones it may keep) and what `around_forward` (a
    context manager around the forward pass, yielding the method's per-step signals) captured."""
    ids = batch["input_ids"]
    batch = {**batch, "use_cache": False}  # no KV cache in training (a cache also hides a packed batch's rows)
    trained = labels[:, 1:] != IGNORE                       # [B, L-1]: label t+1 is predicted at t
    weights, box = None, {}
    with around_forward if around_forward is not None else contextlib.nullcontext() as signals:
        if impl == "full":
            nll = token_nll(model(**batch).logits, ids)
        elif impl == "kept":  # the model's own head at the trained positions only: [N, V]
            logits = model(**batch, logits_to_keep=lm_loss.predicting(labels)).logits
            nll = lm_loss.scatter_nll(F.cross_entropy(logits.float(), ids[:, 1:][trained], reduction="none"), labels)
        else:  # chunked: no logits in the forward; the head and the loss over kept positions, chunk by chunk
            with lm_loss.captured_hidden(model) as box:
                model(**batch, logits_to_keep=torch.zeros_like(labels, dtype=torch.bool))
    if impl == "chunked":
        hidden, (head, softcap) = box["hidden"], lm_loss.head_of(model)   # [B, L, H]; [V, H]
        if select is not None:
            nll = lm_loss.scatter_nll(lm_loss.chunked_nll(hidden[:, :-1][trained], head, ids[:, 1:][trained],
                                                          softcap), labels)
            labels, weights = select(nll, labels, signals)
            trained = labels[:, 1:] != IGNORE
        if denominator is None:
            denominator = loss_denominator(labels, response_mask, loss_norm)
        w = (weights[:, 1:][trained] if weights is not None else trained[trained].float()) / denominator
        return lm_loss.linear_cross_entropy(hidden[:, :-1][trained], head, ids[:, 1:][trained], w, softcap)
    if select is not None:
        labels, weights = select(nll.detach(), labels, signals)
    return masked_loss(nll, labels, response_mask, loss_norm, weights, denominator)


def micro_batch_pieces(attention_mask: torch.Tensor, budget: int) -> list[tuple[list[int], int]]:
    """The pieces a right-padded micro-batch runs as under train.micro_batch_tokens=`budget`: (row indices, length
    of the piece's longest row) per piece, rows sorted by length, rows x length <= budget (a longer row alone)."""
    lengths = attention_mask.sum(1).tolist()
    return [(idx, int(max(lengths[i] for i in idx)))
            for idx in token_budget_batches(lengths, len(lengths), budget)]


def _trainer_class():
    from transformers import Trainer

    class MaskedTrainer(Trainer):
        """HF Trainer whose loss is `step_loss` (the one override: XTF's loss, where it counts)."""

        loss_norm = "kept"
        loss_impl = "chunked"
        selector = None                # an online method's xtf.online.Selector: per-batch labels / loss weights
        throughput = None              # Throughput: tokens and padding of every micro-batch
        watch = None                   # xtf.finite.LossWatch: the first step with a NaN / infinite loss
        loss_is_scaled_for_ga = False  # a per-micro-batch mean; Trainer divides by the accumulation steps
        micro_batch_tokens = 0         # train.micro_batch_tokens: > 0, a micro-batch runs in pieces (offline_loss)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, response_mask = inputs.pop("labels"), inputs.pop("response_mask")
            rows = inputs.pop("row", None)
            step = self.state.global_step
            if self.selector is None:
                loss = self.offline_loss(model, inputs, labels, response_mask)
            else:
                if self.throughput is not None:
                    self.throughput.count(inputs, labels)
                loss = step_loss(model, inputs, labels, response_mask, self.loss_norm, self.loss_impl,
                                 select=lambda nll, lab, signals: self.selector(signals, lab, nll, rows, step,
                                                                                self.state.max_steps),
                                 around_forward=self.selector.capture(model, {**inputs,
                                                                              "response_mask": response_mask,
                                                                              "step": step}))
            if self.watch is not None:
                self.watch.see(loss, step + 1)  # global_step counts the completed steps
            return (loss, None) if return_outputs else loss

        def offline_loss(self, model, inputs, labels, response_mask):
            """The micro-batch's loss; under micro_batch_tokens, piece by piece (micro_batch_pieces): every piece
            but the last is backpropagated here (its activations freed), the last by HF's training_step, which
            gets the sum of the pieces' losses (each over the micro-batch's D) and divides it by the accumulation
            steps: the same loss and gradient as the whole micro-batch (xtf.validate: one process, offline
            methods, no packing)."""
            mask = inputs.get("attention_mask")
            pieces = micro_batch_pieces(mask, self.micro_batch_tokens) if self.micro_batch_tokens else []
            if len(pieces) <= 1:
                if self.throughput is not None:
                    self.throughput.count(inputs, labels)
                return step_loss(model, inputs, labels, response_mask, self.loss_norm, self.loss_impl)
            denominator = loss_denominator(labels, response_mask, self.loss_norm)
            done = torch.zeros((), device=labels.device)
            for k, (idx, length) in enumerate(pieces):
                piece = {key: value[idx, :length] for key, value in inputs.items()}
                if self.throughput is not None:
                    self.throughput.count(piece, labels[idx, :length])
                loss = step_loss(model, piece, labels[idx, :length], response_mask[idx, :length], self.loss_norm,
                                 self.loss_impl, denominator=denominator)
                if k < len(pieces) - 1:
                    self.accelerator.backward(loss / self.current_gradient_accumulation_steps)
                    done = done + loss.detach()
            return loss + done

        def log(self, logs, *args, **kwargs):
            if self.watch is not None:  # before anything logs or saves a step trained on a NaN (xtf.finite)
                self.watch.check(logs, self.state.global_step, self.state.max_steps,
                                 self.accelerator.optimizer_step_was_skipped)
            if self.selector is not None and "loss" in logs:  # the online method's kept fraction since the last log
                kept = self.selector.kept_fraction_since_log(self.state.global_step)
                if kept is not None:
                    logs["kept_fraction"] = kept
            return super().log(logs, *args, **kwargs)

    return MaskedTrainer


class Throughput:
    """Tokens through the model in training: real (non-pad) tokens, padded slots and trained labels per micro-batch;
    tokens/s over the training wall time (this process; summed over ranks in a distributed run)."""

    def __init__(self):
        self.tokens = self.slots = self.trained = 0  # ints, or device tensors: no host sync per micro-batch

    def count(self, inputs: dict, labels: torch.Tensor) -> None:
        mask = inputs.get("attention_mask")
        self.tokens += mask.sum() if mask is not None else inputs["input_ids"].numel()
        self.slots += inputs["input_ids"].numel()
        self.trained += (labels != IGNORE).sum()

    def record(self, seconds: float) -> dict:
        tokens, slots, trained = distributed.sum_over_ranks([float(self.tokens), float(self.slots),
                                                             float(self.trained)])
        return {"tokens": int(tokens), "padded_slots": int(slots), "trained_tokens": int(trained),
                "padding_fraction": round(1 - tokens / slots, 4) if slots else 0.0,
                "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 else None}


def _loss_recorder(history: list[dict], wandb_run, selector=None, keep: int = 2):
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            ckpt = Path(args.output_dir) / f"{checkpoints.PREFIX}{state.global_step}"
            if selector is not None:  # an online method's books travel with the checkpoint (resume)
                selector.save(ckpt)
            distributed.barrier()  # every rank's files (its RNG state, its shards) are written
            if state.is_world_process_zero:  # the manifest, last; then the older checkpoints go (xtf.checkpoints)
                checkpoints.seal(ckpt, keep)

        def on_step_end(self, args, state, control, **kwargs):
            # Also log at every checkpoint and at the last step (HF logs only every logging_steps), so that the
            # loss history a checkpoint keeps covers every step up to it: train_loss is computed from that history
            # (`train_loss`), identically for a resumed and an uninterrupted run.
            if control.should_save or state.global_step >= state.max_steps:
                control.should_log = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                entry = _loss_entry(state.global_step, logs)
                history.append(entry)
                if wandb_run is not None:
                    wandb_run.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=state.global_step)

    return LossRecorder()


def train_loss(history: list[dict]) -> float | None:
    """Mean loss over every optimiser step, from the loss history (each entry: the mean over the steps since the
    previous entry, so it weighs by that many steps). The history comes from the checkpoints' trainer_state.json
    plus this process's logs, so a resumed run gets the same value as an uninterrupted one (HF's own
    `training_loss` covers only the steps of the last process: 0.0 when a run resumes from its final checkpoint)."""
    total, steps, previous = 0.0, 0, 0
    for h in history:
        if not math.isfinite(h["loss"]):  # xtf.finite: never a mean over a NaN, never a silent None instead
            raise NonFiniteError(f"the training loss logged at step {h['step']} is {h['loss']}")
        total += h["loss"] * (h["step"] - previous)
        steps += h["step"] - previous
        previous = h["step"]
    return total / steps if steps else None


def finetune(model, tokenizer, rows: list[dict], keeps: list[np.ndarray], train_cfg: TrainConfig,
             model_cfg: ModelConfig, epochs_factor: int, seed: int, out_dir: Path, wandb_run=None, selector=None):
    """Fine-tune `model` on rows with labels from `keeps`; resumes from the newest checkpoint in out_dir whose
    checksum manifest matches (xtf.checkpoints). A NaN or infinite loss stops it, naming the step (xtf.finite).

    Returns (model ready for evaluation, info dict with loss history, steps and resume point). Rows whose
    keep mask is empty must already have been removed by the caller (and counted). With `selector` (an online
    method's xtf.online.Selector, built for these rows) every micro-batch's labels / loss weights come from it, and
    info["online"] records its kept fraction per step."""
    if train_cfg.mode == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=train_cfg.lora_r, lora_alpha=train_cfg.lora_alpha, lora_dropout=train_cfg.lora_dropout,
                          target_modules=list(model_cfg.lora_target_modules), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    dataset = [
        {"input_ids": list(r["input_ids"]), "labels": make_labels(r["input_ids"], k),
         "response_mask": [int(m) for m in r["response_mask"]]}
        for r, k in zip(rows, keeps)
    ]
    if selector is not None:
        for i, row in enumerate(dataset):
            row["row"] = i
        selector.bind(rows, model)
    ckpt_dir = out_dir / "checkpoints"
    on_gpu = next(model.parameters()).device.type == "cuda"
    loss_impl = train_cfg.loss_impl
    if loss_impl == "chunked" and distributed.runtime().strategy in ("fsdp", "deepspeed"):
        loss_impl = "kept"  # sharded engines gather a weight only for the forward that uses it: the head stays in it
    args = _training_arguments(train_cfg, model_cfg, model, ckpt_dir, epochs_factor, seed, on_gpu)
    history: list[dict] = []
    trainer = _trainer_class()(model=model, args=args, train_dataset=dataset,
                               data_collator=Collator(tokenizer.pad_token_id, packed=train_cfg.packing),
                               callbacks=[_loss_recorder(history, wandb_run, selector, train_cfg.save_total_limit)])
    trainer.loss_norm, trainer.loss_impl = train_cfg.loss_norm, loss_impl
    trainer.micro_batch_tokens = train_cfg.micro_batch_tokens
    trainer.selector, trainer.throughput, trainer.watch = selector, Throughput(), LossWatch()
    # Rank 0 checks (and removes broken) checkpoints alone, the others take its answer: no rank reads a checkpoint
    # another is deleting.
    resume = distributed.broadcast(last_checkpoint(ckpt_dir) if distributed.is_main() else None)
    if resume:
        log.info("resuming fine-tuning from %s", resume)
        history.extend(_history_from_checkpoint(Path(resume)))
        if selector is not None:
            selector.load(Path(resume))
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - started
    steps = trainer.state.global_step
    history = sorted({h["step"]: h for h in history}.values(), key=lambda h: h["step"])
    info = {
        "steps": steps,
        "epochs": train_cfg.epochs * epochs_factor,
        "resumed_from_step": int(Path(resume).name.split("-")[-1]) if resume else 0,
        "train_loss": train_loss(history),
        "loss_history": history,
        "rows": len(dataset),
        "loss_impl": loss_impl,
        "micro_batch_tokens": train_cfg.micro_batch_tokens,
        # This process's steps only (a resumed run: the steps after the resume point).
        "throughput": trainer.throughput.record(seconds),
        **({"online": selector.record()} if selector is not None else {}),
    }
    model = trainer.model
    if train_cfg.mode == "lora":
        model = model.merge_and_unload()  # plain model for evaluation: faster generation, same outputs
    model.eval()
    return model, info


def _training_arguments(train_cfg: TrainConfig, model_cfg: ModelConfig, model, ckpt_dir: Path, epochs_factor: int,
                        seed: int, on_gpu: bool):
    """The HF TrainingArguments of `finetune`."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=train_cfg.epochs * epochs_factor,
        learning_rate=train_cfg.lr,
        weight_decay=train_cfg.weight_decay,
        warmup_steps=train_cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=train_cfg.lr_scheduler,
        max_grad_norm=train_cfg.max_grad_norm,
        save_strategy="steps",
        save_steps=train_cfg.save_steps,
        save_total_limit=None,  # xtf removes old checkpoints itself, once the new one is sealed (xtf.checkpoints)
        logging_steps=train_cfg.logging_steps,
        logging_nan_inf_filter=False,  # HF would log a finite stand-in for a NaN loss; xtf fails (xtf.finite)
        seed=seed,
        data_seed=seed,  # the data order is shuffled per seed
        report_to=[],    # W&B is mirrored by our own callback, into the run record's W&B run
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not on_gpu,
        optim="adamw_torch",  # the fused variant differs numerically across devices; keep runs comparable
        # Batches of rows of similar length (less padding; another data order, so in the run id when on).
        train_sampling_strategy="group_by_length" if train_cfg.group_by_length else "random",
        # Per-device batch x accumulation for this world size, mixed precision, DDP / FSDP / DeepSpeed (dist.*).
        **distributed.trainer_kwargs(train_cfg, model_cfg, model, on_gpu),
    )


def _history_from_checkpoint(ckpt: Path) -> list[dict]:
    """Loss entries logged before the checkpoint we resume from (kept in its trainer_state.json)."""
    state = ckpt / "trainer_state.json"
    if not state.is_file():
        return []
    logs = json.loads(state.read_text()).get("log_history", [])
    return [_loss_entry(e["step"], e) for e in logs if "loss" in e]


def _loss_entry(step: int, logs: dict) -> dict:
    return {"step": step, "loss": float(logs["loss"]), "lr": float(logs.get("learning_rate", 0)),
            **({"kept_fraction": float(logs["kept_fraction"])} if "kept_fraction" in logs else {})}
