"""Scoring-only runs, every row's decision in the run folder, and the exported dataset (xtf.decisions, xtf.export):
its columns, its labels, its masked spans' text, its card, byte-identical re-exports, online methods and `normal`,
conversations, and the bad combinations that fail before any work. TRL training on an export: test_export_trl.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import compose

from xtf import decisions
from xtf.config import ConfigError
from xtf.export import ExportError, export_run, main
from xtf.pipeline import run
from xtf.results import run_dir, run_id
from xtf.validate import validate

TINY = ["model.pretrain_steps=40", "train.batch_size=8", "train.logging_steps=1"]
# Synthetic maths with injected filler: the rows carry ground-truth noise, so detection figures exist.
NOISY = [*TINY, "task.options.n_train=16", "task.options.n_test=4", "task.options.filler_rate=0.3"]
SCORE_ONLY = [*NOISY, "method=xtf", "score_only=true"]


def _cfg(run_overrides, *extra):
    return validate(compose([*run_overrides, *extra]))


def _files(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _load(folder):
    from datasets import load_from_disk

    return load_from_disk(str(folder / "dataset"))


def test_score_only_stores_every_decision_and_exports_the_filtered_dataset(run_overrides, tmp_path, capsys):
    cfg = _cfg(run_overrides, *SCORE_ONLY, "export.enabled=true", f"export.dir={tmp_path / 'first'}")
    record = run(cfg)
    out = capsys.readouterr().out
    folder = run_dir(cfg)
    assert record["mode"] == "score_only" and record["training"] is None and record["metrics"] == {}
    assert "score only" in out and "noise annotations: the mask finds" in out and "accuracy" not in out
    assert record["detection"]["overall"]["n_noise_tokens"] > 0            # the annotations still give detection
    assert not (folder / "predictions.jsonl").exists()                       # nothing evaluated
    assert not [p for p in (tmp_path / "outputs").rglob("*") if "checkpoint" in p.name]  # nothing trained
    dec = decisions.read(folder)
    assert len(dec.rows) == record["tokenization"]["n_rows"] == 16 and dec.attributes == ["ri", "kn", "tr"]
    keep = np.concatenate([r["keep"] for r in dec.rows])
    assert keep.sum() == record["mask"]["kept_tokens"] < record["mask"]["answer_tokens"]  # xtf masked something
    for r in dec.rows:
        assert not (r["keep"] & ~r["response_mask"]).any() and set(r["scores"]) >= {"ri", "kn", "tr"}
        assert r["example"]["id"] == r["id"]

    ds = _load(tmp_path / "first")
    assert ds.column_names == ["id", "prompt", "response", "answer", "input_ids", "attention_mask", "labels",
                               "completion_mask", "response_mask", "score_kn", "score_nll", "score_ri", "score_tr",
                               "masked_spans", "kept_fraction"]  # no assistant_masks: prompt/response rows
    from xtf import models

    tokenizer = models.load_tokenizer(record["weights"])
    n_spans = 0
    for row, r in zip(ds, dec.rows):
        ids, kept = np.asarray(row["input_ids"]), r["keep"]
        assert row["id"] == r["id"] and (ids == r["input_ids"]).all()
        assert row["labels"] == np.where(kept, ids, -100).tolist()       # -100 exactly off the kept tokens
        assert row["completion_mask"] == kept.astype(int).tolist() and row["attention_mask"] == [1] * len(ids)
        assert all((v is None) != bool(a) for v, a in zip(row["score_kn"], row["response_mask"]))
        covered = np.zeros(len(ids), bool)
        for span in row["masked_spans"]:
            n_spans += 1
            assert span["turn"] == 0 and span["text"] == row["response"][span["start"]:span["end"]]
            tokens = ids[span["token_start"]:span["token_end"]]
            assert tokenizer.decode(tokens, skip_special_tokens=True) == span["text"]
            assert span["reason"] and all(r["noisy"][a][span["token_start"]:span["token_end"]].any()
                                          for a in span["reason"])
            covered[span["token_start"]:span["token_end"]] = True
        assert (covered == (r["response_mask"] & ~kept)).all()             # every masked token, nothing else
    assert n_spans > 0

    from datasets import load_dataset  # the folder as a Hub dataset: the card's configs point at data.parquet

    hub_like = load_dataset(str(tmp_path / "first"), cache_dir=str(tmp_path / "hf"))["train"]
    assert hub_like.features == ds.features and hub_like.to_list() == ds.to_list()

    card = (tmp_path / "first" / "README.md").read_text()
    for words in (record["run_id"], "`xtf`", "score only", "| ri |", "| kn |", "| tr |", '"threshold": 0.95',
                  "SFTTrainer(", "load_from_disk(", "python -m xtf.export", "precision", "data_files: data.parquet"):
        assert words in card, words

    # Relaunched with the export into the run folder: the run is complete (export is not in its id), so it is
    # exported from its folder, byte for byte what the first export wrote.
    again = _cfg(run_overrides, *SCORE_ONLY, "export.enabled=true")
    assert run_id(again) == record["run_id"]
    run(again)
    assert "already complete" in capsys.readouterr().out
    assert _files(folder / "export") == _files(tmp_path / "first")
    assert export_run(folder, tmp_path / "first") == tmp_path / "first"     # an export is replaced in place
    assert _files(folder / "export") == _files(tmp_path / "first")


def test_a_score_only_record_has_its_own_id_and_earlier_ids_stay(run_overrides):
    plain = _cfg(run_overrides, *NOISY, "method=xtf")
    scored = _cfg(run_overrides, *SCORE_ONLY)
    assert run_id(plain) != run_id(scored)
    assert run_id(plain) == run_id(_cfg(run_overrides, *NOISY, "method=xtf", "export.enabled=true"))
    assert scored.eval.enabled is False   # a score-only run reads no test split


def test_normal_exports_unmasked_labels(run_overrides, tmp_path):
    cfg = _cfg(run_overrides, *NOISY, "method=normal", "score_only=true")
    run(cfg)
    main([str(run_dir(cfg)), "--out", str(tmp_path / "normal")])
    ds = _load(tmp_path / "normal")
    for row in ds:
        answer = np.asarray(row["response_mask"], bool)
        assert row["labels"] == np.where(answer, row["input_ids"], -100).tolist() and not row["masked_spans"]
    assert "Nothing was masked" in (tmp_path / "normal" / "README.md").read_text()


def test_an_online_method_exports_its_scores_and_says_it_selects_during_training(run_overrides, tmp_path):
    scored = _cfg(run_overrides, *NOISY, "method=sstoken", "score_only=true", "export.enabled=true")
    run(scored)
    ds = _load(run_dir(scored) / "export")
    assert "score_nll" in ds.column_names and "selected_share" not in ds.column_names  # what it selects by
    assert "selects its tokens during training" in (run_dir(scored) / "export" / "README.md").read_text()
    trained = _cfg(run_overrides, *TINY, "task.options.n_train=8", "task.options.n_test=2", "method=dft",
                   "export.enabled=true")
    record = run(trained)
    assert record["mode"] == "finetune" and record["training"]["online"]
    ds = _load(run_dir(trained) / "export")
    for row in ds:  # its offline mask keeps every answer token: labels are the unmasked answer
        answer = np.asarray(row["response_mask"], bool)
        assert row["labels"] == np.where(answer, row["input_ids"], -100).tolist()
        assert all(v is None or 0.0 <= v <= 1.0 for v in row["selected_share"])  # DFT: its mean loss weight
    assert "selects its tokens during training" in (run_dir(trained) / "export" / "README.md").read_text()


BAD = [
    (["method=none", "score_only=true"], ["score_only=true", "method=none"]),
    (["export.dir=/tmp/somewhere"], ["export.dir", "export.enabled=true"]),
    (["method=xtf", "method.finetune=false"], ["method.finetune", "score_only=true"]),
]


@pytest.mark.parametrize("extra, words", BAD)
def test_combinations_that_make_no_sense_fail_naming_the_keys(extra, words, run_overrides):
    with pytest.raises(ConfigError) as err:
        _cfg(run_overrides, *TINY, *extra)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_export_refuses_a_foreign_folder_and_a_run_without_decisions(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"status": "complete"}))
    with pytest.raises(decisions.DecisionsError, match="force=true"):
        export_run(folder)
    with pytest.raises(SystemExit) as code:
        main([str(folder)])
    assert code.value.code == 2 and "decisions.npz" in capsys.readouterr().err
    with pytest.raises(ExportError, match="not a finished run"):
        export_run(tmp_path / "missing")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my own files")
    with pytest.raises(ExportError, match="not an xtf export"):
        export_run(folder, mine)
    assert (mine / "notes.txt").read_text() == "my own files"


CHAT = [
    {"messages": [{"role": "system", "content": "You add numbers."},
                  {"role": "user", "content": "What is 2 + 3?"},
                  {"role": "assistant", "content": "2 + 3 = 5. The answer is 5."},
                  {"role": "user", "content": "And 5 + 4?"},
                  {"role": "assistant", "content": "5 + 4 = 9. I hope this helps! The answer is 9.",
                   "noise_spans": [[11, 29, "filler"]]}]},  # an annotation: "I hope this helps!"
    {"messages": [{"role": "user", "content": "What is 7 - 2?"},
                  {"role": "assistant", "content": "7 - 2 = 5. The answer is 5."}]},
]


def test_a_chat_export_round_trips(run_overrides, tmp_path):
    pytest.importorskip("xtf.tasks.sft", reason="task=sft (your own data) is not in this checkout yet")
    data_file = tmp_path / "chat.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in CHAT * 4))
    cfg = _cfg(run_overrides, *TINY, "task=sft", f"data.train_file={data_file}", "task.options.format=chat",
               "method=random", "method.match=null", "method.ratio=0.4", "score_only=true", "export.enabled=true")
    record = run(cfg)
    assert record["detection"]["overall"]["n_noise_tokens"] > 0  # the annotated turn gives detection figures
    ds = _load(run_dir(cfg) / "export")
    from xtf import models

    tokenizer = models.load_tokenizer(json.loads((run_dir(cfg) / "results.json").read_text())["weights"])
    assistant_text = [m["content"] for r in CHAT for m in r["messages"] if m["role"] == "assistant"]

    def runs(mask) -> list[tuple[int, int]]:  # [start, end) of each run of consecutive True
        edges = np.flatnonzero(np.diff(np.concatenate([[0], np.asarray(mask, int), [0]])))
        return list(zip(edges[::2].tolist(), edges[1::2].tolist()))

    for row in ds:
        assert row["assistant_masks"] == row["completion_mask"]
        assert [m["role"] for m in row["messages"]][-1] == "assistant"  # the user's row, still a conversation
        turns = [m for m in row["messages"] if m["role"] == "assistant"]
        answer_runs = runs(row["response_mask"])
        assert len(answer_runs) == len(turns)  # every assistant turn is an answer, everything else context
        for (a, b), turn in zip(answer_runs, turns):
            assert tokenizer.decode(row["input_ids"][a:b], skip_special_tokens=True).strip() == turn["content"]
        for a, b in runs(row["completion_mask"]):  # decode the kept tokens: they lie inside the assistant turns
            text = tokenizer.decode(row["input_ids"][a:b], skip_special_tokens=True)
            assert any(text in t for t in assistant_text), text
        for span in row["masked_spans"]:
            turn = row["messages"][span["turn"]]
            assert turn["role"] == "assistant" and turn["content"][span["start"]:span["end"]] == span["text"]
            assert span["reason"] == ["random"]
