"""Config composition for every model × task × method cell, and every bad-config path fails before any work."""

import itertools

import pytest
from conftest import CONF, ROOT, compose
from hydra.errors import ConfigCompositionException, MissingConfigException

from xtf.cache import key_of
from xtf.config import LR_SCHEDULERS, ConfigError, RunConfig
from xtf.results import run_id, run_id_fields
from xtf.validate import validate

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))
TRAINS = sorted(p.stem for p in (CONF / "train").glob("*.yaml"))


def test_the_groups_hold_what_the_paper_needs():
    paper = {"llama3", "llama31_8b", "llama32_1b", "llama32_3b", "mistral_7b",
             "r1_qwen_1_5b", "r1_qwen_7b", "r1_qwen_14b"}
    assert paper | {"tiny", "tiny_llama", "tiny_qwen2", "tiny_mistral"} <= set(MODELS)
    assert {"gsm8k", "code", "medqa", "pubmedqa", "synth"} <= set(TASKS)
    assert {"normal", "normal_x2", "none", "xtf", "xtf_official", "tc", "slm", "df", "random", "oracle"} <= set(METHODS)
    assert {"lora", "full"} == set(TRAINS)


def test_every_cell_composes_and_validates():
    """Every model × task × train × method cell. Hydra composes model × task × train (the groups that write into
    each other's keys: model and task files are `_global_`); the method group has its own package, so its
    nodes are swapped into each composed config, which is exactly what Hydra's merge does (and is 10x faster).
    Distinctness is checked on the config part of the run id (the content part needs each cell's weights)."""
    from omegaconf import OmegaConf

    method_nodes = {m: OmegaConf.to_container(compose([f"method={m}"]).method) for m in METHODS}
    ids = set()
    for model, task, train in itertools.product(MODELS, TASKS, TRAINS):
        own_data = [f"data.train_file={ROOT / 'examples' / 'chat.jsonl'}", "task.options.expert_words=[add]"] \
            if task == "sft" else []   # your own data: a file and the domain words TR needs
        composed = OmegaConf.to_container(compose([f"model={model}", f"task={task}", f"train={train}", *own_data]),
                                          resolve=True)
        for method, node in method_nodes.items():
            if method == "oracle":  # valid only with injected noise (synth with a *_rate > 0)
                with pytest.raises(ConfigError, match="oracle"):
                    validate({**composed, "method": node})
                composed_noisy = {**composed, "task": {"name": "synth", "options": {"filler_rate": 0.2}}}
                cfg = validate({**composed_noisy, "method": node}) if task == "synth" else None
                if cfg:
                    ids.add(key_of(run_id_fields(cfg)))
                continue
            cfg = validate({**composed, "method": node})
            assert isinstance(cfg, RunConfig)
            assert (cfg.model.name, cfg.task.name, cfg.method.name, cfg.train.mode) == (
                "llama31_8b" if model == "llama3" else model, task, method, train)
            ids.add(key_of(run_id_fields(cfg)))
    # llama3 is an alias of llama31_8b (same weights → same run id); every other cell is distinct.
    n_cells = len(MODELS) * len(TASKS) * (len(METHODS) - 1) * len(TRAINS) + len(MODELS) * len(TRAINS)
    assert len(ids) == n_cells - (len(TASKS) * (len(METHODS) - 1) + 1) * len(TRAINS)


def test_default_is_tiny_synth_and_paths_are_absolute():
    cfg = validate(compose())
    assert (cfg.model.name, cfg.task.name, cfg.method.name) == ("tiny", "synth", "normal")
    assert cfg.paths.results_dir.startswith("/") and cfg.paths.cache_dir.startswith("/")
    assert cfg.model.tiny == "pretrained" and cfg.wandb.mode in ("offline", "disabled")


def test_llama3_is_llama31_8b_with_hub_id():
    cfg = validate(compose(["model=llama3", "task=gsm8k"]))
    assert cfg.model.hub_id == "meta-llama/Llama-3.1-8B" and cfg.task.options["target"] == "rationale_answer"


