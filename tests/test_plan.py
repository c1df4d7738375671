"""The resource planner (xtf/plan.py): memory arithmetic on a hand-computed case, how strategies and options move
it, the fit verdict and its message, the CLI over a whole experiment, and the sweeper's refusal before a SLURM
submission. No model is loaded; everything is arithmetic on configs."""

import dataclasses
from types import SimpleNamespace

import pytest
from conftest import ROOT, compose

from xtf import plan
from xtf.plan import ARCH, GIB, Arch, Setup, memory
from xtf.validate import validate

TINY = Arch(layers=2, hidden=8, intermediate=16, heads=2, kv_heads=1, vocab=10, tied=True)
EIGHT_GPUS = ["cluster=slurm", "cluster.gpus_per_node=8", "++cluster.tasks_per_node=8"]


def setup(**kw) -> Setup:
    base = dict(mode="full", strategy="ddp", world=1, micro_batch=2, seq_len=4, dtype_bytes=2, mixed=True)
    return Setup(**{**base, **kw})


def test_published_parameter_counts_agree_with_the_shapes():
    # A typo in a layer count or a width shows up here: the shapes must give the model card's count.
    for name, a in ARCH.items():
        assert abs(plan.param_count(a) - a.params) / a.params < 0.005, name


def test_memory_of_a_small_case_computed_by_hand():
    # head_dim 4; per layer q 8x8 + k 8x4 + v 8x4 + o 8x8 + gate/up/down 3 x 8x16 = 576, + 2 norms x 8 = 592
    assert plan.layer_params(TINY) == 592
    assert plan.param_count(TINY) == 2 * 592 + 10 * 8 + 8 == 1272
    m = memory(TINY, setup())
    assert m["weights"] == 1272 * 2 and m["grads"] == 1272 * 2  # bf16, one process: no DDP buckets
    assert m["optimizer"] == 1272 * 2 * 2  # two AdamW moments in the parameters' dtype
    # 8 tokens x (2 x (6 x 8 + 2 x 4) + 8 x 16) = 8 x 240 bytes per layer, 2 layers
    assert m["activations"] == 2 * 8 * 240
    assert m["logits"] == 2 * 4 * 10 * (2 + 4 + 4)  # loss_impl=full: every position
    assert memory(TINY, setup(loss_impl="chunked"))["logits"] == 8 * 10 * (4 + 4)  # fewer than CHUNK_ROWS positions
    rest = 2544 + 2544 + 5088 + 3840 + 800
    assert m["overhead"] == pytest.approx(2 * GIB + 0.05 * rest)
    assert m["total"] == pytest.approx(rest + m["overhead"])
    # checkpointing: each layer's input (2h bytes per token) + one layer recomputed
    assert memory(TINY, setup(checkpointing=True))["activations"] == 2 * 8 * 2 * 8 + 8 * 240
    # LoRA r=2 on q,v: 2 layers x 2 x ((8+8) + (8+4)) = 112 adapter weights in float32, 16 bytes each in all
    lora = memory(TINY, setup(mode="lora", lora_r=2, lora_targets=("q_proj", "v_proj")))
    assert plan.lora_params(TINY, ("q_proj", "v_proj"), 2) == 112
    assert lora["weights"] == 1272 * 2 + 4 * 112 and lora["grads"] == 4 * 112 and lora["optimizer"] == 8 * 112


@pytest.mark.parametrize("name", sorted(ARCH))
def test_lora_needs_less_than_full_fine_tuning(name):
    a = ARCH[name]
    full, lora = memory(a, setup(seq_len=512)), memory(a, setup(mode="lora", seq_len=512, lora_r=16))
    assert lora["total"] < full["total"] and lora["grads"] + lora["optimizer"] < 0.05 * full["optimizer"]


def test_fsdp_shards_weights_grads_and_optimizer_over_the_world():
    a = ARCH["llama31_8b"]
    one, eight = memory(a, setup(strategy="fsdp", world=1)), memory(a, setup(strategy="fsdp", world=8))
    assert eight["grads"] == pytest.approx(one["grads"] / 8)
    assert eight["optimizer"] == pytest.approx(one["optimizer"] / 8)
    gathered = (2 * plan.layer_params(a) + 2 * a.vocab * a.hidden) * 2  # bf16 copies for compute
    assert eight["weights"] - gathered == pytest.approx(one["weights"] / 8)
    assert eight["activations"] == one["activations"]  # the micro-batch is the same here
    ddp = memory(a, setup(strategy="ddp", world=8))
    assert ddp["grads"] == 2 * memory(a, setup(strategy="ddp", world=1))["grads"]  # + DDP's all-reduce buckets


def test_activation_checkpointing_lowers_activations():
    for a in ARCH.values():
        assert memory(a, setup(checkpointing=True, seq_len=512))["activations"] < 0.2 * memory(
            a, setup(seq_len=512))["activations"]


def test_a_14b_full_fine_tune_with_ddp_does_not_fit_80gb_and_the_message_says_use_fsdp():
    cell = [*EIGHT_GPUS, "model=r1_qwen_14b", "train=full", "task=gsm8k", "method=normal"]
    problem = plan.fit_problem(compose([*cell, "dist=ddp"]), name="my 14b cell")
    assert problem and problem.startswith("my 14b cell: needs ~") and "80 GiB" in problem
    assert "use dist=fsdp" in problem
    assert plan.fit_problem(compose([*cell, "dist=fsdp"])) is None
    assert plan.fit_problem(compose([*cell, "dist=ddp", "++cluster.plan_check=false"])) is None
    # one process on an 8-GPU node: fsdp only fits once every GPU runs a process
    solo = plan.fit_problem(compose([*cell[:2], *cell[3:], "dist=ddp"]))
    assert "cluster.tasks_per_node=8" in solo


