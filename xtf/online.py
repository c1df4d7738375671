"""Online token selection: rules that choose each batch's trained tokens inside the training step.

    python run.py model=tiny_llama method=sstoken data.limit=32      # any online method, end to end

Offline methods (xtf.masking) return keep masks before training. An *online* method decides per batch, from
what the model being trained does with it. One interface for all of them:

    select(step: Step, method: MethodConfig) -> (labels [B, L], weights [B, L] float | None)

`Step` holds the batch's labels after the offline mask (-100 where not trainable), the current model's
per-token NLL from the training forward pass (detached), the per-token arrays the method declares in `needs`
(computed by xtf.scoring before training and cached: base-model "nll", reference "ref_nll", ...), the per-step
signals it declares in `signals` (computed during the step by its `signal_providers`: "prompt_attention",
"history_nll" of xtf.methods.sstoken_step) and
the training progress (optimiser steps done / total, for warm-ups). A rule returns labels whose trainable tokens
are a subset of the input's, and optionally per-token loss weights (detached). Everything is aligned to
input_ids (xtf.data); xtf.train.masked_loss turns it into the loss.

An online method is a registry entry of kind "online" (xtf.methods: its module declares `needs`, `signals`, and
names `select` and the signals' providers by their "module:attribute" paths, torch code kept in its
xtf/methods/<name>_step.py and imported here when training starts; its offline mask keeps every answer token), and
the pipeline hands `selector(method, scores)` to xtf.train.finetune: adding an online method touches its own
modules, nothing here.

`Selector` is what the trainer calls once per micro-batch. It builds the Step, records the kept fraction per
optimiser step (the training record's history and W&B, through the Trainer's log) and how often each token of
each row was selected (saved with the run; the explanation report shows it), and checkpoints both with the
training state, so a resumed run records what an uninterrupted one does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from xtf import methods
from xtf.lm_loss import IGNORE

ONLINE_VERSION = 2  # bump when an online rule or its bookkeeping changes behaviour (2: protected tokens)


@dataclass
class Step:
    labels: torch.Tensor                    # [B, L] long, after the offline mask
    nll: torch.Tensor                       # [B, L] float, current model, detached (token_nll: nll[:, 0] = 0)
    cached: dict[str, torch.Tensor]         # name → [B, L] float, from before training (zero-padded)
    signals: dict[str, torch.Tensor] = field(default_factory=dict)  # name → [B, L] float, this step
    progress: float = 0.0                   # optimiser steps done / total, in [0, 1]


# ------------------------------------------------------------------------------------------------- selector
def selection_shares(sel: Selector | None, rows: list[dict], trained: list[int]) -> dict | None:
    """{"share": per row of the set, aligned to input_ids, the share of the row's training steps in which each
    token was selected (DFT: its mean loss weight; NaN for rows not trained on), "visits": per row, the steps it
    was in} for the explanation report; None without an online method."""
    if sel is None:
        return None
    share = [np.full(len(r["input_ids"]), np.nan) for r in rows]
    visits = [0] * len(rows)
    for j, (i, s) in enumerate(zip(trained, sel.shares([rows[i] for i in trained]))):
        share[i], visits[i] = s, int(sel.visits[j])
    return {"share": share, "visits": visits}


def selector(method, scores: dict[str, list[np.ndarray]]) -> Selector | None:
    """The Selector of an online method (scores: the run's cached scores, one array per training row in the order
    given to finetune), or None for an offline one."""
    spec = methods.get(method.name)
    if spec.kind != "online":
        return None
    return Selector(method, spec, {name: scores[name] for name in methods.scores_needed(method)})


class Selector:
    """Applies an online rule per micro-batch and keeps its books (module docstring)."""

    STATE_FILE = "xtf_online.pt"

    def __init__(self, method, spec: methods.Method, cached: dict[str, list[np.ndarray]]):
        self.method = method
        # The rule and its signal providers, imported here from the paths the method names (its module imports no
        # torch, so that validating a config never loads it; xtf.methods.registry.resolve).
        self.rule = methods.resolve(spec.select)
        self.signal_names = tuple(spec.signals(method))
        self.providers = {name: methods.resolve(spec.signal_providers[name]) for name in self.signal_names}
        self.cached = cached
        self.selected: list[np.ndarray] = []                  # per row: Σ over visits of the keep mask (or weight)
        self.visits = np.zeros(0, dtype=np.int64)             # per row: how many steps it was in
        self.per_step: dict[int, list[float]] = {}            # optimiser step → [kept, trainable]
        self.protected: list[np.ndarray] = []                 # per row: the task's protected tokens (bind)
        self._logged_through = 0
        self._providers = None

    def bind(self, rows: list[dict], model) -> None:
        """Size the books for the training rows and build the signal providers for `model` (before training)."""
        self.selected = [np.zeros(len(r["input_ids"])) for r in rows]
        # The task's answer format (xtf.data `protected`) stays trainable whatever the rule selects
        # (method.protect_answer, as for the offline methods of xtf.masking).
        on = getattr(self.method, "protect_answer", False)
        self.protected = [np.asarray(r["protected"] if on and "protected" in r else np.zeros(len(r["input_ids"])),
                                     dtype=np.float32) for r in rows]
        self.visits = np.zeros(len(rows), dtype=np.int64)
        self._providers = {name: self.providers[name](model, self.method) for name in self.signal_names}

    @contextlib.contextmanager
    def capture(self, model, batch: dict[str, torch.Tensor]):
        """Around the training forward pass: yields a dict name → callable giving that signal afterwards."""
        with contextlib.ExitStack() as stack:
            got = {name: stack.enter_context(p.capture(model, batch)) for name, p in (self._providers or {}).items()}
            yield got

    def __call__(self, got: dict, labels: torch.Tensor, nll: torch.Tensor, rows: torch.Tensor, step: int,
                 max_steps: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(labels, weights) for this micro-batch; `step` = optimiser steps done before it."""
        length = labels.shape[1]
        cached = {name: self._pad([arrays[int(r)] for r in rows], length, labels.device)
                  for name, arrays in self.cached.items()}
        signals = {name: fn() for name, fn in got.items()}
        new, weights = self.rule(Step(labels, nll.detach(), cached, signals, step / max(max_steps, 1)), self.method)
        trainable = labels != IGNORE
        if self.protected:
            guard = self._pad([self.protected[int(r)] for r in rows], length, labels.device) > 0
            new = torch.where(guard & trainable, labels, new)
        if torch.any((new != IGNORE) & ~trainable):
            raise AssertionError(f"online rule {self.method.name} made a non-trainable token trainable")
        chosen = (weights * trainable) if weights is not None else (new != IGNORE).float()
        books = self.per_step.setdefault(step + 1, [0.0, 0.0])
        books[0] += float(chosen.sum())
        books[1] += float(trainable.sum())
        chosen_np = chosen.float().cpu().numpy()
        for j, r in enumerate(rows.tolist()):
            n = self.selected[r].size
            self.selected[r] += chosen_np[j, :n]
            self.visits[r] += 1
        return new, weights

    @staticmethod
    def _pad(arrays: list[np.ndarray], length: int, device) -> torch.Tensor:
        out = np.zeros((len(arrays), length), dtype=np.float32)
        for j, a in enumerate(arrays):
            out[j, : min(len(a), length)] = a[:length]
        return torch.from_numpy(out).to(device)

    # --------------------------------------------------------------------------------------- records
    def kept_fraction_since_log(self, step: int) -> float | None:
        """Kept / trainable tokens over the optimiser steps since the previous log, through `step`."""
        done = [v for s, v in self.per_step.items() if self._logged_through < s <= step]
        self._logged_through = step
        trainable = sum(v[1] for v in done)
        return sum(v[0] for v in done) / trainable if trainable else None

    def record(self) -> dict:
        """The training record's `online` section."""
        kept, trainable = (sum(v[i] for v in self.per_step.values()) for i in (0, 1))
        return {"method": self.method.name, "version": ONLINE_VERSION, "signals": list(self.signal_names),
                "kept_fraction": kept / trainable if trainable else None,
                "kept_fraction_per_step": [[s, round(v[0] / v[1], 6) if v[1] else None]
                                           for s, v in sorted(self.per_step.items())]}

    def shares(self, rows: list[dict]) -> list[np.ndarray]:
        """Per row (aligned to input_ids): the share of the row's training steps in which each token was selected
        (for DFT: its mean loss weight); NaN for a row never visited."""
        return [sel / v if v else np.full(len(row["input_ids"]), np.nan)
                for sel, v, row in zip(self.selected, self.visits, rows)]

    def save(self, folder: Path) -> None:
        """The books (and the signal providers' state, e.g. the EMA history) into a checkpoint folder."""
        state = {"selected": self.selected, "visits": self.visits, "per_step": self.per_step,
                 "providers": {name: p.state() for name, p in (self._providers or {}).items()}}
        torch.save(state, Path(folder) / self.STATE_FILE)

    def load(self, folder: Path) -> None:
        path = Path(folder) / self.STATE_FILE
        if not path.is_file():
            return
        state = torch.load(path, weights_only=False)
        self.selected, self.visits, self.per_step = state["selected"], state["visits"], state["per_step"]
        for name, p in (self._providers or {}).items():
            p.load_state(state["providers"].get(name))
        self._logged_through = max(self.per_step, default=0)