def test_run_id_ignores_where_files_go_but_not_what_changes_results():
    a = validate(compose())
    b = validate(compose(["paths.results_dir=/tmp/elsewhere", "wandb.mode=disabled", "train.save_steps=7"]))
    c = validate(compose(["train.lr=0.001"]))
    d = validate(compose(["seed=1"]))
    assert run_id(a) == run_id(b)
    assert len({run_id(a), run_id(c), run_id(d)}) == 3


def test_run_id_hashes_code_eval_keys_only_for_code_and_split_only_when_dev():
    """Keys only the pass@k protocol reads do not change a synth run's id (so adding them left earlier records
    findable); for task=code they do, except the sandbox's parallelism, which only changes speed."""
    synth = run_id(validate(compose()))
    assert run_id(validate(compose(["eval.n_samples=20", "eval.sandbox.memory_mb=512"]))) == synth
    assert run_id(validate(compose(["eval.split=dev", "data.dev_size=10"]))) != run_id(
        validate(compose(["data.dev_size=10"])))
    code = run_id(validate(compose(["task=code"])))
    assert run_id(validate(compose(["task=code", "eval.sandbox.parallel=7"]))) == code
    assert run_id(validate(compose(["task=code", "eval.n_samples=20"]))) != code
    assert run_id(validate(compose(["task=code", "eval.sandbox.memory_mb=512"]))) != code


def test_tiny_generated_runs_keep_their_ids():
    """Tiny models and generated data are functions of config values already in the id: content identities add
    nothing for them, so their records made before content identities existed are still found."""
    cfg = validate(compose(["model=tiny_llama"]))
    assert run_id(cfg) == f"tiny_llama-synth-normal-s0-{key_of(run_id_fields(cfg))[:12]}"


def test_lr_schedulers_are_hf_schedulers():
    from transformers import SchedulerType

    assert set(LR_SCHEDULERS) <= {s.value for s in SchedulerType}


@pytest.mark.parametrize("override, words", [
    (["+model.hidden_sise=3"], ["model.hidden_sise", "hidden_size"]),          # unknown key, with a suggestion
    (["+bogus=1"], ["bogus", "Valid keys"]),
    (["train.lr=5"], ["train.lr", "in (0, 1)"]),                                # out of range
    (["train.loss_norm=sum"], ["train.loss_norm", "kept", "answer"]),           # not one of the choices
    (["seed=abc"], ["seed", "int"]),                                            # wrong type
    (["data.max_len=2"], ["data.max_len", ">= 8"]),
    (["data.on_bad_row=ignore"], ["data.on_bad_row", "error", "skip"]),
    (["+task.options.n_trian=3"], ["task.options.n_trian", "n_train"]),         # task-specific knobs too
    (["task=gsm8k", "task.options.target=answer"], ["task.options.target", "rationale"]),
    (["wandb.mode=cloud"], ["wandb.mode", "offline"]),
    (["task=synth", "task.options.max_value=3"], ["max_value"]),
    (["eval.split=dev"], ["eval.split=dev", "data.dev_size"]),                  # dev split needs a carved dev set
    (["task=code", "eval.split=dev", "data.dev_size=5"], ["eval.split=dev", "HumanEval"]),
    (["task=code", "eval.n_samples=4"], ["eval.pass_k", "eval.n_samples >= 10"]),  # pass@10 from 4 samples
    (["eval.sandbox.memory_mb=8"], ["eval.sandbox.memory_mb", ">= 64"]),
    (["eval.code_protocol=beam"], ["eval.code_protocol", "sampled", "released_beam"]),
])
def test_bad_values_fail_naming_the_key_and_the_choices(override, words):
    with pytest.raises(ConfigError) as e:
        validate(compose(override))
    for w in words:
        assert w in str(e.value)


def test_unknown_group_option_lists_the_choices():
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as e:
        compose(["model=llama4"])
    assert "llama3" in str(e.value) and "tiny" in str(e.value)


def test_unknown_key_without_plus_is_refused_by_hydra():
    with pytest.raises(ConfigCompositionException, match="hidden_sise"):
        compose(["model.hidden_sise=3"])
