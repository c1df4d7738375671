"""Nothing silently wrong about where a record came from: a weight file changed in place (its mtime set back) gets a
new sha256; the code of every stage is hashed into the record, and a reused record made by other code (or before
code hashes) says so in the summary and in `make tables`; git provenance names untracked files and saves the
uncommitted diff beside results.json."""

import hashlib
import json
import os
import subprocess
import time

import pytest
from conftest import compose
from test_tables import PAPER, _spec

from xtf import identity, results, tasks
from xtf.identity import changed_stages, code_hashes, file_sha256, task_files
from xtf.summary import code_warning, compare_lines, stale_code_lines, summary_lines
from xtf.tables import write_tables
from xtf.validate import validate

NEVER_RACY = -(10 ** 18)  # every hash remembered, however recent the file's change


def rewrite_in_place(path, data: bytes) -> None:
    """Overwrite `path` with `data` (same size) and set its mtime back, as a careless copy tool would; returns once
    its ctime has moved (file times tick coarsely: a few ms), so the test does not depend on the clock's tick."""
    before = path.stat()
    assert len(data) == before.st_size
    with open(path, "r+b") as f:
        f.write(data)
    for _ in range(10_000):  # a tick is milliseconds; 10 s of ticks means the file system keeps no ctime
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if path.stat().st_ctime_ns != before.st_ctime_ns:
            break
        time.sleep(0.001)
    else:
        pytest.fail(f"the ctime of {path} never moved")
    assert path.stat().st_mtime_ns == before.st_mtime_ns and path.stat().st_size == before.st_size


@pytest.mark.parametrize("on_disk", [False, True])
def test_a_file_changed_in_place_with_its_mtime_set_back_gets_a_new_sha256(tmp_path, monkeypatch, on_disk):
    monkeypatch.setattr(identity, "RACY_NS", NEVER_RACY)
    monkeypatch.setattr(identity, "_memo", {})
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    cache = tmp_path / "cache" if on_disk else None
    assert file_sha256(weights, cache) == hashlib.sha256(b"a" * 4096).hexdigest()
    assert len(identity._memo) == 1  # remembered
    if on_disk:
        assert len(list((cache / "file_sha256").glob("*.json"))) == 1
        monkeypatch.setattr(identity, "_memo", {})  # a new process: the disk memo only
    rewrite_in_place(weights, b"b" * 4096)
    assert file_sha256(weights, cache) == hashlib.sha256(b"b" * 4096).hexdigest()


def test_a_file_changed_just_before_its_hash_is_hashed_again(tmp_path, monkeypatch):
    """Its ctime may not move if it changes again within the same tick: that hash is used but not remembered."""
    monkeypatch.setattr(identity, "_memo", {})
    path = tmp_path / "config.json"
    path.write_text("{}")
    ctime = path.stat().st_ctime_ns
    monkeypatch.setattr(identity, "time_ns", lambda: ctime + 1)  # hashed right after the change
    file_sha256(path, tmp_path / "cache")
    assert identity._memo == {} and not (tmp_path / "cache").exists()
    monkeypatch.setattr(identity, "time_ns", lambda: ctime + identity.RACY_NS + 1)
    file_sha256(path, tmp_path / "cache")
    assert len(identity._memo) == 1 and len(list((tmp_path / "cache" / "file_sha256").glob("*.json"))) == 1


def test_a_disk_memo_in_the_old_path_mtime_size_form_is_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setattr(identity, "_memo", {})
    path = (tmp_path / "tokenizer.json").resolve()
    path.write_text('{"v": 1}')
    st = path.stat()
    memo = identity._memo_file(tmp_path / "cache", path)
    memo.parent.mkdir(parents=True)
    memo.write_text(json.dumps({"path": str(path), "mtime_ns": st.st_mtime_ns, "size": st.st_size,
                                "sha256": "0" * 64}))
    assert file_sha256(path, tmp_path / "cache") == hashlib.sha256(b'{"v": 1}').hexdigest()


