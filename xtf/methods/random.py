"""random, the control that separates denoising from "less data": in each sample, mask as many answer tokens as
`method.match` masks there (at random positions), or a fixed `method.ratio` of them (match=null); seeded by the run
seed. It reads the scores and the keys of the method it matches.

    python run.py method=random                     # match: xtf (conf/method/random.yaml)
    python run.py method=random method.match=null method.ratio=0.3
"""

from __future__ import annotations

from xtf import rules
from xtf.errors import ConfigError
from xtf.methods.registry import METHODS as REGISTERED
from xtf.methods.registry import Method, get, method_keys, names, scores_needed, with_name
from xtf.methods.tokens import answer, protected


def mask(rows, scores, method, seed, special=frozenset()):
    """Drawn among the answer tokens that are not protected (method.protect_answer)."""
    n_answer = [int(answer(r).sum()) for r in rows]
    maskable = [answer(r) & ~protected(r, method) for r in rows]
    n_maskable = [int(m.sum()) for m in maskable]
    if method.match is not None:
        matched, _, _ = get(method.match).mask(rows, scores, method, seed, special)
        wanted = [a - int(k.sum()) for a, k in zip(n_answer, matched)]
        n_mask = [min(w, n) for w, n in zip(wanted, n_maskable)]  # match=df drops protected tokens with a sample
        drawn = rules.random_matched(n_mask, n_maskable, seed)
    else:
        wanted = n_mask = []
        drawn = rules.random_ratio(n_maskable, method.ratio, seed)
    keeps = []
    for r, m, d in zip(rows, maskable, drawn):
        keep = answer(r).copy()
        keep[m] = d
        keeps.append(keep)
    return keeps, {}, {"match": method.match, "ratio": method.ratio if method.match is None else None,
                       "protected_unmatched": sum(wanted) - sum(n_mask)}


def needs(method) -> tuple[str, ...]:
    """The scores of the matched method (none for a ratio)."""
    return () if method.match is None else scores_needed(with_name(method, method.match))


def keys(method) -> frozenset[str]:
    """`match`, and `ratio` without a match, else what the matched method reads under the same settings."""
    if method.match is None:
        return frozenset({"match", "ratio"})
    return frozenset({"match"}) | method_keys(with_name(method, method.match))


def check(run, task_options) -> None:
    if run.method.match is not None and run.method.match not in REGISTERED:
        raise ConfigError(f"method.match={run.method.match!r} is unknown; choose one of {names()}")


METHOD = Method(name="random", kind="offline", summary="mask as many tokens as `match` does, at random positions",
                needs=needs, keys=keys, mask=mask, check=check)
METHODS = (METHOD,)
