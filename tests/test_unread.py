"""An override the chosen configuration never reads is refused naming it (xtf/unread.py), from run.py and in an
experiment's cells; a key that is read passes."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, compose

from xtf import methods
from xtf.config import ConfigError
from xtf.unread import check_overrides_read, unread_reason
from xtf.validate import validate

REFUSED = [  # (overrides, the key named, words of the reason)
    (["model=tiny", "model.path=/weights"], "model.path=/weights", "builds its weights"),
    (["model=tiny", "model.gguf_file=m.gguf"], "model.gguf_file", "builds its weights"),
    (["model=smollm2_135m", "model.num_layers=2"], "model.num_layers=2", "tiny models only"),
    (["model=smollm2_135m", "model.path=/w", "model.hub_id=x/y"], "model.hub_id=x/y", "model.path=/w is loaded"),
    (["method=normal", "method.ri.k=1.0"], "method.ri.k=1.0", "not read by method=normal"),
    (["method=xtf", "method.attributes=[kn]", "method.ri.k=1.0"], "method.ri.k", "not read by method=xtf"),
    (["method=xtf", "method.keep_ratio=0.5"], "method.keep_ratio", "not read by method=xtf"),
    (["method=df", "method.reference_warmup=16"], "method.reference_warmup", "not read by method=df"),
    (["method=random", "method.match=null", "method.kn.threshold=0.5"], "method.kn.threshold", "method=random"),
    (["method=random", "method.ratio=0.5"], "method.ratio", "method=random"),  # match=xtf: its count, not ratio
    (["method=dft", "method.profit.threshold=0.5"], "method.profit.threshold", "not read by method=dft"),
    (["method=none", "train.lr=0.001"], "train.lr", "method=none evaluates the base model"),
    (["method=xtf", "score_only=true", "train.epochs=2"], "train.epochs", "score_only=true fine-tunes nothing"),
    (["train=full", "train.lora_r=4"], "train.lora_r", "train.mode=full"),
    (["task=synth", "eval.n_samples=4"], "eval.n_samples", "HumanEval"),
    (["eval.enabled=false", "eval.max_new_tokens=8"], "eval.max_new_tokens", "eval.enabled=false"),
    (["dist.zero_stage=2"], "dist.zero_stage", "dist.strategy=deepspeed"),
    (["wandb.mode=disabled", "wandb.project=p"], "wandb.project", "wandb.mode=disabled"),
]

READ = [  # overrides every key of which the run reads
    ["model=tiny", "model.num_layers=2"],
    ["model=smollm2_135m", "model.path=/w"],
    ["method=xtf", "method.ri.k=1.0", "method.kn.threshold=0.9", "method.exempt_special=false"],
    ["method=tc", "method.keep_ratio=0.5", "method.reference_warmup=16", "method.rounds=2"],
    ["method=slm", "method.reference_lr=0.001", "method.keep_ratio=0.5"],
    ["method=tc", "score_only=true", "train.batch_size=4"],  # the reference model trains with train.*
    ["method=random", "method.match=null", "method.ratio=0.5"],
    ["method=random", "method.ri.k=1.0"],  # match=xtf: XTF's settings decide the count
    ["method=sstoken", "method.sstoken.gamma=0.3", "method.keep_ratio=0.4"],
    ["task=code", "eval.n_samples=12", "eval.sandbox.timeout_s=5"],
    ["train=full", "train.lr=0.001", "seed=3", "data.limit=8"],
]


def _check(overrides: list[str]) -> None:
    check_overrides_read(validate(compose(overrides)), overrides)


@pytest.mark.parametrize("overrides, key, words", REFUSED, ids=[r[1] for r in REFUSED])
def test_an_unread_override_is_refused_naming_it_and_why(overrides, key, words):
    with pytest.raises(ConfigError) as err:
        _check(overrides)
    assert key in str(err.value) and words in str(err.value), str(err.value)


@pytest.mark.parametrize("overrides", READ, ids=[" ".join(o[:2]) for o in READ])
def test_overrides_the_run_reads_pass(overrides):
    _check(overrides)


def test_every_method_reads_what_its_config_file_sets():
    """The registry's keys (methods.method_keys) against conf/method/*.yaml: a file that sets a key its method
    does not read would make every run of it claim a setting (an inherited file, random's xtf, is judged by
    its own method)."""
    for path in sorted((ROOT / "conf" / "method").glob("*.yaml")):
        written = {k for k in (yaml.safe_load(path.read_text()) or {}) if k not in ("defaults", "method", "model",
                                                                                     "data")}
        cfg = validate(compose([f"method={path.stem}", "task=synth", "task.options.filler_rate=0.2"]))
        # read under its settings or under the alternative the file documents (random's ratio, for match=null)
        read = methods.method_keys(cfg.method) | methods.method_keys(dataclasses.replace(cfg.method, match=None))
        assert written <= read, (path.name, written - read)
    # one config file per registered method, one registered method per config file
    assert set(methods.METHODS) == {p.stem for p in (ROOT / "conf" / "method").glob("*.yaml")}


def test_a_key_no_rule_judges_is_read():
    cfg = validate(compose([]))
    assert unread_reason("data.limit", cfg) is None and unread_reason("seed", cfg) is None


def test_run_py_refuses_model_path_under_tiny_before_any_work(tmp_path):
    """The issue's case: model=tiny model.path=W validated and trained the built tiny base while its record claimed
    model.path=W. Now: exit 2, one line naming the key, nothing written."""
    out = subprocess.run(
        [sys.executable, "run.py", "model=tiny", "task=synth", "method=normal", f"model.path={tmp_path}",
         f"paths.results_dir={tmp_path / 'results'}", f"paths.outputs_dir={tmp_path / 'outputs'}",
         f"paths.cache_dir={tmp_path / 'cache'}", "wandb.mode=disabled"],
        cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-2000:]
    said = out.stdout + out.stderr
    assert f"model.path={tmp_path}" in said and "builds its weights" in said
    assert "Traceback" not in said and not (tmp_path / "results").exists()


def test_a_sweep_judges_the_command_lines_keys_only():
    """A -m job's overrides hold an experiment's shared keys (judged where read) and the command line's own."""
    job = ["method=df", "method.reference_warmup=16", "method.drop_ratio=0.2", "method.keep_ratio=0.5"]
    run = validate(compose(job))
    check_overrides_read(run, job, ["-m", "method=df,tc", "method.drop_ratio=0.1,0.2"])
    with pytest.raises(ConfigError, match="method.keep_ratio=0.5") as err:
        check_overrides_read(run, job, ["--cfg", "job", "-m", "method.keep_ratio=0.5,0.6"])
    assert "reference_warmup" not in str(err.value)


def test_an_experiments_cells_own_overrides_are_read():
    """Every committed experiment's cell-own overrides are read by that cell's run (shared ones apply where read)."""
    from xtf.experiment import composer, load_experiment, spec_files

    with composer() as make:
        for path in spec_files():
            spec = load_experiment(path)
            for own in spec["cells"].values():
                if not any("." in o.partition("=")[0] for o in own):
                    continue  # group choices only (method=tc): nothing a run could leave unread
                run = make([*spec["base"], *own, f"seed={spec['seeds'][0]}"])
                check_overrides_read(run, own)


def test_the_answer_protection_switch_is_read_by_every_method():
    for method in ("xtf", "tc", "stm", "random", "normal"):
        overrides = [f"method={method}", "method.protect_answer=false"]
        check_overrides_read(validate(compose(overrides)), overrides)
