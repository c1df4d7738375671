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


# ---------------------------------------------------------------------------------------------------------------
# Paired differences to a baseline (`python -m xtf.summary <folder> --baseline normal`, what `make run` prints)

def _fake_run(folder, method, seed, nll, correct, ids=None, tokens=None, per_question_nll=True):
    """A complete run folder: results.json and predictions.jsonl as xtf.evaluate writes them (exact match)."""
    ids = ids or [f"q{i}" for i in range(len(nll))]
    tokens = tokens or [10 + i % 7 for i in range(len(nll))]
    run_id = f"m-gsm8k-{method}-s{seed}-{len(ids)}"
    (folder / run_id).mkdir(parents=True)
    rows = [{"id": q, "gold": "1", "correct_strict": bool(c), "correct_flexible": True}
            | ({"answer_nll": v, "answer_tokens": t} if per_question_nll else {})
            for q, v, c, t in zip(ids, nll, correct, tokens)]
    (folder / run_id / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    metrics = {"accuracy": sum(map(bool, correct)) / len(ids), "n_eval": len(ids),
               "answer_nll": sum(v * t for v, t in zip(nll, tokens)) / sum(tokens), "answer_nll_tokens": sum(tokens)}
    record = {"status": "complete", "run_id": run_id, "model": "m", "task": "gsm8k", "train": "lora",
              "method": method, "seed": seed, "metrics": metrics,
              "eval_protocol": {"name": "greedy_exact_match", "extractors": ["strict", "flexible"]}}
    (folder / run_id / "results.json").write_text(json.dumps(record))
    return record


NLL = [1.0 + 0.1 * (i % 9) for i in range(40)]


def test_paired_lines_answer_with_a_ci_and_say_whether_it_excludes_zero(tmp_path):
    normal = _fake_run(tmp_path, "normal", 0, NLL, [0] * 40)
    xtf = _fake_run(tmp_path, "xtf", 0, [v - 0.05 for v in NLL], [1] + [0] * 39)
    lines = compare_lines(tmp_path, baseline="normal")
    at = lines.index("paired differences to normal on the same evaluated questions (xtf.paired):")
    assert lines[at + 1] == ("xtf − normal (m, gsm8k, lora, seed 0): paired bootstrap over 40 questions, 10,000 "
                             "resamples, seed 0")
    diff = xtf["metrics"]["answer_nll"] - normal["metrics"]["answer_nll"]   # the two printed numbers' difference
    assert lines[at + 2] == (f"  answer NLL: {diff:+.4f} nats/token, 95% CI [-0.0500, -0.0500]; the 95% CI excludes "
                             f"0: xtf is lower than normal (better)")
    assert lines[at + 3] == ("  accuracy: +0.0250, 95% CI [+0.0000, +0.0750]; the 95% CI includes 0: no difference "
                             "between xtf and normal is detectable at this n")   # 1 of 40 against 0 of 40
    assert "paired differences" not in "\n".join(compare_lines(tmp_path))   # only with a baseline


def test_paired_accuracy_says_why_not_at_the_floor_and_pairing_refuses_other_questions(tmp_path):
    _fake_run(tmp_path / "floor", "normal", 0, NLL, [0] * 40)
    _fake_run(tmp_path / "floor", "xtf", 0, NLL[::-1], [0] * 40)
    text = "\n".join(compare_lines(tmp_path / "floor", baseline="normal"))
    assert "  accuracy: not shown: neither run answered any of the 40 questions correctly" in text
    assert "the 95% CI includes 0: no difference between xtf and normal" in text   # same values, other order
    _fake_run(tmp_path / "other", "normal", 0, NLL, [1] * 40)
    _fake_run(tmp_path / "other", "xtf", 0, NLL, [1] * 40, ids=[f"x{i}" for i in range(40)])
    text = "\n".join(compare_lines(tmp_path / "other", baseline="normal"))
    assert "  answer NLL: not paired: cannot pair xtf with normal: their question ids differ (40 vs 40 questions; " \
           "only in xtf: 40 ['x0', 'x1', 'x10']" in text
    assert "  accuracy: not paired: cannot pair xtf with normal" in text


def test_runs_without_the_benchmark_pair_the_nll_and_say_accuracy_was_not_measured(tmp_path):
    """eval.benchmark=false (the quickstart): the table and the paired lines say accuracy was not measured, not
    that it is missing from old predictions."""
    for method, nll in (("normal", NLL), ("xtf", [v - 0.05 for v in NLL])):
        record = _fake_run(tmp_path, method, 0, nll, [0] * 40)
        folder = tmp_path / record["run_id"]
        rows = [{k: v for k, v in json.loads(line).items() if not k.startswith("correct_")}
                for line in (folder / "predictions.jsonl").read_text().splitlines()]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        record["metrics"].pop("accuracy")
        record["config"] = {"eval": {"benchmark": False}}
        record["eval_protocol"] = {"name": "answer_nll"}
        (folder / "results.json").write_text(json.dumps(record))
    lines = compare_lines(tmp_path, baseline="normal")
    rows = [line for line in lines if line.startswith("m ")]
    assert len(rows) == 2 and all("  not measured  " in line and "n/a" not in line for line in rows)
    assert "  answer NLL: -0.0500 nats/token, 95% CI [-0.0500, -0.0500]; the 95% CI excludes 0" in "\n".join(lines)
    assert lines[-1] == "  accuracy: not measured (eval.benchmark=false: the reference answers' NLL alone)"


def test_paired_lines_over_seeds_and_without_per_question_values(tmp_path):
    for seed in (0, 1):
        _fake_run(tmp_path, "normal", seed, NLL, [1, 0] * 20)
        _fake_run(tmp_path, "xtf", seed, [v + 0.1 for v in NLL], [1, 1] * 20)
    text = "\n".join(compare_lines(tmp_path, baseline="normal"))
    assert ("xtf − normal (m, gsm8k, lora, seeds 0, 1): paired bootstrap over 80 (seed, question) pairs of 2 seeds, "
            "questions resampled within each seed, 10,000 resamples, seed 0") in text
    assert "  answer NLL: +0.1000 nats/token, 95% CI [+0.1000, +0.1000]; the 95% CI excludes 0: xtf is higher than " \
           "normal (worse)" in text
    assert "  accuracy: +0.5000, 95% CI [+0.3" in text and "xtf is higher than normal (better)" in text
    old = _fake_run(tmp_path / "old", "normal", 0, NLL, [1] * 40, per_question_nll=False)
    _fake_run(tmp_path / "old", "xtf", 0, NLL, [1] * 40)
    text = "\n".join(compare_lines(tmp_path / "old", baseline="normal"))
    assert f"  answer NLL: not recorded per question in the predictions.jsonl of {old['run_id']}" in text
    assert "  accuracy: +0.0000" in text


def test_summary_main_takes_a_baseline(tmp_path, capsys):
    from xtf.summary import main

    _fake_run(tmp_path, "normal", 0, NLL, [0] * 40)
    _fake_run(tmp_path, "xtf", 0, NLL, [0] * 40)
    main([str(tmp_path), "--baseline", "normal"])
    assert "xtf − normal (m, gsm8k, lora, seed 0): paired bootstrap" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main([str(tmp_path), "--baseline"])


def test_question_values_take_the_protocols_primary_correctness_and_refuse_a_mismatch(tmp_path):
    from xtf.summary import question_values

    record = _fake_run(tmp_path, "normal", 0, NLL[:20], [1] * 5 + [0] * 15)
    folder = tmp_path / record["run_id"]
    assert sum(v for v, _ in question_values(folder, record)["correct"].values()) == 5   # correct_strict
    lm_eval = {**record, "eval_protocol": {"name": "lm_eval", "primary": "accuracy_flexible"}}
    assert "correct" not in question_values(folder, lm_eval)   # every correct_flexible is true: mean 1 ≠ accuracy 0.25
    assert question_values(folder, {**lm_eval, "metrics": {"accuracy": 1.0}})["correct"]["q0"] == (1.0, 1.0)
    assert question_values(folder, record)["answer_nll"]["q1"] == (NLL[1], 11)
    assert question_values(tmp_path / "absent", record) == {}


def test_paired_lines_say_what_cannot_be_paired_in_a_folder(tmp_path):
    _fake_run(tmp_path, "normal", 0, NLL, [1] * 40)
    text = "\n".join(compare_lines(tmp_path, baseline="normal"))
    assert "  m, gsm8k, lora: only normal runs, nothing to compare with them" in text
    assert "  m, gsm8k, lora: no dft run to compare with" in "\n".join(compare_lines(tmp_path, baseline="dft"))
    _fake_run(tmp_path, "xtf", 0, NLL, [1] * 40)
    _fake_run(tmp_path, "xtf", 0, NLL[:30], [1] * 30)   # the same method and seed with other settings
    text = "\n".join(compare_lines(tmp_path, baseline="normal"))
    assert "  not paired: m, gsm8k, lora, xtf seed 0 has 2 runs in" in text and "ambiguous" in text
    assert "answer NLL: not paired: cannot pair xtf with normal: no seed in common" in text


# ---------------------------------------------------------------------------------------------------------------
# A sweep: runs that share model, task, method and seed are told apart by the config keys that vary between them

def _sweep_record(folder, name, method, config, run_id=None):
    record = {**OFFLINE, "method": method, "run_id": run_id or name,
              "config": {"seed": 0, "experiment": name, "paths": {"results_dir": f"/somewhere/{name}"},
                         "method": {"name": method, **config}, "train": {"lr": 0.001}}}
    (folder / name).mkdir()
    (folder / name / "results.json").write_text(json.dumps(record))


def test_compare_lines_show_the_config_keys_that_vary_within_a_sweep(tmp_path):
    for i, threshold in enumerate([0.95, 0.5, 10]):
        _sweep_record(tmp_path, f"x{i}", "xtf", {"kn": {"threshold": threshold}, "attributes": ["kn"]})
    _sweep_record(tmp_path, "n", "normal", {"kn": {"threshold": 0.7}, "attributes": ["kn"]})
    lines = [x for x in compare_lines(tmp_path) if not x.startswith("[xtf] WARNING")]   # hand-made: no code hashes
    head, rows = lines[0], lines[2:]
    # the varying key is a column; paths, experiment (differ per run) and keys equal in every run are not
    assert "method.kn.threshold" in head and "paths" not in head and "experiment" not in head
    assert "train.lr" not in head and "method.attributes" not in head
    at = head.index("method.kn.threshold")
    xtf_rows = [r for r in rows if " xtf " in r]
    assert [r[at:].split()[0] for r in xtf_rows] == ["0.5", "0.95", "10"]   # sorted by value, not as text
    assert len(set(rows)) == len(rows)
    normal = next(r for r in rows if " normal " in r)
    assert normal[at:at + len("method.kn.threshold")].strip() == ""   # its unused threshold is not shown


def test_compare_lines_add_the_run_id_when_configs_agree_and_nothing_when_no_row_repeats(tmp_path):
    _sweep_record(tmp_path, "a", "xtf", {"kn": {"threshold": 0.9}}, run_id="tiny-xtf-aaa")
    _sweep_record(tmp_path, "b", "xtf", {"kn": {"threshold": 0.9}}, run_id="tiny-xtf-bbb")
    lines = [x for x in compare_lines(tmp_path) if not x.startswith("[xtf] WARNING")]
    assert "run id" in lines[0] and "method.kn.threshold" not in lines[0]
    assert any("tiny-xtf-aaa" in x for x in lines) and any("tiny-xtf-bbb" in x for x in lines)
    (tmp_path / "b" / "results.json").unlink()
    assert compare_lines(tmp_path)[1].split() == ["model", "task", "method", "seed", "kept", "accuracy", "[95%",
                                                  "CI]", "(n)", "ref-NLL", "minutes"]
