"""The user errors shared across modules: what the command line reports in one line, without a traceback
(xtf.cli), and what modules far apart raise and catch. At the bottom of the import graph: it imports nothing from
xtf, so any module may raise these without importing the module that owns the subject (the config, the tasks, the
models, the run lock, the experiment specs). Each stays importable from its old home too (xtf.config.ConfigError,
xtf.tasks.common.DataError, xtf.models.WeightsNotFound, xtf.run_lock.RunBusy, xtf.experiment.SpecError)."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what is allowed."""


class DataError(ValueError):
    """A data file or row is malformed; the message names the file, the line and the field."""


class WeightsNotFound(RuntimeError):
    """A model's weights are neither local nor downloadable here; the message says how to get them."""


class RunBusy(RuntimeError):
    """Another process is running the same run (same experiment and run id)."""


class SpecError(ValueError):
    """A malformed experiment spec; the message names the file, the key and what is allowed."""
