"""A limit above what a split holds is said and recorded, never silently shortened (xtf.data.limits_not_met)."""

from __future__ import annotations

import logging

from conftest import compose

from xtf import data
from xtf.validate import validate


def test_a_limit_above_the_split_is_printed_and_recorded(caplog):
    cfg = validate(compose(["task=synth", "task.options.n_train=16", "task.options.n_test=4", "data.limit=100000",
                            "data.eval_limit=50"]))
    with caplog.at_level(logging.WARNING, logger="xtf.data"):
        used = data.select(cfg)
    assert len(used.train) == 16 and len(used.test) == 4
    said = caplog.text
    assert "data.limit=100000: 16 training rows available" in said
    assert "data.eval_limit=50: 4 test rows available" in said
    assert data.record_section(used, "test")["limits_not_met"] == [
        "data.limit=100000: 16 training rows available", "data.eval_limit=50: 4 test rows available"]


def test_a_limit_that_is_met_says_nothing(caplog):
    cfg = validate(compose(["task=synth", "task.options.n_train=16", "data.limit=8"]))
    with caplog.at_level(logging.WARNING, logger="xtf.data"):
        used = data.select(cfg)
    assert len(used.train) == 8 and "available" not in caplog.text
    assert data.record_section(used, "test")["limits_not_met"] == []
