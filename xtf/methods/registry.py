"""The method registry: `Method`, what a method tells the rest of the harness, and `METHODS`, name → Method.

Each method module of this package (xtf/methods/<name>.py) builds its `Method`; xtf/methods/__init__.py registers
every one of them. The schema's checks (xtf.validate, xtf.unread), the scoring (xtf.method_scores), the masking
(xtf.masking), the online training step (xtf.online), the pipeline, the planner and the dataset card ask this
registry what a method does; none of them names a method. At the bottom of the package (with
xtf.methods.tokens: numpy, no torch).

The registry and every method module import no torch (config validation imports them: a bad value is reported
before torch loads). What needs torch or transformers (an online rule, its signal providers, an augmentation) is
named by its "module:attribute" path (`Ref`) and imported by `resolve` where it runs: xtf.online when training
starts, xtf.pipeline before tokenising.

    from xtf import methods
    spec = methods.get("stm")                       # Method(name="stm", kind="offline", needs=("nll",), ...)
    methods.register(Method(name="mine", ...))      # a method defined outside the package (docs/add-a-method.md)

A field that depends on the run's settings takes a function of the method config (`MethodConfig`, xtf.config) and
returns what the constant would be; `needs`, `keys`, `detection_score` accept either.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from xtf.errors import ConfigError
from xtf.methods.tokens import keep_all_answer_tokens

# The MethodConfig keys every method reads (xtf.unread refuses an override of any other key a method does not
# declare in `keys`); a method that needs the reference losses ("ref_nll") also reads the reference model's keys.
COMMON_KEYS = frozenset({"name", "finetune", "epochs_factor", "exempt_special", "protect_answer", "protocol"})
REFERENCE_KEYS = ("reference_warmup", "reference_lora_r", "reference_lora_alpha", "reference_lora_dropout",
                  "reference_lr", "reference_warmup_ratio")


# A callable, or the "module:attribute" path of one (`resolve` imports it when it is first used): how a method names
# code that loads torch or transformers, so that the registry and its method modules load neither.
Ref = str | Callable


def _never(method) -> bool:
    return False


@dataclass(frozen=True)
class Method:
    """What the harness needs to know about one method (`conf/method/<name>.yaml` selects it by `name`)."""

    name: str
    # offline: a mask from cached scores before training (`mask`); online: a per-batch selection during training
    # (`select`); augment: a new training set (`augment`); baseline: none of these (normal, none).
    kind: Literal["offline", "online", "augment", "baseline"]
    summary: str                                    # one line: what it does (a name clash in `register` shows it)
    # The scores it reads (xtf.scoring names: "nll", "ref_nll", "ri", "kn", "tr"), computed and cached before
    # training; a tuple, or a function of the method config (XTF: its attributes).
    needs: tuple[str, ...] | Callable[[Any], tuple[str, ...]] = ()
    # The MethodConfig keys it reads besides COMMON_KEYS (a section such as "stm" stands for method.stm.*).
    keys: tuple[str, ...] | Callable[[Any], frozenset[str]] = ()
    # fn(rows, scores, method, seed, special) -> (keeps, noisy_by_attribute, info) (xtf.masking's contract).
    mask: Callable = keep_all_answer_tokens
    # Online: select(step, method) -> (labels, weights) and signals(method) -> per-step signal names (xtf.online).
    select: Optional[Ref] = None
    signals: Callable[[Any], tuple[str, ...]] = lambda method: ()
    signal_providers: Mapping[str, Ref] = field(default_factory=dict)  # signal name → provider(model, method)
    # Augment: fn(cfg, task, examples, device) -> (examples, record) before tokenisation (the pipeline).
    augment: Optional[Ref] = None
    # The raw score it ranks tokens by, a key of xtf.masking.NOISE_SIDE (whose value says which side is noise), for
    # the AUROC column of the detection report; None when it has no single one.
    detection_score: Optional[str] | Callable[[Any], Optional[str]] = None
    finetunes: bool = True                          # False: the base model is evaluated (method=none)
    # True when its scorer trains the run's result itself (TC's self-evolving chain): the pipeline evaluates the
    # model the scores came with (xtf.method_scores: "trained_model") instead of fine-tuning the base.
    trains_own_model: Callable[[Any], bool] = _never
    # The planner (xtf.plan): training rows relative to the task's (DF drops samples, DA adds paraphrases), and
    # tokens generated before training per training token (DA's paraphrases).
    rows_factor: Callable[[Any], float] = lambda method: 1.0
    generated_per_token: Callable[[Any], float] = lambda method: 0.0
    # check(run, task_options) raises xtf.errors.ConfigError for settings the method cannot run with (xtf.validate).
    check: Callable[[Any, Any], None] = lambda run, task_options: None


# name → Method: filled by xtf/methods/__init__.py (and `register` for a method defined elsewhere).
METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add `method` to the registry (a second method of the same name is refused); returns it."""
    if method.name in METHODS and METHODS[method.name] is not method:
        raise ValueError(f"a method named {method.name!r} is registered already ({METHODS[method.name].summary})")
    METHODS[method.name] = method
    return method


def get(name: str) -> Method:
    """The registered method `name`; ConfigError naming the registered ones otherwise."""
    if name not in METHODS:
        raise ConfigError(f"method.name={name!r} is unknown; choose one of {sorted(METHODS)}")
    return METHODS[name]


def resolve(ref: Ref) -> Callable:
    """The callable `ref` names: imported from its "module:attribute" path (that module may load torch), or `ref`
    itself. Called where the code runs (xtf.online, xtf.pipeline), never while a config is validated."""
    if callable(ref):
        return ref
    module, _, attribute = ref.partition(":")
    if not module or not attribute:
        raise ValueError(f"{ref!r}: a method names a callable by its 'module:attribute' path")
    return getattr(importlib.import_module(module), attribute)


def references(method: Method) -> list[str]:
    """The "module:attribute" paths `method` names (its select, signal providers and augment given as paths)."""
    refs = [method.select, method.augment, *method.signal_providers.values()]
    return [r for r in refs if isinstance(r, str)]


def _value(field, method):
    return field(method) if callable(field) else field


def scores_needed(method) -> tuple[str, ...]:
    """The scores `method` (a MethodConfig) reads, in the order they are computed."""
    return tuple(_value(get(method.name).needs, method))


def method_keys(method) -> frozenset[str]:
    """The MethodConfig fields `method` reads (top level: "ri" stands for method.ri.*), under its own settings:
    COMMON_KEYS, the method's `keys`, and the reference model's keys when it reads the reference losses."""
    own = set(COMMON_KEYS) | set(_value(get(method.name).keys, method))
    if "ref_nll" in scores_needed(method):
        own |= set(REFERENCE_KEYS)
    return frozenset(own)


def method_score(method) -> str | None:
    """The raw score a method ranks tokens by (a key of xtf.masking.NOISE_SIDE), or None (no method, or none)."""
    return None if method is None else _value(get(method.name).detection_score, method)


def names(kind: str | None = None) -> list[str]:
    """The registered names (of one kind), sorted."""
    return sorted(n for n, m in METHODS.items() if kind is None or m.kind == kind)


def with_name(method, name: str):
    """`method` (a MethodConfig) read as method `name` with its own settings (random's `match`)."""
    return dataclasses.replace(method, name=name)
