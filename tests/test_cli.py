"""The installed commands (pyproject's [project.scripts]): `xtf` is `python run.py` from any folder, `xtf-export`
exports a finished run. Skips on a clone installed without them (not `make install`); required under CI=true.

    .venv/bin/python -m pytest -q tests/test_cli.py
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import IN_CI

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def command(name: str) -> str:
    path = BIN / name
    if not path.exists():
        msg = f"`{name}` is not installed in {BIN} (make install installs the package with its commands)"
        if IN_CI:
            pytest.fail(msg + " — required under CI=true")
        pytest.skip(msg)
    return str(path)


def test_xtf_help_works_outside_the_checkout(tmp_path):
    done = subprocess.run([command("xtf"), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("xtf: token-level noise filtering")
    assert "task: code, gsm8k, medqa, pubmedqa, sft, synth" in done.stdout


def test_xtf_reports_a_bad_key_as_run_py_does(tmp_path):
    done = subprocess.run([command("xtf"), "train.lrr=0.1"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2 and "unknown key 'train.lrr'" in done.stderr and "Traceback" not in done.stderr


def test_xtf_export_says_what_is_wrong_with_a_folder(tmp_path):
    done = subprocess.run([command("xtf-export"), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and "results.json" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_value_is_reported_before_the_pipeline_is_imported(tmp_path):
    """xtf.cli validates the config first: a typo is reported without loading the pipeline, torch or transformers
    (a minute on a busy machine; the method registry the validation asks imports no torch); -X importtime lists
    every module the process imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", str(ROOT / "run.py"), "train.loss_norm=sum"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    reported = done.stdout + done.stderr  # Hydra's job logging writes the one-line error to the console (stdout)
    assert "ConfigError: train.loss_norm='sum' is not allowed; choose one of ['kept', 'answer']" in reported
    imported = {line.rsplit("|", 1)[1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "xtf.validate" in imported  # the value was refused by the validation, not by the override check
    assert not {"xtf.pipeline", "xtf.train", "torch", "transformers"} & imported
