"""The doorway, as a function: compose the config with Hydra, validate it, run one experiment cell. `run.py` and the
installed command `xtf` (pyproject's [project.scripts]) both call `main`:

    xtf task=sft data.train_file=my.jsonl method=xtf export.enabled=true     # = python run.py ...
    xtf -m method=normal,xtf seed=0,1,2                                      # a sweep
    xtf --help                                                               # Hydra's help: groups and options

The configs are the checkout's conf/ (an editable install, `make install`): the command works from any folder.
"""

from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from xtf import malloc, threads
from xtf.config import register_schema
from xtf.errors import ConfigError, DataError, RunBusy, WeightsNotFound
from xtf.overrides import CONF, exit_on_bad_overrides
from xtf.quiet import remove_failed_outputs, silence_known_warnings
from xtf.sandbox_bwrap import SandboxUnavailable
from xtf.unread import check_overrides_read
from xtf.validate import validate
from xtf.weights import check_available

log = logging.getLogger("xtf")


def _run(cfg: DictConfig) -> None:
    silence_known_warnings()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if not multirun and HydraConfig.get().sweeper.get("experiment_file"):
            raise ConfigError("hydra.sweeper.experiment_file runs an experiment's grid: add -m (or: make sweep EXP=)")
        run_cfg = validate(cfg)
        check_overrides_read(run_cfg, list(HydraConfig.get().overrides.task), sys.argv[1:])  # model=tiny model.path=
        check_available(run_cfg.model)  # a missing model in seconds, before torch and transformers load
        threads.apply()  # torch's CPU threads for this run, from the cores other jobs leave free (recorded)
        from xtf.pipeline import run  # torch, transformers (~a minute on a busy machine): after the config is valid

        run(run_cfg)
    except BaseException as e:
        if not multirun:  # its Hydra folder (outputs/hydra/<date>/<time>) is noise; XTF_KEEP_FAILED_OUTPUTS=1 keeps it
            remove_failed_outputs(HydraConfig.get().runtime.output_dir)
        if multirun or not isinstance(e, (ConfigError, WeightsNotFound, DataError, SandboxUnavailable, RunBusy)):
            raise  # a sweep reports it with its cell (exiting here would end the sweep); a bug keeps its traceback
        log.error("%s: %s", type(e).__name__, e)  # a user error: one line, no traceback
        raise SystemExit(2) from None


def main() -> None:
    """Check the command line's overrides against the schema, then hand over to Hydra (which reads sys.argv)."""
    if not (CONF / "config.yaml").is_file():
        sys.exit(f"xtf: the configs are not at {CONF}: install xtf from its checkout with `pip install -e .` "
                 f"(make install), so that conf/ stays beside the package")
    threads.prepare_environment()  # before torch is loaded: OpenMP threads sleep when they wait (xtf.threads)
    malloc.configure()  # freed tensor memory goes back to the system (xtf.malloc: peak RSS 5.95 -> 1.85 GB)
    register_schema()  # every schema key with its default, so any key can be overridden on the command line
    exit_on_bad_overrides()  # a typo gets the project's message (key, close matches), not Hydra's "use +key"
    hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")(_run)()


if __name__ == "__main__":
    main()
