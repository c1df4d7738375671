"""The first hour of a researcher (issue 16): a typo, a missing cluster, a wrong path each get one clear line that
names what is wrong and the fix, with exit status 2 and no traceback; what is right is never refused."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from xtf.config import ConfigError
from xtf.experiment import expand, load_experiment, spec_files
from xtf.overrides import check_overrides


def _cli(*args, module=None):
    cmd = [sys.executable, *(["-m", module] if module else [str(ROOT / "run.py")]), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_plain_typo_gets_the_projects_message_not_hydras():
    """`train.lrr=0.1` without `+`: before, Hydra's "Key 'lrr' is not in struct ... use +train.lrr" (exit 1)."""
    p = _cli("train.lrr=0.1")
    out = p.stdout + p.stderr
    assert p.returncode == 2, out
    assert "unknown key 'train.lrr'. Did you mean ['train.lr', 'train.lora_r']?" in out
    assert "Traceback" not in out and "not in struct" not in out and "+train.lrr" not in out


@pytest.mark.parametrize("overrides, expected", [
    (["methd=xtf"], "unknown key 'methd'. Did you mean ['method']?"),
    (["sed=1"], "unknown key 'sed'. Did you mean ['seed']?"),
    (["method.kn.treshold=0.9"], "Did you mean ['method.kn.threshold']?"),
    (["-m", "train.lr=0.1", "train.lrr=1,2"], "unknown key 'train.lrr'"),         # a sweep, checked the same
    (["method=xtff"], "method=xtff: no such option in conf/method/. Did you mean ['xtf', 'xtf_official']?"),
    (["task.options.filer_rate=0.1"], "for task=synth. Did you mean ['task.options.filler_rate']?"),
    (["task=gsm8k", "task.options.filler_rate=0.2"], "unknown key 'task.options.filler_rate' for task=gsm8k"),
    (["cluster.partition=gpu"], "in cluster=local (a key of cluster=slurm: add cluster=slurm)"),
    (["train.lr.x=1"], "'train.lr' is a value, not a mapping"),
])
def test_bad_overrides_name_the_key_and_the_fix(overrides, expected):
    from hydra._internal.utils import get_args_parser

    with pytest.raises(ConfigError) as e:
        check_overrides(get_args_parser().parse_known_args(overrides)[0].overrides)
    assert expected in str(e.value)


def test_every_valid_override_passes():
    """No false alarm: every run of every committed experiment, sweeps, appends, hydra.* and group options."""
    check_overrides(["train.lr=1e-4,2e-4", "method=normal,xtf", "+train.new=1", "~wandb", "hydra.verbose=true",
                     "debug=fast", "cluster=slurm", "cluster.partition=gpu", "hydra/launcher=basic", "seed=0,1",
                     "task=gsm8k", "task.options.target=rationale", "method.attributes=[ri,kn]", "debug=null"])
    n = 0
    for path in spec_files():
        for _, _, overrides in expand(load_experiment(path)):
            check_overrides(overrides)
            n += 1
    assert n > 100


def test_explain_on_a_wrong_folder_is_one_line_exit_2(tmp_path):
    for folder, expected in [(tmp_path / "nope", "is not a directory"),
                             (tmp_path, "has no score_summary.json or token_samples.jsonl")]:
        p = _cli(str(folder), module="xtf.explain")
        assert p.returncode == 2 and expected in p.stderr and "Traceback" not in p.stderr, p.stderr
        assert len(p.stderr.strip().splitlines()) == 1
    (tmp_path / "score_summary.json").write_text("{}")
    (tmp_path / "token_samples.jsonl").write_text(json.dumps({"tokens": ["a"]}) + "\n")
    p = _cli(str(tmp_path), module="xtf.explain")
    assert p.returncode == 2 and "malformed run files (KeyError: 'response_mask')" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


