"""The distributed runtime (xtf/distributed.py): the batch split, the strategy checks, the `dist` group staying out
of the run id, the SLURM environment; then `torchrun --nproc_per_node=2 run.py` on CPU (gloo) against one process:
the same losses, bit-identical sharded scores, the same predictions, and files written by rank 0 only. FSDP (which
accelerate applies on GPUs only) runs and resumes in a `gpu` test."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, compose

from xtf import distributed
from xtf.config import ConfigError, DistConfig, TrainConfig
from xtf.results import run_id
from xtf.validate import validate

# A LoRA cell that scores (method=xtf: the forward group, sharded, and TR), trains 16 steps and generates.
CELL = ["model=tiny_llama", "method=xtf", "task.options.n_train=32", "task.options.n_test=8", "train.batch_size=4",
        "train.grad_accum=2", "train.epochs=2", "train.logging_steps=1", "eval.max_new_tokens=8", "eval.batch_size=4"]


@pytest.fixture
def fake_runtime():
    """Set the module's runtime as start() would for another world (restored after the test)."""
    saved = dict(distributed._state)

    def set_runtime(rt, dist_cfg=None):
        distributed._state.update(runtime=rt, dist=dist_cfg or DistConfig(strategy=rt.strategy))

    yield set_runtime
    distributed._state.clear()
    distributed._state.update(saved)


@pytest.mark.parametrize("batch, accum, world, expected", [
    (8, 1, 1, (8, 1)), (4, 2, 2, (4, 1)), (8, 4, 2, (8, 2)), (8, 1, 2, (4, 1)), (8, 1, 8, (1, 1)),
    (6, 2, 4, (3, 1)), (8, 3, 4, (6, 1)), (2, 8, 4, (2, 2))])
def test_the_global_batch_is_the_same_for_any_world_size(batch, accum, world, expected):
    per_device, steps = distributed.batch_split(batch, accum, world)
    assert (per_device, steps) == expected
    assert per_device * steps * world == batch * accum and per_device <= batch


def test_a_global_batch_the_world_does_not_divide_is_refused():
    with pytest.raises(ConfigError, match=r"train.batch_size x train.grad_accum = 6 x 1 = 6 .*world size 4"):
        distributed.batch_split(6, 1, 4)


