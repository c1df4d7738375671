"""The run summary (xtf.summary) from hand-made records: an offline method's kept fraction is its mask's; an online
method's (xtf.online) is the one it chose during training, labelled as such, never its all-keeping offline mask's."""

import json

import pytest

from xtf.summary import compare_lines, kept_fraction, summary_lines

OFFLINE = {"task": "gsm8k", "model": "m", "method": "xtf", "seed": 0, "status": "complete",
           "metrics": {"accuracy": 0.5, "n_eval": 20},
           "mask": {"kept_fraction": 0.675, "answer_tokens": 6182, "noisy_fraction_kn": 0.277}}
ONLINE = {**OFFLINE, "method": "slm", "mask": {"kept_fraction": 1.0, "answer_tokens": 6182},
          "training": {"steps": 3, "online": {"method": "slm", "kept_fraction": 0.6,
                                              "kept_fraction_per_step": [[1, 0.5], [2, 0.6], [3, 0.7]]}}}


def test_kept_fraction_offline_online_and_none():
    assert kept_fraction(OFFLINE) == (0.675, False)
    assert kept_fraction(ONLINE) == (pytest.approx(0.6), True)
    half = {**ONLINE, "mask": {"kept_fraction": 0.5}}   # an offline mask under an online rule: both apply
    assert kept_fraction(half) == (pytest.approx(0.3), True)
    assert kept_fraction({"method": "none", "mask": None}) == (None, False)
    assert kept_fraction({**ONLINE, "training": {"online": {"kept_fraction": None}}}) == (None, True)


def test_summary_line_of_an_online_method_says_online(tmp_path):
    offline = summary_lines(OFFLINE, tmp_path)
    assert "kept answer tokens: 0.675 of 6182; flagged as noise per attribute: kn 0.277" in offline
    online = "\n".join(summary_lines(ONLINE, tmp_path))
    assert ("kept answer tokens, chosen online during training (slm): 0.600 (kept or loss-weighted share of the "
            "trainable tokens over 3 steps); the offline mask keeps 1.000 of 6182") in online
    assert "kept answer tokens: 1.000" not in online


def test_compare_lines_mark_online_kept_fractions(tmp_path):
    for i, r in enumerate([OFFLINE, ONLINE]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(r))
    lines = compare_lines(tmp_path)
    slm = next(line for line in lines if " slm " in line)
    xtf = next(line for line in lines if " xtf " in line)
    assert " 0.600* " in slm and " 1.000" not in slm and " 0.675  " in xtf
    assert lines[-1].startswith("* kept fraction chosen online during training")
    (tmp_path / "1" / "results.json").unlink()
    assert not compare_lines(tmp_path)[-1].startswith("*")   # no online run, no footnote
