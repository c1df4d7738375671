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


def test_a_score_only_summary_says_so_and_shows_detection_but_no_accuracy(tmp_path):
    detection = {"overall": {"n_tokens": 500, "n_noise_tokens": 40, "n_masked": 30,
                             "mask": {"precision": 0.8, "recall": 0.6, "f1": 0.686}}}
    scored = {**OFFLINE, "mode": "score_only", "metrics": {}, "detection": detection}
    text = "\n".join(summary_lines(scored, tmp_path))
    assert "score only: nothing fine-tuned or evaluated" in text and "decisions.npz" in text
    assert "accuracy" not in text
    assert "finds 40 noise tokens of 500 with precision 0.800, recall 0.600, F1 0.686" in text
    assert "noise annotations" not in "\n".join(summary_lines(OFFLINE, tmp_path))
    assert "accuracy on test: 0.500" in "\n".join(summary_lines({**OFFLINE, "detection": detection}, tmp_path))
