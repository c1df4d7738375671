"""Shared test setup: offline environment, config composition, shared-data detection, a session cache."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

# Before anything imports transformers/datasets/wandb: never touch the network, never wait for a login.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One fixed thread count for every run.py a test launches (xtf.threads would otherwise choose one from the load at
# each launch): two launches that a test compares then run the same floating-point reductions.
os.environ.setdefault("OMP_NUM_THREADS", str(min(2, os.cpu_count() or 1)))

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
IN_CI = os.environ.get("CI", "").lower() == "true"


def load_script(name: str):
    """experiments/<name>.py imported as module `name` (the benchmark scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def shared_data_dir() -> Path | None:
    d = Path(os.environ.get("XTF_DATA_DIR", ROOT.parent / "shared" / "data"))
    return d if (d / "gsm8k" / "train.jsonl").is_file() else None


def require_shared_data() -> Path:
    """The shared benchmark folder; skips with a reason on a user's clone, fails under CI=true."""
    d = shared_data_dir()
    if d is None:
        msg = "../shared/data (real benchmark files) is absent; set XTF_DATA_DIR to run this test"
        if IN_CI:
            pytest.fail(msg + " — required under CI=true")
        pytest.skip(msg)
    return d


def compose(overrides: list[str] | None = None):
    """Compose conf/config.yaml with Hydra exactly as run.py does (no run, no chdir)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from xtf.config import register_schema

    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides or []))


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One cache dir per test session so tiny bases and tokenised data are built once and reused."""
    return tmp_path_factory.mktemp("xtf_cache")


@pytest.fixture
def run_overrides(tmp_path, session_cache) -> list[str]:
    """Overrides that send a run's files to tmp dirs and keep W&B off (tests of W&B turn it on themselves)."""
    return [
        f"paths.results_dir={tmp_path / 'results'}",
        f"paths.outputs_dir={tmp_path / 'outputs'}",
        f"paths.cache_dir={session_cache}",
        "wandb.mode=disabled",
    ]


def require_bwrap() -> None:
    """A working bubblewrap sandbox (xtf.sandbox); skips with the reason on a user's machine, fails under CI=true."""
    from xtf import sandbox

    ok, detail = sandbox.available()
    if not ok:
        msg = f"the bubblewrap sandbox is unavailable ({detail})"
        if IN_CI:
            pytest.fail(msg + " — required under CI=true (.ci/run installs bubblewrap)")
        pytest.skip(msg)


def reference_ri(model, ids: list[int]) -> np.ndarray:
    """DESIGN.md's RI on eager attentions of one unpadded sequence, averaged over all layers and heads:
    for token t, the mean over later queries q > t of (q + 1) · A[q, t] (NaN for the last token)."""
    import torch

    with torch.no_grad():
        att = model(torch.tensor([ids]), output_attentions=True).attentions   # layers × [1, H, L, L]
    a = torch.stack(att)[:, 0].double().mean(dim=(0, 1))                       # [L, L]
    n = len(ids)
    weighted = (torch.arange(n, dtype=torch.float64) + 1)[:, None] * a        # (q + 1) · A[q, t]
    ri = np.full(n, np.nan)
    for t in range(n - 1):
        ri[t] = weighted[t + 1:, t].mean().item()
    return ri
