"""The README's quick-start commands work as written: each `python run.py …` line of the quick-start section
runs (in a fresh process, with the environment the README tells the reader to set), with small limits appended
so the test takes minutes, not the quickstart's full size. The quick-start section is everything above the
first `## ` heading. Marked `real`: the quickstart line runs the packaged SmolLM2-135M (make test-real)."""

import os
import re
import shlex
import subprocess
import sys

import pytest
from conftest import ROOT, require_shared_data

pytestmark = pytest.mark.real

SMALL = ["data.limit=4", "data.eval_limit=2", "eval.max_new_tokens=8", "eval.batch_size=2", "train.batch_size=2",
         "train.save_steps=1000", "wandb.mode=disabled"]


def quickstart_commands() -> list[str]:
    """The `python run.py` lines of the fenced bash blocks above the README's first `## ` heading."""
    text = (ROOT / "README.md").read_text()
    top = text.split("\n## ", 1)[0]
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", top, flags=re.S):
        for line in block.splitlines():
            command = line.split("#", 1)[0].strip()
            if command.startswith("python run.py"):
                lines.append(command)
    return lines


def test_the_quickstart_section_has_the_two_make_commands_and_run_lines():
    top = (ROOT / "README.md").read_text().split("\n## ", 1)[0]
    assert re.search(r"^make run\b", top, flags=re.M) and re.search(r"^make test\b", top, flags=re.M)
    assert any("preset=quickstart" in c for c in quickstart_commands())


@pytest.mark.parametrize("command", quickstart_commands())
def test_quickstart_command_runs_as_written(command, tmp_path, session_cache):
    data = require_shared_data()
    argv = shlex.split(command)
    assert argv[:2] == ["python", "run.py"]
    env = {**os.environ, "XTF_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "WANDB_MODE": "offline"}
    paths = [f"paths.results_dir={tmp_path / 'results'}", f"paths.outputs_dir={tmp_path / 'outputs'}",
             f"paths.cache_dir={session_cache}"]
    done = subprocess.run([sys.executable, *argv[1:], *SMALL, *paths], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "[xtf] results:" in done.stdout
    assert list((tmp_path / "results").rglob("results.json"))
