"""task=sft, your own data: every shape renders with exact answer positions (chat template and plain template),
every file format reads, and every bad row fails naming file, line and field (or is skipped and counted).

    .venv/bin/python -m pytest -q tests/test_sft.py
"""

from __future__ import annotations

import json

import pytest
from conftest import compose

from xtf import chat, data
from xtf.config import ConfigError
from xtf.tasks.common import DataError
from xtf.validate import validate

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "What is 3*3?"}, {"role": "assistant", "content": "It is 9."}]
ROWS = {
    "prompt_response": [{"prompt": "What is 2+2?", "response": "2+2 is 4."}, {"prompt": "Hi", "response": "Hello."}],
    "alpaca": [{"instruction": "Add.", "input": "2 and 2", "output": "4"},
               {"instruction": "Say hi.", "input": "", "output": "Hi!"}],
    "chat": [{"messages": CONVERSATION}, {"messages": CONVERSATION[1:3]}],
}


@pytest.fixture(scope="module")
def tokenizer():
    from xtf.tiny import train_tokenizer

    tok = train_tokenizer(["Hello world. What is 3*3? It is 9. Be brief. Add 2 and 2. Say hi."] * 5, 400)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHATML
    return tok


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def sft_cfg(tmp_path, train_file, *extra):
    return validate(compose(["task=sft", "model=tiny", "method=normal", f"data.train_file={train_file}",
                             f"paths.cache_dir={tmp_path / 'cache'}", *extra]))


def load(tmp_path, train_file, *extra):
    return data.select(sft_cfg(tmp_path, train_file, "eval.enabled=false", *extra))


@pytest.mark.parametrize("shape", list(ROWS))
@pytest.mark.parametrize("chat_template", [True, False])
def test_trainable_positions_are_exactly_the_assistant_text(tmp_path, tokenizer, shape, chat_template):
    train = load(tmp_path, write_jsonl(tmp_path / "d.jsonl", ROWS[shape])).train
    end = "<|im_end|>" if chat_template else tokenizer.eos_token
    for ex in train:
        ids, mask, _ = data.tokenize_example(tokenizer, ex, 10**9, chat_template)
        answers = [m["content"] for m in ex["messages"] if m["role"] == "assistant"]
        # Each assistant turn's tokens, then its end marker, and nothing else is trainable.
        trained = [i for i, m in zip(ids, mask) if m]
        expected = []
        for text in answers:
            expected += tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids(end)]
        assert trained == expected
        assert tokenizer.decode(trained) == "".join(a + end for a in answers)
        # ... and the whole sequence is the rendered conversation.
        rendered = tokenizer.decode(ids).removeprefix(tokenizer.bos_token)
        if chat_template:
            assert rendered == tokenizer.apply_chat_template(ex["messages"], tokenize=False)
        else:
            assert rendered.startswith(("User: ", "Be brief.")) and "Assistant: " in rendered


def test_alpaca_prompt_joins_instruction_and_input(tmp_path):
    train = load(tmp_path, write_jsonl(tmp_path / "a.jsonl", ROWS["alpaca"])).train
    assert [e["messages"][0]["content"] for e in train] == ["Add.\n\n2 and 2", "Say hi."]
    assert [e["id"] for e in train] == ["train:1", "train:2"]


def test_answer_char_spans_point_into_each_turn(tokenizer):
    ex = {"id": "c", "messages": CONVERSATION}
    ids, mask, _ = data.tokenize_example(tokenizer, ex, 10**9, True)
    spans = data.answer_char_spans(tokenizer, ex, True)
    assert len(spans) == len(ids) and [s is not None for s in spans] == mask
    for turn in (2, 4):
        pieces = [CONVERSATION[turn]["content"][a:b] for t, a, b in filter(None, spans) if t == turn]
        assert "".join(pieces) == CONVERSATION[turn]["content"]


def test_field_names_are_configurable(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "Q1", "answer": "A1"}])
    train = load(tmp_path, path, "task.options.prompt_field=question", "task.options.response_field=answer").train
    assert train[0]["messages"] == [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"}]


def test_every_file_format_reads_the_same_rows(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = ROWS["prompt_response"]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    (tmp_path / "d.csv").write_text("prompt,response\n" + "".join(f'"{r["prompt"]}","{r["response"]}"\n' for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "folder"))
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(tmp_path / "dict"))
    mirror = tmp_path / "mirror" / "me" / "mine"
    mirror.mkdir(parents=True)
    write_jsonl(mirror / "train.jsonl", rows)
    expected = [e["messages"] for e in load(tmp_path, write_jsonl(tmp_path / "d.jsonl", rows)).train]
    for source in ("d.json", "d.csv", "d.parquet", "folder", "dict"):
        assert [e["messages"] for e in load(tmp_path, tmp_path / source).train] == expected, source
    hub = load(tmp_path, "hub:me/mine", f"paths.hub_mirror={tmp_path / 'mirror'}")
    assert [e["messages"] for e in hub.train] == expected and hub.task_data.source.startswith("mirror:")


def test_eval_file_and_held_out_fraction(tmp_path):
    rows = [{"prompt": f"Q{i}", "response": f"A{i}"} for i in range(20)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    held = load(tmp_path, path, "task.options.eval_fraction=0.2")
    assert len(held.train) == 16 and len(held.test) == 4
    assert not {e["id"] for e in held.train} & {e["id"] for e in held.test}
    data._selections.clear()  # not the memo: a second load
    again = load(tmp_path, path, "task.options.eval_fraction=0.2")
    assert [e["id"] for e in again.test] == [e["id"] for e in held.test]
    other = load(tmp_path, path, f"data.eval_file={write_jsonl(tmp_path / 'e.jsonl', rows[:3])}")
    assert len(other.train) == 20 and [e["id"] for e in other.test] == ["test:1", "test:2", "test:3"]


def test_no_evaluation_data_is_an_error_naming_the_keys(tmp_path):
    with pytest.raises(DataError, match="nothing to evaluate"):
        data.select(sft_cfg(tmp_path, write_jsonl(tmp_path / "d.jsonl", ROWS["prompt_response"])))


BAD = [
    ({"response": "x"}, "missing field 'prompt'"),
    ({"prompt": "q", "response": ""}, "field 'response' is empty"),
    ({"prompt": "q", "response": 3}, "field 'response' must be str, got int"),
    ({"messages": [{"role": "assistant", "content": "x"}]}, "turn 0 is assistant, expected user"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}, "turn 1 is user, expected"),
    ({"messages": [{"role": "user", "content": "q"}]}, "has no assistant turn"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}]}, "turn 1 (assistant) has "
                                                                                              "empty content"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ["x"]}]}, "not a string"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "x"}]}, "role 'robot'"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                   {"role": "system", "content": "s"}]}, "a system turn is allowed only first"),
    ({"prompt": "q", "response": "abc", "noise_spans": [[1, 9, "x"]]}, "field 'noise_spans': span 0 = [1, 9, 'x'] is "
                                                                        "outside the text"),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[m for _, m in BAD])