def test_base_model_evaluation_is_computed_once_across_seeds_and_predictions_carry_the_prompt(tmp_path, monkeypatch):
    """method=none evaluates the untrained base: under a deterministic protocol (here synth's greedy exact match)
    the second seed reuses the first seed's evaluation and its record says so; a trained model, other eval rows
    or a sampled protocol (HumanEval) are always evaluated."""
    import torch
    from conftest import compose

    from xtf import evaluate as ev
    from xtf import tasks
    from xtf.validate import validate

    calls = []

    def fake(model, tokenizer, task_module, examples, eval_cfg, chat_template):
        calls.append(len(examples))
        return {"accuracy": 0.5}, [{"id": ex["id"], "gold": ex["answer"], "generation": "7"} for ex in examples], \
            {"name": "greedy_exact_match"}

    monkeypatch.setattr(ev, "evaluate_exact_match", fake)
    model = torch.nn.Linear(2, 2)
    examples = [{"id": "q1", "prompt": "Tom has 3 apples and buys 4. How many?", "answer": "7"}]
    cfg = lambda *o: validate(compose([f"paths.cache_dir={tmp_path / 'cache'}", *o]))  # noqa: E731
    synth = tasks.TASKS["synth"]

    m0, p0, proto0 = ev.evaluate(model, None, synth, examples, cfg("method=none", "seed=0"), tmp_path)
    m1, p1, proto1 = ev.evaluate(model, None, synth, examples, cfg("method=none", "seed=1"), tmp_path)
    assert calls == [1] and (m1, p1) == (m0, p0) and "reused" not in proto0
    assert proto1["reused"]["computed_by_seed"] == 0 and proto1["split"] == proto0["split"]
    assert p0 == [{"id": "q1", "prompt": examples[0]["prompt"], "gold": "7", "generation": "7"}]

    ev.evaluate(model, None, synth, examples + [{**examples[0], "id": "q2"}], cfg("method=none", "seed=2"), tmp_path)
    ev.evaluate(model, None, synth, examples, cfg("method=normal", "seed=1"), tmp_path)
    ev.evaluate(model, None, synth, examples, cfg("method=none", "seed=1", "force=true"), tmp_path)
    assert calls == [1, 2, 1, 1]  # other rows, a trained model, force=true: evaluated again

    code = []
    monkeypatch.setattr(ev, "evaluate_code", lambda *a: code.append(1) or ({}, [], {"name": "pass_at_k"}))
    for seed in (0, 1):
        ev.evaluate(model, None, tasks.TASKS["code"], examples, cfg("method=none", "task=code", f"seed={seed}"),
                    tmp_path)
    assert code == [1, 1]  # HumanEval samples: never reused


GSM8K_TINY = ["task=gsm8k", "model.tiny=random", "debug=fast", "data.limit=8", "data.eval_limit=4",
              "wandb.mode=offline"]


def _run(tmp_path, *overrides, env=None):
    import os

    drop = ("WANDB_SILENT", "XTF_KEEP_FAILED_OUTPUTS")  # conftest silences W&B; here the harness must do it
    env = {**{k: v for k, v in os.environ.items() if k not in drop}, **(env or {})}
    cmd = [sys.executable, str(ROOT / "run.py"), *GSM8K_TINY, f"paths.results_dir={tmp_path / 'results'}",
           f"paths.outputs_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}", *overrides]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    return p.returncode, p.stdout + p.stderr


def test_a_training_and_gsm8k_run_prints_no_known_library_noise(tmp_path):
    """Before: peft's FutureWarning on every training run, lm-eval's two `pretrained` warnings on every GSM8K
    run, seven W&B banner lines, and a per-request progress bar whose first ETA was batch_size× too long."""
    from conftest import require_shared_data

    require_shared_data()
    rc, out = _run(tmp_path, "method=normal")
    assert rc == 0, out
    for noise in ("FutureWarning", "is_gradient_checkpointing", "`pretrained` model kwarg",
                  "already-initialized model", "Running generate_until requests:"):
        assert noise not in out, noise
    assert not [line for line in out.splitlines() if line.startswith("wandb:")], out
    assert len([line for line in out.splitlines() if line.startswith("[xtf] W&B offline run: ")]) == 1
    assert "lm-eval generate: 100%" in out  # our per-batch bar replaced lm-eval's per-request one


def test_a_failed_run_leaves_no_hydra_or_wandb_folder_unless_asked(tmp_path):
    from conftest import require_shared_data

    require_shared_data()
    rc, out = _run(tmp_path, "data.max_len=8")  # fails in the run, after W&B started: nothing fits in 8 tokens
    assert rc == 2 and "raise data.max_len" in out, out
    assert not (tmp_path / "outputs" / "hydra").exists() and not (tmp_path / "outputs" / "wandb").exists()
    rc, out = _run(tmp_path, "data.max_len=8", env={"XTF_KEEP_FAILED_OUTPUTS": "1"})
    assert rc == 2 and list((tmp_path / "outputs" / "hydra").glob("*/*/.hydra")), out
    assert list((tmp_path / "outputs" / "wandb" / "wandb").glob("offline-run-*"))