def test_a_too_large_micro_batch_names_the_batch_size_and_checkpointing():
    run = validate(compose(["model=r1_qwen_14b", "train=lora", "task=pubmedqa", "method=normal"]))
    v = plan.verdict(run, {"gpus_per_node": 1, "gpu_mem_gb": 80}, "14b lora")
    assert v["fits"] is False
    assert "set dist.activation_checkpointing=true" in v["problem"] and "lower train.batch_size to" in v["problem"]
    smaller = dataclasses.replace(run, train=dataclasses.replace(run.train, batch_size=2, grad_accum=8))
    assert plan.verdict(smaller, {"gpus_per_node": 1, "gpu_mem_gb": 80})["fits"]


def test_what_the_run_would_refuse_is_refused_by_the_plan():
    problem = plan.fit_problem(compose([*EIGHT_GPUS, "model=llama32_1b", "train=lora", "dist=fsdp"]))
    assert "would refuse" in problem and "dist=ddp" in problem


def test_unknown_models_and_cpu_profiles_are_not_checked():
    assert plan.fit_problem(compose(["cluster=slurm", "cluster.gpus_per_node=null", "model=llama32_1b"])) is None
    run = validate(compose(["model=llama32_1b"]))
    unknown = dataclasses.replace(run, model=dataclasses.replace(run.model, name="my_model"))
    assert plan.verdict(unknown, {"gpus_per_node": 1, "gpu_mem_gb": 80})["fits"] is None
    assert plan.verdict(run, {"gpus_per_node": 1})["unchecked"] == "the cluster profile has no cluster.gpu_mem_gb"


def test_tokens_fall_back_to_the_known_train_size_and_scoring_costs_forward_passes():
    run = validate(compose(["model=llama32_1b", "train=full", "task=gsm8k", "paths.data_dir=null",
                            "paths.hub_mirror=/nonexistent"]))
    tokens, rows, source = plan.train_tokens(run, {})
    assert (tokens, rows) == (7473 * 512, 7473) and source.startswith("upper bound")
    s = plan.setup_of(run, 1)
    normal = plan.flops(run, ARCH["llama32_1b"], s, tokens, rows)
    xtf_run = validate(compose(["model=llama32_1b", "train=full", "task=gsm8k", "method=xtf"]))
    xtf = plan.flops(xtf_run, ARCH["llama32_1b"], s, tokens, rows)
    p = ARCH["llama32_1b"].params
    assert normal["scoring"] == 0 and xtf["scoring"] == 2 * p * tokens  # one base-model forward
    assert xtf["train"] == normal["train"] == tokens * run.train.epochs * 6 * p


def test_cli_prints_every_cell_of_table1_and_the_8_gpu_profile_fits(capsys):
    from xtf.experiment import load_experiment

    plan.main([str(ROOT / "experiments" / "table1.yaml"), *EIGHT_GPUS[1:]])  # cluster=slurm is the default
    out = capsys.readouterr().out
    spec = load_experiment(ROOT / "experiments" / "table1.yaml")
    lines = out.splitlines()
    for label in spec["cells"]:
        assert any(line.startswith(label + " ") for line in lines), label
    assert "do not fit" not in out and "GPU-hours for 154 cells x 3 seeds" in out and "ESTIMATE" in out
    assert "assumed, not measured" in out
    full = next(line for line in lines if line.startswith("gsm8k / r1_qwen_7b / full / XTF "))
    assert " fsdp " in full and " yes " in full  # table1's full rows use FSDP, its LoRA rows DDP
    assert " ddp " in next(line for line in lines if line.startswith("gsm8k / r1_qwen_14b / LoRA / XTF "))


def test_cli_exits_non_zero_naming_a_cell_that_cannot_fit(tmp_path, capsys):
    (tmp_path / "table1.yaml").write_text(
        "name: table1\nbase: [task=gsm8k, train=full]\nseeds: [0]\n"
        "grid: {model: [llama31_8b, llama32_1b], method: {XTF: method=xtf}}\n"
        "table: {rows: [model], columns: [method], value: metrics.accuracy}\n")
    with pytest.raises(SystemExit) as exit_info:
        plan.main([str(tmp_path / "table1.yaml"), "dist=none"])  # one GPU of the default slurm profile
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    assert "[xtf]   llama31_8b / XTF: needs ~" in out and "llama32_1b / XTF: needs" not in out


def test_the_sweeper_refuses_a_cell_that_cannot_fit_before_submitting(capsys):
    from hydra_plugins.xtf_sweeper.xtf_sweeper import Cell, XtfSweeper

    cfgs = {"fits": compose([*EIGHT_GPUS, "model=r1_qwen_14b", "train=full", "dist=fsdp"]),
            "big": compose([*EIGHT_GPUS, "model=r1_qwen_14b", "train=full", "dist=ddp"])}
    sweeper = XtfSweeper()
    sweeper.config = None
    sweeper.hydra_context = SimpleNamespace(config_loader=SimpleNamespace(
        load_sweep_config=lambda _config, overrides: cfgs[overrides[0]]))
    sweeper.refuse_unfit([Cell("fits", ["fits"])])  # nothing to refuse
    with pytest.raises(SystemExit) as exit_info:
        sweeper.refuse_unfit([Cell("fits", ["fits"]), Cell("14b full ddp", ["big"])])
    out = capsys.readouterr().out
    assert exit_info.value.code == 2 and "1 cell(s) cannot fit" in out and "nothing submitted" in out
    assert "[xtf]   14b full ddp: needs ~" in out and "use dist=fsdp" in out
