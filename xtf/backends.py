"""Which evaluation backend can run here, checked before any work (xtf.validate): eval.backend=hf always; vllm needs
an lm-eval task, the vllm package and a CUDA GPU. Kept apart from xtf.lmeval so that validation does not import
lm-eval or transformers (nor torch, unless eval.backend=vllm asks whether CUDA is there)."""

from __future__ import annotations

import importlib.util

from xtf.errors import ConfigError

VLLM_INSTALL = "pip install vllm"


def check_backend(backend: str, evaluation: str, task_name: str, device: str = "auto") -> None:
    """eval.backend=vllm needs an lm-eval task, the vllm package and a CUDA GPU; fail naming what is missing
    (before any work: xtf.validate.validate calls this)."""
    if backend == "hf":
        return
    if evaluation != "lm_eval":
        raise ConfigError(f"eval.backend={backend} runs lm-eval tasks only (gsm8k, medqa, pubmedqa); task={task_name} "
                          f"is evaluated by xtf itself ({evaluation}): use eval.backend=hf")
    import torch  # heavy: loaded only for eval.backend=vllm, so that validating any other config never loads it

    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append(f"the vllm package is not installed ({VLLM_INSTALL}, in this environment)")
    if not torch.cuda.is_available() or device in ("cpu", "mps"):
        missing.append("vLLM needs a CUDA GPU and " + ("device=" + device + " was asked" if device in ("cpu", "mps")
                                                       else "none is visible here (torch.cuda.is_available() is "
                                                            "False)"))
    if missing:
        raise ConfigError(f"eval.backend={backend} cannot run here: " + "; ".join(missing)
                          + ". Use eval.backend=hf (the default) on this machine.")
