"""Whether the Hugging Face Hub answers, within seconds: asked before a download of weights (xtf.models) or of a
dataset (xtf.tasks.common), which would otherwise retry for minutes and then fail with a long trace. No xtf imports:
both the models and the tasks use it."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """A TCP connect to the Hub endpoint, bounded by `timeout_s` (a Hub call would otherwise wait ~30 s)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False