def test_weights_content_is_the_run_ids_identity_with_each_files_sha256(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"w" * 64)
    (tmp_path / "README.md").write_text("not content")
    content = results.weights_content(str(tmp_path), str(tmp_path / "cache"))
    assert content == {"identity": identity.weights_identity(tmp_path),
                       "sha256": {"config.json": hashlib.sha256(b"{}").hexdigest(),
                                  "model.safetensors": hashlib.sha256(b"w" * 64).hexdigest()}}
    assert results.weights_content("org/model", "unused") == {"identity": "hub:org/model", "sha256": {}}


def test_code_hashes_cover_every_stage_and_the_tasks_own_code(monkeypatch):
    gsm8k, medqa = tasks.TASKS["gsm8k"], tasks.TASKS["medqa"]
    names = {f.name for f in task_files(gsm8k)}
    assert {"gsm8k.py", "common.py", "noise.py", "xtf_gsm8k.yaml"} <= names and "config.py" not in names
    assert "medqa.py" in {f.name for f in task_files(tasks.TASKS["pubmedqa"])}  # pubmedqa reuses its reader
    train = identity.stage_files("train")  # its roots and what they import (a helper split out stays in the stage)
    assert {"train.py", "lm_loss.py", "distributed.py"} <= {f.name for f in train}
    assert set(identity.imported_files(identity.PACKAGE / "train.py")) <= set(train)
    assert not {"config.py", "cache.py", "results.py"} & {f.name for s in identity.CODE_STAGES
                                                          for f in identity.stage_files(s)}
    hashes = code_hashes(gsm8k)
    assert set(hashes) == {*identity.CODE_STAGES, "task"} and all(len(h) == 12 for h in hashes.values())
    assert code_hashes(medqa)["task"] != hashes["task"] and code_hashes(None).keys() == identity.CODE_STAGES.keys()
    # Another extractor in gsm8k.py (no version bumped): its task hash moves, and nothing else.
    source = next(f for f in task_files(gsm8k) if f.name == "gsm8k.py")
    monkeypatch.setitem(identity._source_memo, source, "edited")
    assert changed_stages(hashes, code_hashes(gsm8k)) == ["task"]
    assert changed_stages(code_hashes(medqa), code_hashes(medqa)) == []


def _record(**extra):
    return {"status": "complete", "run_id": "r1", "task": "synth", "model": "tiny", "method": "xtf", "seed": 0,
            "metrics": {"accuracy": 0.5, "n_eval": 10}, "mask": {"kept_fraction": 0.8}, **extra}


def test_a_record_made_by_other_code_warns_in_the_summary_and_the_comparison(tmp_path):
    current = code_hashes(tasks.TASKS["synth"])
    assert code_warning(_record(code=current)) is None
    assert not any("WARNING" in line for line in summary_lines(_record(code=current), tmp_path))
    other = _record(code={**current, "task": "0" * 12, "mask": "1" * 12})
    text = "\n".join(summary_lines(other, tmp_path))
    assert "WARNING: this record was made by other code (changed since: mask, task)" in text
    old = "\n".join(summary_lines(_record(), tmp_path))  # written before code hashes: warned, not a crash
    assert "WARNING: this record predates code hashes" in old
    for i, r in enumerate([_record(code=current), {**other, "run_id": "r2"}]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "results.json").write_text(json.dumps(r))
    lines = compare_lines(tmp_path)
    assert lines[0].startswith(f"[xtf] WARNING: {tmp_path}: 1 of 2 records were made by other code")
    assert "r2 (mask, task)" in lines[0] and "r1" not in lines[0]


