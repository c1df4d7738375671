"""xtf's Hydra sweeper: the cells of a sweep minus the complete ones, launched as one batch (one SLURM array
under cluster=slurm), then a per-cell summary; the exit status is non-zero when any cell is not complete.

    python run.py -m method=normal,xtf seed=0,1,2                                  # 6 cells, on this machine
    python run.py -m cluster=slurm hydra.sweeper.experiment_file=experiments/noise_benchmark.yaml
    python run.py -m cluster=slurm hydra.sweeper.experiment_file=experiments/noise_benchmark.yaml model=tiny_qwen2
    python run.py -m hydra.sweeper.experiment_file=experiments/table1.yaml hydra.sweeper.stand_in=true  # tiny models

The cells are either the command line's cartesian product (as Hydra's BasicSweeper builds it) or, with
`hydra.sweeper.experiment_file`, the experiment's runs (xtf.experiment.expand) times any command-line sweep.
Precedence in experiment mode: the spec's overrides (base, cell, seed, experiment name), then the command
line, which wins: a command-line override replaces the spec's override of the same key.

Each cell is composed and validated before anything is launched: a config error in any cell stops the sweep
before any work. A cell whose results.json is complete is skipped (relaunching runs only what is missing). A
failing cell never stops the others; its error is kept in `<run dir>/failed.json` (removed when the cell later
completes), so the reason survives a SLURM job and appears in the summary.
"""

# No `from __future__ import annotations`: Hydra executes plugin modules outside sys.modules while scanning,
# where dataclasses cannot resolve string annotations.
import dataclasses
import json
import logging
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # private: used by cartesian_product only
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.utils import to_absolute_path
from omegaconf import OmegaConf, open_dict, read_write

from xtf.errors import ConfigError

log = logging.getLogger(__name__)
FAILED_FILE = "failed.json"


def cartesian_product(parsed: list) -> list[list[str]]:
    """The command line's cartesian product, as Hydra's basic sweeper forms it: one list of "key=value" strings per
    combination, the first override's values varying slowest ("a=1,2 b=3,4" → a=1 b=3, a=1 b=4, a=2 b=3, ...).
    The one use of Hydra's private API (hydra._internal, Hydra 1.3.8: BasicSweeper.split_arguments, a staticmethod;
    max_batch_size=None: one batch); tests/test_sweeper.py checks that it still behaves so."""
    return BasicSweeper.split_arguments(parsed, None)[0]


@dataclasses.dataclass
class Cell:
    name: str                 # what the summary calls it, e.g. "xtf seed=1" or "method=xtf seed=1"
    overrides: list[str]      # the job's task overrides (the command line's hydra.* overrides are added by Hydra)
    folder: Optional[Path] = None  # results/<experiment>/<run_id>/


class RecordFailure:
    """Wraps the task function: on an exception, writes failed.json (type, message, traceback tail, time, host,
    SLURM job) into the run's results folder and re-raises; on success removes a stale one. A class, not a
    closure, so that submitit can pickle it into the SLURM job."""

    def __init__(self, task_function):
        self.task_function = task_function

    def __call__(self, cfg):
        try:
            out = self.task_function(cfg)
        except Exception as e:
            try:
                write_failure(_folder_of(cfg), e)
            except Exception:  # noqa: BLE001 - the run's own error matters more than the note about it
                log.exception("could not write %s", FAILED_FILE)
            raise
        try:
            (_folder_of(cfg) / FAILED_FILE).unlink(missing_ok=True)
        except Exception:  # noqa: BLE001
            pass
        return out


def _folder_of(cfg) -> Path:
    from xtf.results import run_dir
    from xtf.validate import validate

    return run_dir(validate(cfg))


def write_failure(folder: Path, exc: BaseException) -> None:
    from xtf.cache import atomic_write_text

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    note = {"type": type(exc).__name__, "message": str(exc), "traceback": tb[-4000:],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "unix_time": time.time(), "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
    Path(folder).mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(folder) / FAILED_FILE, json.dumps(note, indent=1) + "\n")


