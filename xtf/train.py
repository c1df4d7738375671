"""Fine-tuning with masked answer tokens: HF Trainer (checkpoints, resume, seeded shuffling, progress bars)
plus PEFT for LoRA. XTF's own parts are only the labels and the loss normalisation, both written here once.

    labels[t] = input_ids[t] if keep[t] else -100              (make_labels; the only conversion)
    nll[t]    = -log p(input_ids[t] | input_ids[<t])           (token_nll; the only shift)
    loss      = sum_t nll[t]·[labels[t] != -100] / D,
        D = number of kept tokens in the micro-batch           (train.loss_norm = "kept", what HF does)
        D = number of answer tokens in the micro-batch         (train.loss_norm = "answer": masking a token
                                                                 lowers the step size instead of re-weighting
                                                                 the remaining tokens)
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from xtf import distributed
from xtf.config import ModelConfig, TrainConfig

log = logging.getLogger(__name__)
IGNORE = -100
TRAIN_VERSION = 1  # bump when the loss or the data order changes for the same config


def token_nll(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Per-token negative log-likelihood aligned to input_ids (xtf.data convention).

    logits: [B, L, V] (logits[:, t] predict token t+1); input_ids: [B, L] → nll: [B, L] float32, where
    nll[:, t] = -log softmax(logits[:, t-1])[input_ids[:, t]] and nll[:, 0] = 0 (nothing predicts token 0).
    This is the one place where the shift between tokens and logits happens."""
    b, length, v = logits.shape
    nll = F.cross_entropy(logits[:, :-1].reshape(-1, v), input_ids[:, 1:].reshape(-1), reduction="none")
    return torch.cat([nll.new_zeros(b, 1), nll.view(b, length - 1)], dim=1).float()


def make_labels(input_ids: list[int] | np.ndarray, keep: np.ndarray) -> list[int]:
    """labels = input_ids where keep else -100: the only place a keep mask becomes labels."""
    ids = np.asarray(input_ids)
    return np.where(np.asarray(keep, dtype=bool), ids, IGNORE).tolist()


def masked_loss(nll: torch.Tensor, labels: torch.Tensor, response_mask: torch.Tensor, loss_norm: str,
                weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean NLL of the kept tokens, normalised per `loss_norm` (see module docstring). Shapes [B, L]. `weights`
    (an online method's detached per-token loss weights, e.g. DFT's) multiply each kept token's NLL; the
    denominator stays a token count."""
    kept = (labels != IGNORE).float()
    denom = kept.sum() if loss_norm == "kept" else response_mask.float().sum()
    if weights is not None:
        kept = kept * weights
    return (nll * kept).sum() / denom.clamp(min=1.0)


class Collator:
    """Right-pads rows {input_ids, labels, response_mask} into a batch; padding is never trained on."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
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


def _trainer_class():
    from transformers import Trainer

    class MaskedTrainer(Trainer):
        """HF Trainer whose loss is `masked_loss` (the one override: XTF's loss normalisation)."""

        loss_norm = "kept"
        selector = None                # an online method's xtf.online.Selector: per-batch labels / loss weights
        loss_is_scaled_for_ga = False  # a per-micro-batch mean; Trainer divides by the accumulation steps

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels, response_mask = inputs.pop("labels"), inputs.pop("response_mask")
            rows = inputs.pop("row", None)
            if self.selector is None:
                outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
                nll = token_nll(outputs.logits, inputs["input_ids"])
                loss = masked_loss(nll, labels, response_mask, self.loss_norm)
                return (loss, outputs) if return_outputs else loss
            step = self.state.global_step
            batch = {**inputs, "response_mask": response_mask, "step": step}
            with self.selector.capture(model, batch) as signals:
                outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
            nll = token_nll(outputs.logits, inputs["input_ids"])
            labels, weights = self.selector(signals, labels, nll, rows, step, self.state.max_steps)
            loss = masked_loss(nll, labels, response_mask, self.loss_norm, weights)
            return (loss, outputs) if return_outputs else loss

        def log(self, logs, *args, **kwargs):
            if self.selector is not None and "loss" in logs:  # the online method's kept fraction since the last log
                kept = self.selector.kept_fraction_since_log(self.state.global_step)
                if kept is not None:
                    logs["kept_fraction"] = kept
            return super().log(logs, *args, **kwargs)

    return MaskedTrainer


def _loss_recorder(history: list[dict], wandb_run, selector=None):
    from transformers import TrainerCallback

    class LossRecorder(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if selector is not None:  # an online method's books travel with the checkpoint (resume)
                selector.save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

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


def checkpoint_problem(ckpt: Path) -> str | None:
    """Why `ckpt` cannot be resumed from, or None. HF Trainer writes trainer_state.json after the weights and the
    optimizer state, so a checkpoint without it was cut short by a kill. Files can also be truncated afterwards
    (a full disk, a copy cut short): every safetensors file must open (its header covers the file exactly) and
    every torch file (optimizer, scheduler, RNG state: zip archives) must have its index, which is written last.
    Both checks read headers only, not the tensors."""
    from safetensors import safe_open

    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return "no readable trainer_state.json"
    for f in sorted(ckpt.iterdir()):
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), framework="pt"):
                    pass
            elif f.suffix in (".pt", ".pth", ".bin"):
                with zipfile.ZipFile(f):
                    pass
            elif f.suffix == ".json":
                json.loads(f.read_text())
        except Exception as e:  # noqa: BLE001 - any failure to open means "cannot resume from this"
            return f"{f.name} does not load ({type(e).__name__}: {str(e)[:120]})"
    return None


