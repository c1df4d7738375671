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
    from xtf import humaneval, tasks
    from xtf.config import validate

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
    monkeypatch.setattr(humaneval, "evaluate_code", lambda *a: code.append(1) or ({}, [], {"name": "pass_at_k"}))
    for seed in (0, 1):
        ev.evaluate(model, None, tasks.TASKS["code"], examples, cfg("method=none", "task=code", f"seed={seed}"),
                    tmp_path)
    assert code == [1, 1]  # HumanEval samples: never reused
