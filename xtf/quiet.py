"""A quiet console: known library warnings that tell a user of this harness nothing are silenced by their exact
message, in one place, each with the reason; a failed run's Hydra folder is removed (its error is on the
console and, in a sweep, in failed.json). XTF_KEEP_FAILED_OUTPUTS=1 keeps failed runs' Hydra and W&B folders.

    from xtf.quiet import silence_known_warnings
    silence_known_warnings()          # run.py, before a run

Elsewhere at their source: lm-eval's two "`pretrained` is a model object" warnings (xtf.lmeval_hf.make_lm) and W&B's
banner (xtf.results.wandb_mirror: one line instead of seven).
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

# (category, start of the exact message, why it is safe to ignore)
KNOWN_WARNINGS = [
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated",
     "peft reads model.is_gradient_checkpointing when it wraps a model for LoRA (every training run); transformers "
     "renamed the attribute. Nothing in xtf uses it; it goes away with a peft release that reads the new name."),
]


def silence_known_warnings() -> None:
    for category, message, _why in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def keep_failed_outputs() -> bool:
    return os.environ.get("XTF_KEEP_FAILED_OUTPUTS", "").lower() not in ("", "0", "false")


def remove_failed_outputs(folder: str | Path) -> None:
    """Remove a failed run's Hydra folder (outputs/hydra/<date>/<time>/), unless XTF_KEEP_FAILED_OUTPUTS=1."""
    if keep_failed_outputs():
        return
    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    for parent in (folder.parent, folder.parent.parent):  # <date>/ and hydra/ when nothing else is left in them
        if parent.name and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