def last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest checkpoint in ckpt_dir that loads (`checkpoint_problem`). A newer one that does not is removed
    with a warning, and the previous complete one is used instead: a relaunch never fails on a broken checkpoint."""
    if not ckpt_dir.is_dir():
        return None
    found = sorted((p for p in ckpt_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ckpt in found:
        problem = checkpoint_problem(ckpt)
        if problem is None:
            return str(ckpt)
        log.warning("removing checkpoint %s, which cannot be resumed from (%s); falling back to the previous one",
                    ckpt, problem)
        shutil.rmtree(ckpt, ignore_errors=True)
    return None


def train_loss(history: list[dict]) -> float | None:
    """Mean loss over every optimiser step, from the loss history (each entry: the mean over the steps since the
    previous entry, so it weighs by that many steps). The history comes from the checkpoints' trainer_state.json
    plus this process's logs, so a resumed run gets the same value as an uninterrupted one (HF's own
    `training_loss` covers only the steps of the last process: 0.0 when a run resumes from its final checkpoint)."""
    total, steps, previous = 0.0, 0, 0
    for h in history:
        total += h["loss"] * (h["step"] - previous)
        steps += h["step"] - previous
        previous = h["step"]
    return total / steps if steps and math.isfinite(total) else None


def finetune(model, tokenizer, rows: list[dict], keeps: list[np.ndarray], train_cfg: TrainConfig,
             model_cfg: ModelConfig, epochs_factor: int, seed: int, out_dir: Path, wandb_run=None, selector=None):
    """Fine-tune `model` on rows with labels from `keeps`; resumes from the newest checkpoint in out_dir.

    Returns (model ready for evaluation, info dict with loss history, steps and resume point). Rows whose
    keep mask is empty must already have been removed by the caller (and counted). With `selector` (an online
    method's xtf.online.Selector, built for these rows) every micro-batch's labels / loss weights come from it, and
    info["online"] records its kept fraction per step."""
    from transformers import TrainingArguments

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
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=train_cfg.epochs * epochs_factor,
        learning_rate=train_cfg.lr,
        weight_decay=train_cfg.weight_decay,
        warmup_steps=train_cfg.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        lr_scheduler_type=train_cfg.lr_scheduler,
        max_grad_norm=train_cfg.max_grad_norm,
        save_strategy="steps",
        save_steps=train_cfg.save_steps,
        save_total_limit=train_cfg.save_total_limit,
        logging_steps=train_cfg.logging_steps,
        seed=seed,
        data_seed=seed,  # the data order is shuffled per seed
        report_to=[],    # W&B is mirrored by our own callback, into the run record's W&B run
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=not on_gpu,
        optim="adamw_torch",  # the fused variant differs numerically across devices; keep runs comparable
        # Per-device batch x accumulation for this world size, mixed precision, DDP / FSDP / DeepSpeed (dist.*).
        **distributed.trainer_kwargs(train_cfg, model_cfg, model, on_gpu),
    )
    history: list[dict] = []
    trainer = _trainer_class()(model=model, args=args, train_dataset=dataset,
                               data_collator=Collator(tokenizer.pad_token_id),
                               callbacks=[_loss_recorder(history, wandb_run, selector)])
    trainer.loss_norm = train_cfg.loss_norm
    trainer.selector = selector
    resume = last_checkpoint(ckpt_dir)
    if resume:
        log.info("resuming fine-tuning from %s", resume)
        history.extend(_history_from_checkpoint(Path(resume)))
        if selector is not None:
            selector.load(Path(resume))
    trainer.train(resume_from_checkpoint=resume)
    steps = trainer.state.global_step
    history = sorted({h["step"]: h for h in history}.values(), key=lambda h: h["step"])
    info = {
        "steps": steps,
        "epochs": train_cfg.epochs * epochs_factor,
        "resumed_from_step": int(Path(resume).name.split("-")[-1]) if resume else 0,
        "train_loss": train_loss(history),
        "loss_history": history,
        "rows": len(dataset),
        **({"online": selector.record()} if selector is not None else {}),
    }
    model = trainer.model
    if train_cfg.mode == "lora":
        model = model.merge_and_unload()  # plain model for evaluation: faster generation, same outputs
    model.eval()
    return model, info


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
