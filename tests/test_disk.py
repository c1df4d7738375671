"""A disk the run would fill fails before any work, naming the folder (xtf/disk.py); the report is written whole or
not at all (xtf.explain.write_report)."""

from __future__ import annotations

import collections
import errno

import pytest
from conftest import compose
from test_explain import make_run

from xtf import disk, explain
from xtf.config import ConfigError
from xtf.pipeline import run
from xtf.validate import validate

Usage = collections.namedtuple("Usage", "total used free")


def test_a_nearly_full_disk_fails_before_any_work_naming_the_folder(run_overrides, tmp_path, monkeypatch):
    """The issue's case: a 64 kB results folder passed the write check, then the run trained and evaluated and
    died in the report writer. Now it stops before tokenising, naming the folder, what is free and what it needs."""
    monkeypatch.setattr(disk.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 64_000, 64_000))
    cfg = validate(compose([*run_overrides, "model=tiny", "model.tiny=random", "task=synth", "method=normal",
                            "task.options.n_train=16", "task.options.n_test=4"]))
    with pytest.raises(ConfigError) as err:
        run(cfg)
    said = str(err.value)
    assert "paths.results_dir=" in said and "64.0 kB free" in said and "checkpoints" in said, said
    assert not list((tmp_path / "outputs").rglob("checkpoint-*")) and not list(tmp_path.rglob("results.json"))


def test_the_estimate_follows_what_the_run_writes(tmp_path):
    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "model.safetensors").write_bytes(b"\0" * 10**6)
    (weights / "config.json").write_text("{}")

    def needs(*overrides):
        cfg = validate(compose(["model=tiny", "task=synth", *overrides]))
        return {k: sum(b for _, b in v) for k, v in disk.estimate(cfg, str(weights), 100).items()}

    lora, full = needs("method=normal", "train=lora"), needs("method=normal", "train=full")
    assert full["paths.outputs_dir"] >= 3 * 3 * 10**6 > lora["paths.outputs_dir"] > 0  # 3 checkpoints x 3 copies
    assert needs("method=xtf", "score_only=true")["paths.outputs_dir"] == 0  # nothing trained
    exported = needs("method=normal", "export.enabled=true")["paths.results_dir"]
    assert exported > lora["paths.results_dir"] >= disk.RUN_FILES_FLOOR


def test_a_report_that_fails_midway_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    run_dir = make_run(tmp_path / "run")
    first = explain.write_report(run_dir).read_text()

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(explain, "plot_histogram", disk_full)
    with pytest.raises(OSError, match="No space"):
        explain.write_report(run_dir)
    assert (run_dir / "explain" / "index.html").read_text() == first
    assert sorted(p.name for p in run_dir.iterdir() if p.name.startswith(".explain")) == []
