"""The "Your own data" page (docs/own-data.md) works as written: its first bash block runs line by line (with `xtf` and
`xtf-export` from the environment, in a fresh folder that has the checkout's examples/), then its first Python
block trains with TRL on the exported folder — the one change: the Hub id of the model becomes the local converted
SmolLM2 folder, since the Hub is unreachable here. Marked `real` (SmolLM2-135M on a CPU: minutes).

    make test-real
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI, ROOT

pytestmark = pytest.mark.real
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
PAGE = ROOT / "docs" / "own-data.md"


def section() -> str:
    """The page above its first `## ` heading (the Export section below it has a Python block of its own)."""
    return PAGE.read_text().split("\n## ", 1)[0]


def bash_commands() -> list[str]:
    """The commands of the section's bash block, continuation lines joined, comments dropped."""
    block = re.search(r"```bash\n(.*?)```", section(), flags=re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [line.split(" #", 1)[0].strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_the_section_has_the_three_shapes_and_the_export_command():
    commands = bash_commands()
    assert len(commands) == 4 and commands[-1].startswith("xtf-export ")
    for shape in ("prompt_response.jsonl", "chat.jsonl", "alpaca.json"):
        assert any(f"examples/{shape}" in c for c in commands) and (ROOT / "examples" / shape).is_file()


def test_the_section_runs_as_written(tmp_path, session_cache):
    bindir = Path(sys.executable).parent
    if not (bindir / "xtf").exists():
        msg = f"the `xtf` command is not installed in {bindir} (make install)"
        if IN_CI:
            pytest.fail(msg + " — required under CI=true")
        pytest.skip(msg)
    try:
        import trl  # noqa: F401
    except ImportError:
        if IN_CI:
            pytest.fail("TRL is not installed — required under CI=true (make install-bench)")
        pytest.skip("TRL is not installed (make install-bench installs the bench extra)")
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "offline", "XTF_CACHE_DIR": str(session_cache)}
    for command in bash_commands():
        done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=1800)
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}{done.stderr[-3000:]}"
    for folder in ("clean_data", "clean_alpaca", "clean_data_again"):
        assert (tmp_path / folder / "dataset").is_dir() and (tmp_path / folder / "README.md").is_file()
    assert (tmp_path / "clean_data" / "data.parquet").read_bytes() == \
        (tmp_path / "clean_data_again" / "data.parquet").read_bytes()

    import json

    record = json.loads(next((tmp_path / "results" / "my_data").glob("*/results.json")).read_text())
    assert record["detection"], "examples/prompt_response.jsonl carries noise annotations: detection figures expected"
    code = re.search(r"```python\n(.*?)```", section(), flags=re.S).group(1)
    assert HUB_ID in code
    code = code.replace(HUB_ID, record["weights"])
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "smollm2-clean").is_dir()
    shutil.rmtree(tmp_path / "smollm2-clean")
