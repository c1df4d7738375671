"""experiments/bench_run.py (make bench-run): the goal lines under its table — the quiet median and the spread it
states (a 95 % prediction interval for one more quiet run), the busy ratio against that median, and the fresh
clone's check against the spread. The benchmark itself runs the quickstart (minutes): `make bench-run`, not a
test."""

from __future__ import annotations

from conftest import load_script

bench = load_script("bench_run")


def _run(condition: str, repeat: int, method: str, wall: float, peak: float = 2500.0) -> dict:
    return {"condition": condition, "repeat": repeat, "method": method, "wall_s": wall, "peak_mib": peak,
            "threads": {"torch": 2}, "timings": {"finetune": 100.0}, "load_before": 0.1, "load_after": 1.0}


RUNS = [_run("quiet", 1, "normal", 200), _run("quiet", 1, "xtf", 250),     # 450 s
        _run("quiet", 2, "normal", 230), _run("quiet", 2, "xtf", 260),     # 490 s
        _run("quiet", 3, "normal", 210), _run("quiet", 3, "xtf", 260),     # 470 s
        _run("busy", 1, "normal", 500), _run("busy", 1, "xtf", 600, peak=3100)]


def _fresh(runs_s: float) -> dict:
    return {"date": "2026-12-07T20:00:00", "git": "0123456789abcdef", "load_before": 0.2, "install_s": 120.0,
            "convert_s": 30.0, "runs_s": runs_s}


def test_median_spread_ratio_and_memory():
    lines = bench.summary(RUNS, None)
    # totals 450, 490, 470: mean 470, sd 20; 470 ± 4.303 · 20 · √(4/3) = 470 ± 99.4
    assert ("- quiet, both runs: median 470 s (7.8 min) of 3 repeat(s), range 450–490 s; stated spread 371–569 s (95 % "
            "prediction interval for one more quiet run: mean ± t(0.975, 2) · sd · √(1 + 1/3))") in lines
    assert "- both runs <= 300 s on the quiet CPU (median): NOT met" in lines
    assert "- busy / quiet median <= 2.5: met (2.34x)" in lines               # 1100 / 470
    assert "- peak RSS <= 3072 MiB in every run: NOT met (largest 3100 MiB)" in lines
    assert not any("fresh clone" in line for line in lines)


def test_fresh_clone_is_set_against_the_spread():
    inside = bench.summary(RUNS, _fresh(480.0))[-1]
    assert inside.startswith("- fresh clone (2026-12-07T20:00:00, git 0123456789ab, load before 0.20)")
    assert "`make install` 120 s, the one-time GGUF conversion 30 s, `make run` 480 s: within the stated" in inside
    assert "within the stated quiet spread" in bench.summary(RUNS, _fresh(520.0))[-1]   # above the range, inside
    assert "OUTSIDE the stated quiet spread" in bench.summary(RUNS, _fresh(570.0))[-1]
    assert "OUTSIDE the stated quiet spread" in bench.summary(RUNS, _fresh(370.0))[-1]
    one = [r for r in RUNS if r.get("repeat") == 1]                  # one repeat states no spread: never "within"
    assert "no stated spread (one repeat" in "\n".join(bench.summary(one, None))
    assert "OUTSIDE the stated quiet spread" in bench.summary(one, _fresh(450.0))[-1]


def test_the_prediction_interval_of_a_few_values():
    assert bench.prediction_interval([5.0]) is None
    lo, hi = bench.prediction_interval([1.0, 3.0])                 # mean 2, sd √2: 2 ± 12.706 · √2 · √1.5
    assert abs(hi - 2 - 12.706 * 2 ** 0.5 * 1.5 ** 0.5) < 1e-9 and abs((lo + hi) / 2 - 2) < 1e-12


def test_a_quiet_goal_met_by_the_median():
    fast = [_run("quiet", 1, "normal", 100), _run("quiet", 1, "xtf", 150)]
    assert "- both runs <= 300 s on the quiet CPU (median): met" in bench.summary(fast, None)
