"""DA (data augmentation, Dai et al. 2025; a column of the XTF paper's Table 1): each training answer is paraphrased
by a generator LM, and a paraphrase is added as a new example when the task's answer extractor reads the same final
answer from it; then every answer token of the augmented set is trained on. Its keys: method.da.* (DAConfig); the
generation itself is xtf.augment's (it loads models, so it is imported only when DA runs).

    python run.py method=da model=smollm2_135m task=gsm8k data.limit=8
"""

from __future__ import annotations

from xtf.errors import ConfigError
from xtf.methods.registry import Method


def augment(cfg, task, examples: list[dict], device) -> tuple[list[dict], dict]:
    """The examples with the kept paraphrases added, and the record's `augmentation` section (xtf.augment)."""
    from xtf import augment as generation  # transformers: not loaded while a config is only being validated

    return generation.paraphrase(cfg, task, examples, device)


def check(run, task_options) -> None:
    if run.method.da.n > 1 and run.method.da.temperature == 0:
        raise ConfigError("method.da.n > 1 needs method.da.temperature > 0: greedy paraphrases would be identical")


METHOD = Method(name="da", kind="augment", summary="add answer-preserving paraphrases, train on every answer token",
                keys=("da",), augment=augment, check=check,
                rows_factor=lambda method: 1 + method.da.n,          # the originals and n paraphrases of each
                generated_per_token=lambda method: method.da.n)      # n paraphrases generated per training token
METHODS = (METHOD,)