def read_failure(folder: Path) -> Optional[dict]:
    try:
        return json.loads((Path(folder) / FAILED_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def slurm_problem(timeout_s: float = 20.0) -> Optional[str]:
    """Why a SLURM submission from this machine cannot work, or None: SLURM's commands missing from PATH (submitit
    needs sbatch and srun), or no controller answering `scontrol ping`. Checked before anything is submitted, so
    the sweep ends with the cause instead of every cell "did not finish"."""
    import shutil
    import subprocess

    missing = [c for c in ("sbatch", "srun", "scontrol") if shutil.which(c) is None]
    if missing:
        return (f"SLURM's {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not on PATH on this machine "
                f"({socket.gethostname()}): launch the sweep from a login node of the cluster, or drop "
                f"cluster=slurm to run the cells here one after another (a test cluster: slurm/dev-cluster/up.sh)")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"no SLURM controller answered `scontrol ping` within {timeout_s:.0f} s; is slurmctld running?"
    said = " ".join((ping.stdout + ping.stderr).split())
    if ping.returncode != 0 or "DOWN" in said:
        return (f"no SLURM controller is reachable (`scontrol ping`: {said or f'exit status {ping.returncode}'}); "
                f"check that slurmctld runs and that this machine's slurm.conf names it")
    return None


class XtfSweeper(Sweeper):
    def __init__(self, experiment_file: Optional[str] = None, params: Optional[dict] = None,
                 stand_in: bool = False) -> None:
        super().__init__()
        self.experiment_file = experiment_file
        self.stand_in = stand_in  # the experiment's tiny-model variant (xtf.experiment.load_experiment)
        self.params = dict(params or {})
        self.hydra_context = self.config = self.launcher = None

    def setup(self, *, hydra_context, task_function, config) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=RecordFailure(task_function), config=config)

    # -- which cells ----------------------------------------------------------------------------------------
    def cells(self, arguments: list[str]) -> list[Cell]:
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        parsed = parser.parse_overrides([f"{k}={v}" for k, v in self.params.items()] + list(arguments))
        swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
        combos = cartesian_product(parsed)

        def varying(combo):  # the swept part of a combination, for naming
            return [o for o in combo if o.split("=", 1)[0] in swept]

        if not self.experiment_file:  # a cell without a swept key is named after its run id (sweep() fills it)
            return [Cell(" ".join(varying(c)), list(c)) for c in combos]
        from xtf.experiment import expand, load_experiment

        try:
            spec = load_experiment(to_absolute_path(self.experiment_file), stand_in=self.stand_in)
        except (OSError, ValueError) as e:  # SpecError names the file, the key and what is allowed
            print(f"[xtf] hydra.sweeper.experiment_file: {type(e).__name__}: {e}")
            raise SystemExit(2) from None
        cli_keys = {(o.key_or_group, o.package) for o in parsed}
        out, seen = [], set()
        for label, seed, spec_overrides in expand(spec):
            kept = [s for s, o in zip(spec_overrides, parser.parse_overrides(spec_overrides))
                    if (o.key_or_group, o.package) not in cli_keys  # the command line wins
                    and not (self.stand_in and o.key_or_group.split(".")[0] == "dist")]  # tiny models: one process;
            # the spec's dist choices (fsdp: GPUs only) are for its real models
            own = label if ("seed", None) in cli_keys else f"{label} seed={seed}"
            for combo in combos:
                overrides = kept + list(combo)
                if tuple(overrides) not in seen:  # e.g. the command line's seed=0 collapses the spec's seeds
                    seen.add(tuple(overrides))
                    out.append(Cell(" ".join([own, *varying(combo)]), overrides))
        return out

    def compose(self, cell: Cell):
        """The cell's validated RunConfig, composed exactly as the job will compose it."""
        from xtf.validate import validate

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(cell.overrides))
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        return validate(cfg)

    # -- the sweep ------------------------------------------------------------------------------------------
    def sweep(self, arguments: list[str]) -> Any:
        from xtf.results import adopt_record, load_record, run_dir

        cells, bad, seen = [], [], {}
        for cell in self.cells(arguments):
            try:
                cell.folder = run_dir(self.compose(cell))
            except ConfigError as e:
                bad.append(f"[xtf]   {cell.name or ' '.join(cell.overrides)}: ConfigError: {e}")
                continue
            cell.name = cell.name or cell.folder.name
            if cell.folder in seen:
                print(f"[xtf] cell '{cell.name}' is the same run as '{seen[cell.folder]}': launched once")
                continue
            seen[cell.folder] = cell.name
            cells.append(cell)
        if bad:
            print(f"[xtf] {len(bad)} cell(s) have config errors; nothing launched:", *bad, sep="\n")
            raise SystemExit(2)

        pending = [c for c in cells if load_record(c.folder) is None]
        copied = [c for c in pending if adopt_record(c.folder) is not None]  # the same run, in another experiment
        if copied:
            print(f"[xtf] {len(copied)} cell(s) are complete in another experiment (same run id): copied, not rerun")
        pending = [c for c in pending if c not in copied]
        print(f"[xtf] {len(cells) - len(pending)} complete, skipped; {len(pending)} to run")
        if not pending:
            return []
        if getattr(self.launcher, "_EXECUTOR", None) == "slurm":
            self.refuse_unfit(pending)  # the resource planner (xtf/plan.py; cluster.plan_check=false skips it)
            problem = slurm_problem()
            if problem:  # before anything is submitted or written
                print(f"[xtf] cluster=slurm: {problem}")
                raise SystemExit(2)
        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        started = time.time()
        returns, why, launch_error = [], {}, None
        try:
            returns = list(self.launcher.launch([c.overrides for c in pending], initial_job_idx=0))
        except Exception as e:  # noqa: BLE001 - submitit raises on the first cancelled or killed job
            launch_error = e
            returns, why = self.wait_for_slurm_jobs(len(pending), started)
        if launch_error is not None and all(r is None for r in returns) and not why:  # no job ran: say why
            first = (str(launch_error).strip().splitlines() or [""])[0]
            why = {i: f"not submitted: {type(launch_error).__name__}: {first}" for i in range(len(pending))}
        rows = [self.outcome(c, returns[i] if i < len(returns) else None, why.get(i), started)
                for i, c in enumerate(pending)]
        self.report(cells, pending, rows, launch_error)
        if any(status != "complete" for status, _ in rows):
            raise SystemExit(1)
        return [returns]

    def refuse_unfit(self, cells: list[Cell]) -> None:
        """Before a SLURM submission: stop, naming each cell and what to change, when the planner estimates that
        a cell cannot fit the cluster profile's GPUs (cluster.gpu_mem_gb)."""
        from xtf.plan import fit_problem

        problems = [p for p in (fit_problem(self.hydra_context.config_loader.load_sweep_config(
            self.config, list(c.overrides)), c.name) for c in cells) if p]
        if problems:
            print(f"[xtf] {len(problems)} cell(s) cannot fit the GPUs of the cluster profile (an estimate, make plan; "
                  f"cluster.plan_check=false skips this check); nothing submitted:",
                  *(f"[xtf]   {p}" for p in problems), sep="\n")
            raise SystemExit(2)

    def wait_for_slurm_jobs(self, n: int, started: float) -> tuple[list, dict]:
        """After submitit's launch() raised on one job of the array, the others may still be running: wait for
        every job of this launch; return what each returned (None where nothing) and the SLURM state of those
        that returned nothing, by job number."""
        pattern = str(getattr(self.launcher, "params", {}).get("submitit_folder", ""))
        if getattr(self.launcher, "_EXECUTOR", None) != "slurm" or "%j" not in pattern:
            return [], {}
        import submitit

        root = Path(pattern.split("%j")[0])
        jobs = {}
        for d in root.glob("*_*"):  # one folder per array task: <array job id>_<task index = job number>
            array_id, _, task = d.name.partition("_")
            if array_id.isdigit() and task.isdigit() and int(task) < n and d.stat().st_mtime >= started - 5:
                jobs[int(task)] = submitit.SlurmJob(folder=pattern, job_id=d.name)
        if not jobs:
            print("[xtf] the launcher failed before any job of the array was submitted")
            return [None] * n, {}
        print(f"[xtf] a job of the array did not finish; waiting for the rest of the array ({len(jobs)} jobs)")
        out, why = [None] * n, {}
        for i, job in sorted(jobs.items()):
            try:
                # Task 0 (global rank 0, which writes the record) only, as the launcher's results()[0]: a
                # multi-task job (cluster.tasks_per_node / nodes) has one result per task.
                out[i] = job.results()[0]
            except Exception:  # noqa: BLE001 - cancelled / killed: reported as "did not finish"
                why[i] = f"SLURM job {job.job_id}: {job.state}"
        return out, why

    @staticmethod
    def outcome(cell: Cell, ret, why: Optional[str], started: float) -> tuple[str, str]:
        from xtf.results import load_record

        if load_record(cell.folder) is not None:
            return "complete", str(cell.folder)
        if ret is not None and ret.status == JobStatus.FAILED:
            e = ret._return_value
            return "FAILED", f"{type(e).__name__}: {e}"
        note = read_failure(cell.folder)
        if note and note.get("unix_time", 0) >= started - 1:
            return "FAILED", f"{note['type']}: {note['message']}"
        return "did not finish", why or "no results.json (cancelled, killed, or timed out too many times)"

    @staticmethod
    def report(cells, pending, rows, launch_error) -> None:
        counts = {s: sum(r[0] == s for r in rows) for s in ("complete", "FAILED", "did not finish")}
        skipped = len(cells) - len(pending)
        print(f"[xtf] sweep summary: {len(cells)} cells: {skipped} skipped (complete), "
              + ", ".join(f"{n} {s}" for s, n in counts.items()))
        width = max(len(c.name) for c in pending)
        for cell, (status, detail) in zip(pending, rows):
            first = detail.strip().splitlines()[0] if detail.strip() else ""
            print(f"[xtf]   {status:<14} {cell.name:<{width}}  {first}")
        if launch_error is not None:
            text = " ".join(str(launch_error).split())[:600]
            print(f"[xtf] (the launcher raised {type(launch_error).__name__}: {text}; every cell is reported above)")
        if counts["complete"] < len(rows):
            print("[xtf] relaunch the same command to run only the cells that are not complete")

