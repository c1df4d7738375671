"""A multi-task (multi-GPU / multi-node) cell on the real single-node dev cluster (tests/test_slurm.py's fixture):
`cluster.tasks_per_node=2 dist=ddp` runs one cell as two srun tasks of one submitit job, which join one
torch.distributed group (gloo on CPU) from SLURM's environment (xtf.distributed.export_slurm_env). Preempted
(USR2) after its first complete checkpoint, the job is requeued once, by global rank 0 only, and the relaunched
two-task job resumes from rank 0's checkpoint. Skipped without the SLURM packages (and root); a failure under
CI=true."""

import json
import os
import subprocess
import sys
import time

from conftest import ROOT, compose
from test_slurm import SLURM, cluster, slurm, wait_for  # noqa: F401 - `cluster` is the dev-cluster fixture

from xtf.cache import MANIFEST
from xtf.results import run_id
from xtf.validate import validate

# 400 rows at a global batch of 8 (4 per rank): 100 optimiser steps, a checkpoint every 5 (3 s of training on an
# idle 2-core CPU, a minute or two on a busy one): the preemption lands right after the first checkpoint, ~95
# steps before the end. The node has 2 CPUs (slurmd -C here): 2 tasks x 1 CPU fit; one torch thread per task
# (OMP_NUM_THREADS=1) so that they do not fight over the cores.
CELL = ["model=tiny_llama", "task.options.n_train=400", "task.options.n_test=8", "train.batch_size=8",
        "train.save_steps=5", "eval.max_new_tokens=16", "wandb.mode=disabled", "dist=ddp"]


def test_a_two_task_ddp_cell_is_requeued_once_and_resumes_from_rank_0s_checkpoint(cluster, tmp_path,  # noqa: F811
                                                                                    session_cache):
    env = {**os.environ, **cluster, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_MODE": "offline",
           "OMP_NUM_THREADS": "1", "XTF_RESULTS_DIR": str(tmp_path / "results"),
           "XTF_OUTPUTS_DIR": str(tmp_path / "outputs"), "XTF_CACHE_DIR": str(session_cache)}
    cmd = [sys.executable, str(ROOT / "run.py"), "-m", *SLURM, "cluster.tasks_per_node=2", *CELL]
    rid = run_id(validate(compose(CELL)))  # dist, like cluster, is not in the run id
    ckpts = tmp_path / "outputs" / "default" / rid / "checkpoints"

    def job(states):  # the cell's job (one cell: a plain job, not an array) while it is in one of `states`
        lines = slurm(env, "squeue", "-h", "-r", "-o", "%i %T").split()
        return next((j for j, s in zip(lines[::2], lines[1::2]) if s in states), None)

    def complete_checkpoint():  # the step of a checkpoint rank 0 sealed (its manifest is written last: xtf.checkpoints)
        return next((int(c.name.split("-")[-1]) for c in ckpts.glob("checkpoint-*") if (c / MANIFEST).is_file()), None)

    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    running = wait_for("the job running", lambda: job(("RUNNING",)), proc)  # known before training: one RPC later
    step = wait_for("the first complete checkpoint", complete_checkpoint, proc, interval=0.05)
    # USR2 reaches both tasks (scancel signals every task of the job's steps); submitit's handler checkpoints and
    # requeues on global rank 0 only (rank 1 logs that it does not), then the requeue ends rank 1.
    slurm(env, "scancel", "--signal=USR2", running)
    # A requeued job is held ~2 minutes (BeginTime) by slurmctld; release it now.
    slurm(env, "scontrol", "update", f"JobId={wait_for('the requeue', lambda: job(('PENDING',)), proc)}",
          "StartTime=now")
    out, _ = proc.communicate(timeout=600)
    print(f"[test_slurm_dist] launch: {time.time() - t0:.0f}s\n{out}")
    assert proc.returncode == 0, out
    assert any(line.startswith("[xtf]   complete") for line in out.splitlines()), out

    records = list((tmp_path / "results").rglob("results.json"))
    assert [r.parent.name for r in records] == [rid]  # one record: rank 0's
    record = json.loads(records[0].read_text())
    dist = record["provenance"]["distributed"]
    assert (dist["world_size"], dist["local_world_size"], dist["launcher"], dist["strategy"], dist["backend"]) == (
        2, 2, "slurm", "ddp", "gloo")
    assert record["training"]["resumed_from_step"] >= step  # the relaunched job resumed from the checkpoint
    logs = {p.name: p.read_text(errors="replace") for p in (tmp_path / "outputs").rglob(".submitit/*/*_log.out")}
    rank0 = next(text for name, text in logs.items() if name.endswith("_0_log.out"))
    rank1 = next(text for name, text in logs.items() if name.endswith("_1_log.out"))

    def said(text, what):  # submitit's own log lines (its messages also appear once more in Hydra's format)
        return sum(line.startswith("submitit ") and what in line for line in text.splitlines())

    assert said(rank0, "Requeued job") == 1 and said(rank1, "Requeued job") == 0, rank0  # once, by rank 0
    assert said(rank1, "Not checkpointing nor requeuing") == 1, rank1
    assert said(rank0, "Starting with JobEnvironment") == said(rank1, "Starting with JobEnvironment") == 2
    assert not (records[0].parent / "failed.json").exists()  # no stray note of rank 1 (whose peer left) remains
