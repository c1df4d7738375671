"""The doorway: compose the config with Hydra, validate it, run one experiment cell.
    python run.py                                        # the embedded default: synth task, tiny model
    python run.py -m method=normal,xtf seed=0,1,2        # a sweep (cluster=slurm: on SLURM; slurm/README.md)
"""

import logging

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from xtf.config import register_schema
from xtf.overrides import exit_on_bad_overrides

log = logging.getLogger("xtf")
register_schema()  # every schema key with its default, so any key can be overridden on the command line


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from xtf.config import ConfigError, validate
    from xtf.models import WeightsNotFound
    from xtf.pipeline import run
    from xtf.quiet import remove_failed_outputs, silence_known_warnings
    from xtf.sandbox import SandboxUnavailable
    from xtf.tasks.common import DataError

    silence_known_warnings()
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        if not multirun and HydraConfig.get().sweeper.get("experiment_file"):
            raise ConfigError("hydra.sweeper.experiment_file runs an experiment's grid: add -m (or: make sweep EXP=)")
        run(validate(cfg))
    except BaseException as e:
        if not multirun:  # its Hydra folder (outputs/hydra/<date>/<time>) is noise; XTF_KEEP_FAILED_OUTPUTS=1 keeps it
            remove_failed_outputs(HydraConfig.get().runtime.output_dir)
        if multirun or not isinstance(e, (ConfigError, WeightsNotFound, DataError, SandboxUnavailable)):
            raise  # a sweep reports it with its cell (exiting here would end the sweep); a bug keeps its traceback
        log.error("%s: %s", type(e).__name__, e)  # a user error: one line, no traceback
        raise SystemExit(2) from None


if __name__ == "__main__":
    exit_on_bad_overrides()  # a typo gets the project's message (key, close matches), not Hydra's "use +key"
    main()
