"""No NaN or infinity is ever recorded as a result: the run fails, naming where it appeared.

A NaN loss poisons the weights at the next optimiser step, and everything after it is noise; HF Trainer's
default (logging_nan_inf_filter) even logs a finite stand-in for it. So training fails at the first log after
a non-finite micro-batch loss, naming its optimiser step (`LossWatch`), or a non-finite gradient norm at a
logged step; and `check_record` refuses a record whose metrics or training losses are not finite numbers,
before results.json could mark the run complete.
"""

from __future__ import annotations

import math

import torch


class NonFiniteError(RuntimeError):
    """A loss, gradient norm or metric is NaN or infinite: nothing is recorded."""


def first_nonfinite(value, where: str = "") -> tuple[str, float] | None:
    """(path, value) of the first NaN or infinite number in a nested dict / list / number, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if math.isfinite(value) else (where, value)
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in value.items())
    elif isinstance(value, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((bad for path, v in items if (bad := first_nonfinite(v, path)) is not None), None)


def check_record(metrics: dict | None, training: dict | None) -> None:
    """Raise NonFiniteError when an evaluation metric or a training loss is not a finite number."""
    for stage, section in (("evaluation", {"metrics": metrics or {}}),
                           ("training", {"training": {k: (training or {}).get(k)
                                                     for k in ("train_loss", "loss_history")}})):
        bad = first_nonfinite(section)
        if bad is not None:
            path, value = bad
            step = _step_of(training, path)
            raise NonFiniteError(f"{path} is {value} ({stage}{step}): the run is not recorded as complete; "
                                 "a non-finite number would make every mean and table built on it meaningless")


def _step_of(training: dict | None, path: str) -> str:
    if path.startswith("training.loss_history["):
        index = int(path.split("[", 1)[1].split("]", 1)[0])
        return f", logged at step {training['loss_history'][index].get('step')}"
    return ""


class LossWatch:
    """The first optimiser step whose micro-batch loss was NaN or infinite, kept on the loss's device: no host
    sync per micro-batch, one per log (`check`)."""

    def __init__(self):
        self.first: torch.Tensor | None = None  # 0-d int64; -1 while every loss was finite

    def see(self, loss: torch.Tensor, step: int) -> None:
        """`step`: the optimiser step the micro-batch belongs to (1-based: HF's global_step + 1 while it runs)."""
        if self.first is None:
            self.first = torch.full((), -1, dtype=torch.long, device=loss.device)
        bad = ~torch.isfinite(loss.detach()).all()
        self.first = torch.where(bad & (self.first < 0), torch.full_like(self.first, step), self.first)

    def check(self, logs: dict, step: int, max_steps: int, step_skipped: bool = False) -> None:
        """Raise NonFiniteError for a non-finite micro-batch loss since the start, or a non-finite logged loss or
        gradient norm. A gradient norm is allowed to be infinite on a step the optimiser skipped (fp16 loss
        scaling skips such steps by design)."""
        first = int(self.first.item()) if self.first is not None else -1
        if first >= 0:
            raise NonFiniteError(f"the training loss is NaN or infinite at optimiser step {first} (of {max_steps}): "
                                 "the run stops before that step's weights are saved or evaluated (a learning rate "
                                 "too high, or an overflow in half precision, are the usual causes)")
        for key in ("loss", "grad_norm"):
            value = logs.get(key)
            if key == "grad_norm" and step_skipped:
                continue
            if isinstance(value, (int, float)) and not math.isfinite(value):
                raise NonFiniteError(f"the logged {key} is {value} at optimiser step {step} (of {max_steps}): "
                                     "the run stops before that step's weights are saved or evaluated")