def test_make_tables_names_the_records_made_by_other_code_and_still_builds(tmp_path, capsys):
    spec = _spec(tmp_path)
    (tmp_path / "paper.yaml").write_text(PAPER)
    current = code_hashes(tasks.TASKS["synth"])
    records = {"Normal / 0.001": [_record(code=current, run_id="same"), _record(code={**current, "train": "x"},
                                                                               run_id="retrained")],
               "XTF / 0.001": [_record(run_id="older")]}
    assert write_tables(spec, tmp_path / "tables", records=records, paper_numbers=tmp_path / "paper.yaml")
    err = capsys.readouterr().err
    assert "[xtf] WARNING: demo: 1 of 3 records were made by other code (changed stages in brackets): " \
           "retrained (train)" in err
    assert "demo: 1 of 3 records predate code hashes" in err and "older" in err and "same" not in err
    many = [_record(code={}, run_id=f"r{i}") for i in range(13)]
    assert stale_code_lines(many, "x", shown=10)[0].endswith("(force=true reruns a run)")
    assert "and 3 more" in stale_code_lines(many, "x", shown=10)[0]


def _git(repo, *args):
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          capture_output=True, check=True)


def test_git_state_counts_untracked_files_and_saves_the_diff_beside_the_record(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text("ignored/\n")
    (repo / "code.py").write_text("x = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "first")
    assert results.git_state(repo) == {"sha": _git(repo, "rev-parse", "HEAD").stdout.decode().strip(),
                                       "dirty": False, "untracked": [], "n_untracked": 0, "diff_sha256": None,
                                       "patch": None}
    (repo / "ignored").mkdir()
    (repo / "ignored" / "big.bin").write_text("not named")
    for i in range(3):
        (repo / f"new{i}.py").write_text("")
    untracked_only = results.git_state(repo)  # the old check (--untracked-files=no) called this clean
    assert untracked_only["dirty"] and untracked_only["n_untracked"] == 3 and untracked_only["patch"] is None
    monkeypatch.setattr(results, "UNTRACKED_SHOWN", 2)
    assert results.git_state(repo)["untracked"] == ["new0.py", "new1.py"]

    (repo / "code.py").write_text("x = 2\n")
    state = results.git_state(repo)
    diff = _git(repo, "diff", "HEAD", "--binary").stdout
    assert state["dirty"] and state["diff_sha256"] == hashlib.sha256(diff).hexdigest()
    run = tmp_path / "run"
    results.write_record(run, {"status": "complete", "provenance": {"git": state}})
    patch = run / state["patch"]
    assert patch.read_bytes() == diff and hashlib.sha256(patch.read_bytes()).hexdigest() == state["diff_sha256"]
    _git(repo, "checkout", "-q", "code.py")
    _git(repo, "apply", str(patch))  # the saved patch gives back the code that ran
    assert (repo / "code.py").read_text() == "x = 2\n"


def test_a_reused_record_made_by_other_code_or_before_code_hashes_warns(run_overrides, capsys):
    """End to end: the record holds the weights' sha256 and the code hashes; the skip warns when they differ."""
    from xtf.pipeline import run

    cfg = validate(compose([*run_overrides, "model.pretrain_steps=10", "task.options.n_train=8",
                            "task.options.n_test=4", "train.epochs=1", "eval.enabled=false"]))
    record = run(cfg)
    assert record["code"] == code_hashes(tasks.TASKS["synth"])
    weights = record["weights_content"]
    assert weights["sha256"] and all(len(h) == 64 for h in weights["sha256"].values())
    assert weights["identity"] == identity.identity_of(weights["sha256"])
    assert "WARNING" not in capsys.readouterr().out
    path = results.run_dir(cfg) / "results.json"
    saved = json.loads(path.read_text())
    path.write_text(json.dumps({**saved, "code": {**saved["code"], "task": "0" * 12}}))
    run(cfg)
    out = capsys.readouterr().out
    assert "already complete, skipping" in out and "made by other code (changed since: task)" in out
    del saved["code"], saved["weights_content"]
    path.write_text(json.dumps(saved))
    run(cfg)
    assert "this record predates code hashes" in capsys.readouterr().out
