"""Command-line overrides checked against the typed schema *before* Hydra composes anything.

Hydra answers a typo such as `train.lrr=0.1` with "Key 'lrr' is not in struct ... use +train.lrr", which
suggests adding the typo. This check answers with the project's message instead: the key, its close matches
and the valid keys (exit status 2, no traceback). run.py calls it on sys.argv; tests call `check_overrides`.

    python run.py train.lrr=0.1   # ConfigError: unknown key 'train.lrr'. Did you mean ['train.lr', 'train.lora_r']? ...
    python run.py method=xtff     # ConfigError: method=xtff: no such option. Did you mean ['xtf', ...]? ...

Only plain overrides (`key=value`) are checked; `+key=` / `++key=` / `~key` and `hydra.*` go to Hydra and to
xtf.validate.validate as before. The schema is xtf.config's (every key of RunConfig); `task.options.*` is checked
against the chosen task's Options dataclass, `cluster.*` against the chosen conf/cluster profile.
"""

from __future__ import annotations

import dataclasses
import difflib
import sys
from pathlib import Path

import yaml

from xtf import tasks
from xtf.config import schema_defaults
from xtf.errors import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def _choices(parsed, group: str, default: str | None) -> list[str]:
    """The option(s) the command line picks for a config group (all of them in a sweep), else the default."""
    for o in parsed:
        if o.key_or_group == group and o.package is None and o.type.name == "CHANGE":
            return [str(v) for v in (o.sweep_string_iterator() if o.is_sweep_override() else [o.value()])]
    return [default] if default else []


def _defaults(conf: Path) -> dict[str, str]:
    """{group: default option} from conf/config.yaml's defaults list."""
    raw = yaml.safe_load((conf / "config.yaml").read_text()).get("defaults", [])
    return {k: v for d in raw if isinstance(d, dict) for k, v in d.items() if isinstance(v, str)}


def _unknown(key: str, prefix: str, names, where: str = "") -> ConfigError:
    """The project's message for an unknown key: close matches of its last part, then every valid key."""
    names = sorted(set(names))
    close = [prefix + n for n in difflib.get_close_matches(key.rsplit(".", 1)[-1], names, n=3)]
    hint = f" Did you mean {close}?" if close else ""
    return ConfigError(f"unknown key '{key}'{where}.{hint} Valid keys: {[prefix + n for n in names]}")


def _task_option_keys(task: str) -> list[str] | None:
    module = tasks.TASKS.get(task)
    return None if module is None else [f.name for f in dataclasses.fields(module.Options)]


def _cluster_keys(conf: Path, profile: str) -> list[str] | None:
    path = conf / "cluster" / f"{profile}.yaml"
    return list((yaml.safe_load(path.read_text()) or {}).get("cluster", {})) if path.is_file() else None


def check_overrides(overrides: list[str], conf: Path = CONF) -> None:
    """Raise ConfigError for the first plain override whose key is not in the schema, or whose config-group
    option does not exist; Hydra's own syntax errors are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return  # a syntax error: Hydra's message shows where it is
    groups = sorted(d.name for d in conf.iterdir() if d.is_dir() and d.name not in ("local", "hydra"))
    defaults, schema = _defaults(conf), schema_defaults()
    for o in parsed:
        key = o.key_or_group
        if o.type.name != "CHANGE" or o.package is not None or key.startswith("hydra") or "/" in key:
            continue
        if key in groups:
            options = sorted(p.stem for p in (conf / key).glob("*.yaml"))
            for v in _choices([o], key, None):
                if v not in options and v not in ("null", "None"):
                    close = difflib.get_close_matches(v, options, n=3, cutoff=0.5)
                    hint = f" Did you mean {close}?" if close else ""
                    raise ConfigError(f"{key}={v}: no such option in conf/{key}/.{hint} Choose one of {options}")
            continue
        parts = key.split(".")
        if parts[0] == "cluster" and len(parts) > 1:
            for profile in _choices(parsed, "cluster", defaults.get("cluster")):
                valid = _cluster_keys(conf, profile)
                if valid is not None and parts[1] not in valid:
                    others = [p.stem for p in (conf / "cluster").glob("*.yaml") if p.stem != profile
                              and parts[1] in (_cluster_keys(conf, p.stem) or [])]
                    where = f" in cluster={profile}" + (f" (a key of cluster={others[0]}: add cluster={others[0]})"
                                                        if others else "")
                    raise _unknown(key, "cluster.", valid, where)
            continue
        if parts[:2] == ["task", "options"] and len(parts) > 2:
            for task in _choices(parsed, "task", defaults.get("task")):
                valid = _task_option_keys(task)
                if valid is not None and parts[2] not in valid:
                    raise _unknown(key, "task.options.", valid, f" for task={task}")
            continue
        node, path = schema, []
        for part in parts:
            if not isinstance(node, dict):
                raise ConfigError(f"'{'.'.join(path)}' is a value, not a mapping: '{key}' does not exist")
            if part not in node:
                raise _unknown(key, ".".join(path) + "." if path else "", list(node) + ([] if path else groups))
            node, path = node[part], path + [part]


def exit_on_bad_overrides(argv: list[str] | None = None) -> None:
    """run.py's guard on its command line: print the ConfigError as run.py prints any user error, exit 2."""
    from hydra._internal.utils import get_args_parser

    args, _ = get_args_parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    try:
        check_overrides(args.overrides)
    except ConfigError as e:
        print(f"ConfigError: {e}", file=sys.stderr)
        raise SystemExit(2) from None