def test_runtime_from_the_launcher_environment():
    assert distributed.runtime_from_env("none", False, {}) == distributed.Runtime()
    torchrun = {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    rt = distributed.runtime_from_env("none", False, torchrun)
    assert (rt.rank, rt.world_size, rt.strategy, rt.backend, rt.launcher) == (1, 2, "ddp", "gloo", "torchrun")
    assert distributed.runtime_from_env("fsdp", True, torchrun).backend == "nccl"


def test_slurm_tasks_get_the_torch_distributed_environment(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.setenv(key, "")  # recorded, so that what export_slurm_env sets is undone after the test
        monkeypatch.delenv(key)
    slurm = {"SLURM_JOB_ID": "4711", "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_JOB_NUM_NODES": "2",
             "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1", "SLURM_NODEID": "1"}
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    assert not distributed.export_slurm_env()  # the batch script (no srun step): one process, not a rank
    assert "RANK" not in os.environ
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "16")
    assert distributed.export_slurm_env()
    got = {k: os.environ[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")}
    assert got == {"RANK": "9", "WORLD_SIZE": "16", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "8", "MASTER_ADDR": "gpu01"}
    assert 20000 <= int(os.environ["MASTER_PORT"]) <= 60000


def test_one_process_trains_as_before(fake_runtime):
    train = TrainConfig(name="lora", batch_size=8, grad_accum=2)
    model_cfg = validate(compose([])).model
    fake_runtime(distributed.Runtime())
    assert distributed.trainer_kwargs(train, model_cfg, None, on_gpu=False) == {
        "per_device_train_batch_size": 8, "gradient_accumulation_steps": 2, "bf16": False, "fp16": False}
    gpu = distributed.trainer_kwargs(train, model_cfg, None, on_gpu=True)
    assert gpu["bf16"] is (model_cfg.dtype == "bfloat16") and not gpu["fp16"]


def test_fsdp_and_deepspeed_arguments(fake_runtime):
    train = TrainConfig(name="full", mode="full", batch_size=8)
    model_cfg = validate(compose([])).model

    class Model:
        _no_split_modules = ["LlamaDecoderLayer"]

    world = dict(rank=0, world_size=8, local_world_size=8, backend="nccl")
    fake_runtime(distributed.Runtime(strategy="fsdp", **world),
                 DistConfig(strategy="fsdp", activation_checkpointing=True, mixed_precision="bf16"))
    kw = distributed.trainer_kwargs(train, model_cfg, Model(), on_gpu=True)
    assert (kw["per_device_train_batch_size"], kw["gradient_accumulation_steps"], kw["bf16"]) == (1, 1, True)
    assert kw["fsdp"] is True and kw["fsdp_config"]["version"] == 2
    assert kw["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    assert kw["fsdp_config"]["activation_checkpointing"] is True and "gradient_checkpointing" not in kw
    fake_runtime(distributed.Runtime(strategy="deepspeed", **world), DistConfig(strategy="deepspeed", zero_stage=3))
    kw = distributed.trainer_kwargs(train, model_cfg, Model(), on_gpu=True)
    assert kw["deepspeed"]["zero_optimization"]["stage"] == 3 and kw["deepspeed"]["bf16"] == {"enabled": "auto"}


@pytest.mark.parametrize("dist, mode, on_gpu, message", [
    (DistConfig(strategy="fsdp"), "full", False, "dist.strategy=fsdp runs on GPUs only"),
    (DistConfig(strategy="fsdp"), "lora", True, "use dist=ddp with train=lora"),
    (DistConfig(strategy="ddp", mixed_precision="fp16"), "lora", False, "fp16 needs a GPU"),
    (DistConfig(strategy="ddp", fsdp_offload=True), "lora", True, "applies to dist.strategy=fsdp only"),
])
def test_strategies_that_cannot_run_are_refused_before_any_work(dist, mode, on_gpu, message):
    rt = distributed.Runtime(strategy=dist.strategy, world_size=2, rank=0)
    with pytest.raises(ConfigError, match=message):
        distributed.check(dist, TrainConfig(name=mode, mode=mode), rt, on_gpu)


def test_deepspeed_without_its_package_says_so(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    rt = distributed.Runtime(strategy="deepspeed", world_size=2)
    with pytest.raises(ConfigError, match="needs the deepspeed package"):
        distributed.check(DistConfig(strategy="deepspeed"), TrainConfig(name="full", mode="full"), rt, True)


def test_every_dist_profile_composes_and_none_changes_the_run_id():
    default = run_id(validate(compose([])))
    for profile in sorted(p.stem for p in (ROOT / "conf" / "dist").glob("*.yaml")):
        cfg = validate(compose([f"dist={profile}", "dist.activation_checkpointing=true"]))
        assert cfg.dist.strategy == profile and run_id(cfg) == default  # launcher-like: where it ran, not what
    with pytest.raises(ConfigError, match=r"dist.strategy='zero' is not allowed; choose one of \['none', 'ddp'"):
        validate(compose(["dist.strategy=zero"]))


def test_sharing_is_the_identity_outside_a_collective_block():
    items = list(range(7))
    assert distributed.share(items) is items and distributed.merge(items) is items
    with distributed.collective():  # one process: nothing to share
        assert distributed.share(items) == items and distributed.merge([None, 1]) == [None, 1]


# ------------------------------------------------------------------------------------------- two processes, gloo
def _scores(cache: Path) -> dict:
    """Every score array of the cache's score entries, keyed by entry and array name."""
    out = {}
    for npz in sorted(cache.glob("scores/*/scores.npz")):
        with np.load(npz) as data:
            out.update({f"{npz.parent.name}/{k}": data[k] for k in data.files})
    return out


def test_torchrun_ddp_cell_equals_one_process_and_only_rank_0_writes(tmp_path):
    """torchrun --nproc_per_node=2 (gloo): the per-rank scoring shares merge into the same cache entries as one
    process's, bit for bit; the losses equal one process's on the same global batch; predictions are identical;
    one record, one W&B run, one explanation report."""
    from xtf.pipeline import run

    def paths(name):
        return [f"paths.results_dir={tmp_path / name / 'results'}", f"paths.outputs_dir={tmp_path / name / 'outputs'}",
                f"paths.cache_dir={tmp_path / name / 'cache'}"]

    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(ROOT / "run.py"),
           *CELL, *paths("ddp"), "dist=ddp", "wandb.mode=offline"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert out.count("[xtf] results:") == 1  # rank 0 prints the summary
    one = run(validate(compose([*CELL, *paths("one"), "wandb.mode=disabled"])))

    records = list((tmp_path / "ddp" / "results").rglob("results.json"))
    assert len(records) == 1 and records[0].parent.name == one["run_id"]  # dist is not in the run id
    ddp = json.loads(records[0].read_text())
    assert ddp["provenance"]["distributed"] == {
        "world_size": 2, "local_world_size": 2, "strategy": "ddp", "backend": "gloo", "launcher": "torchrun",
        "per_device_batch": 4, "grad_accum": 1}
    assert one["provenance"]["distributed"]["world_size"] == 1

    # Sharded scoring: each rank scored half the batches; rank 0 wrote the merged entries: equal to one process's.
    sharded, single = _scores(tmp_path / "ddp" / "cache"), _scores(tmp_path / "one" / "cache")
    assert sorted(sharded) == sorted(single) and any(k.endswith("/ri") for k in single)
    for key in single:
        np.testing.assert_array_equal(sharded[key], single[key], err_msg=key)
    assert ddp["mask"]["kept_fraction"] == one["mask"]["kept_fraction"] < 1.0
    assert ddp["scoring"]["computed"] == one["scoring"]["computed"] == ["forward", "tr"]

    # Training: 4 rows per rank and no accumulation == one process's 2 micro-batches of 4: the same losses.
    losses = [h["loss"] for h in ddp["training"]["loss_history"]]
    assert ddp["training"]["steps"] == one["training"]["steps"] == 8
    np.testing.assert_allclose(losses, [h["loss"] for h in one["training"]["loss_history"]], rtol=1e-5)
    # Evaluation: each rank decoded its share of the greedy batches; rank 0 recorded everything.
    assert ddp["metrics"]["n_eval"] == 8
    assert ddp["metrics"]["answer_nll"] == pytest.approx(one["metrics"]["answer_nll"], rel=1e-5)
    folder = records[0].parent
    generations = [json.loads(line)["generation"] for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert generations == [json.loads(line)["generation"] for line in
                           (tmp_path / "one" / "results" / "default" / one["run_id"] / "predictions.jsonl")
                           .read_text().splitlines()]
    assert (folder / "explain" / "index.html").is_file()
    wandb_runs = list((tmp_path / "ddp" / "outputs" / "wandb" / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1  # one W&B run per cell


@pytest.mark.gpu
def test_fsdp_full_fine_tuning_runs_and_resumes(tmp_path):
    """FSDP2 through accelerate (GPUs only): a full fine-tune of a tiny Llama on every visible GPU (up to 2), then
    the same run resumed from its middle checkpoint reaches the same final loss."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    nproc = min(2, torch.cuda.device_count())
    args = ["model=tiny_llama", "train=full", "dist=fsdp", "task.options.n_train=64", "task.options.n_test=8",
            "train.batch_size=4", "train.grad_accum=2", "train.save_steps=4", "train.keep_checkpoints=true",
            "eval.max_new_tokens=8", "wandb.mode=disabled", f"paths.results_dir={tmp_path / 'results'}",
            f"paths.outputs_dir={tmp_path / 'outputs'}", f"paths.cache_dir={tmp_path / 'cache'}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(ROOT / "run.py"), *args]

    def launch(*extra):
        proc = subprocess.run([*cmd, *extra], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        (record,) = (tmp_path / "results").rglob("results.json")
        return record, json.loads(record.read_text())

    path, first = launch()
    assert first["provenance"]["distributed"]["strategy"] == "fsdp" and first["training"]["steps"] == 8
    ckpts = sorted((tmp_path / "outputs").rglob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for ckpt in ckpts[1:]:  # keep checkpoint-4 only: the relaunch resumes from the middle of training
        subprocess.run(["rm", "-rf", str(ckpt)], check=True)
    path.unlink()
    _, resumed = launch()
    assert resumed["training"]["resumed_from_step"] == 4
    assert resumed["training"]["train_loss"] == pytest.approx(first["training"]["train_loss"], rel=1e-3)
    assert resumed["metrics"]["answer_nll"] == pytest.approx(first["metrics"]["answer_nll"], rel=1e-3)
