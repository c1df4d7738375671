"""What sets the runs of a sweep apart: the config keys whose values differ between runs that share model, task,
method and seed (e.g. method.kn.threshold over an XTF threshold sweep), read from each record's `config`.
xtf.summary prints a column per such key, so no two printed rows look the same."""

from __future__ import annotations

import json

# Config sections that say where a run's files go, how it is logged or spread over devices: never what sets its
# rows apart (the same list as xtf.results' keys outside the run id, plus the seed, which has its own column).
_NOT_VARYING = ("paths", "wandb", "experiment", "force", "device", "dist", "export", "seed")


def flat_config(record: dict) -> dict[str, str]:
    """The record's `config` as {dotted key: value as text} (lists as JSON), without _NOT_VARYING's sections."""
    out: dict[str, str] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif prefix.split(".")[0] not in _NOT_VARYING:
            out[prefix] = value if isinstance(value, str) else json.dumps(value)

    walk("", record.get("config") or {})
    return out


def _group(record: dict) -> tuple:
    return record["model"], record["task"], record["method"], record["seed"]


def varying_columns(records: list[dict]) -> tuple[list[str], list[list[str]]]:
    """(keys, one list of texts per record): the config keys whose values differ between records of the same
    model, task, method and seed (absent counts as a value, "—"), in the order the configs list them; a record's
    text for a key is blank where the key does not vary within its own group (e.g. a normal run beside an XTF
    threshold sweep: its unused threshold would mislead)."""
    flat = [flat_config(r) for r in records]
    groups: dict[tuple, list[dict]] = {}
    for r, c in zip(records, flat):
        groups.setdefault(_group(r), []).append(c)
    varies = {g: {k for k in dict.fromkeys(k for c in configs for k in c)
                  if len({c.get(k, "—") for c in configs}) > 1} for g, configs in groups.items()}
    keys = list(dict.fromkeys(k for c in flat for k in c if any(k in v for v in varies.values())))
    return keys, [[c.get(k, "—") if k in varies[_group(r)] else "" for k in keys] for r, c in zip(records, flat)]


def natural(text: str) -> tuple:
    """A sort key that orders numbers by value (0.5 before 10) and other text alphabetically after them."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)