def test_a_bad_row_fails_naming_file_line_and_field(tmp_path, bad, message):
    good = ROWS["chat"][1] if "messages" in bad else ROWS["prompt_response"][0]
    path = write_jsonl(tmp_path / "d.jsonl", [good, bad, good])
    with pytest.raises(DataError) as e:
        load(tmp_path, path)
    assert f"{path}:2: " in str(e.value) and message in str(e.value)
    skipped = load(tmp_path, path, "data.on_bad_row=skip")
    assert [x["id"] for x in skipped.train] == ["train:1", "train:3"]
    assert skipped.task_data.skipped_rows == 1 and skipped.task_data.skipped[0].startswith(f"{path}:2: ")


def test_a_row_longer_than_max_len_fails_naming_its_line_or_is_cut_and_counted(tmp_path, tokenizer):
    rows = [{"prompt": "q", "response": "short"}, {"prompt": "q", "response": "Hello world. " * 40}]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    sel = load(tmp_path, path)
    with pytest.raises(DataError, match=rf"{path}:2: the example is \d+ tokens long .* data.max_len=32"):
        data.tokenize(tokenizer, sel.train, 32, "error", True, sel.task_data.locations)
    got, stats = data.tokenize(tokenizer, sel.train, 32, "right", True, sel.task_data.locations)
    assert stats["n_truncated"] == 1 and max(len(r["input_ids"]) for r in got) == 32
    got, stats = data.tokenize(tokenizer, sel.train, 32, "drop", True)
    assert stats["n_dropped_too_long"] == 1 and [r["id"] for r in got] == ["train:1"]


def test_user_noise_spans_become_token_truth(tmp_path, tokenizer):
    rows = [{"prompt": "q", "response": "Hello world. It is 9.", "noise_spans": [[0, 12, "filler"]]},
            {"messages": [{"role": "user", "content": "q"},
                          {"role": "assistant", "content": "Hello world. It is 9.", "noise_spans": [[13, 21, "bad"]]}]}]
    for row in rows:
        train = load(tmp_path, write_jsonl(tmp_path / "n.jsonl", [row])).train
        got, _ = data.tokenize(tokenizer, train, 512, "error", True)
        (kind, flags), = got[0]["truth"].items()
        marked = tokenizer.decode([i for i, f in zip(got[0]["input_ids"], flags) if f])
        assert marked == ("Hello world." if kind == "filler" else " It is 9.")


def test_config_errors_before_any_work(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", ROWS["prompt_response"])
    with pytest.raises(ConfigError, match="set data.train_file"):
        validate(compose(["task=sft", "model=tiny"]))
    with pytest.raises(ConfigError, match="data.train_file=.*nope.jsonl does not exist"):
        sft_cfg(tmp_path, tmp_path / "nope.jsonl")
    with pytest.raises(ConfigError, match="data.train_file is read only by task=sft"):
        validate(compose(["task=synth", "model=tiny", f"data.train_file={path}"]))
    with pytest.raises(ConfigError, match="task.options.expert_words"):
        sft_cfg(tmp_path, path, "method=xtf")
    sft_cfg(tmp_path, path, "method=xtf", "method.attributes=[ri,kn]")
    sft_cfg(tmp_path, path, "method=xtf", "task.options.expert_words=[hello,world]")


def test_run_id_is_by_content_not_by_path(tmp_path):
    from xtf.results import run_id

    a = write_jsonl(tmp_path / "a.jsonl", ROWS["prompt_response"])
    b = write_jsonl(tmp_path / "b.jsonl", ROWS["prompt_response"])
    c = write_jsonl(tmp_path / "c.jsonl", ROWS["prompt_response"][:1])
    ids = [run_id(sft_cfg(tmp_path, p, "eval.enabled=false")) for p in (a, b, c)]
    assert ids[0] == ids[1] != ids[2]


def test_check_messages_accepts_the_usual_shapes():
    assert chat.check_messages(CONVERSATION) is None
    assert chat.check_messages(CONVERSATION[1:3]) is None
