"""Identity by content: other weights of the same shape, another tokenizer file or another data folder make a
new run (new run id, scores computed again), never "already complete" or a reused score cache."""

import json
import shutil

from conftest import compose
from test_bad_input import gsm8k_dir, gsm8k_row

from xtf.identity import weights_identity
from xtf.pipeline import run
from xtf.validate import validate


def test_weights_tokenizer_and_data_enter_the_run_id_and_the_score_cache(tmp_path, run_overrides, session_cache,
                                                                          capsys):
    from safetensors.torch import load_file, save_file

    from xtf.tiny import build_tiny

    tiny = validate(compose(["model=tiny_llama"])).model
    weights = shutil.copytree(build_tiny(tiny, session_cache), tmp_path / "weights")
    model = [f"model.path={weights}", "model=tiny_llama", "model.tiny=null"]
    small = ["method=df", "eval.enabled=false", "train.epochs=1", "data.limit=8", "wandb.mode=disabled"]
    rows = "".join(gsm8k_row(f"What is {i} + 1?", str(i + 1)) for i in range(8))
    data1 = gsm8k_dir(tmp_path / "d1", rows)
    data2 = gsm8k_dir(tmp_path / "d2", rows.replace("What is", "Compute"))

    def launch(data):
        record = run(validate(compose([*run_overrides, *model, *small, *data])))
        return record["run_id"], record["scoring"]["computed"], capsys.readouterr().out

    first, computed, _ = launch(data1)
    assert computed == ["forward"]
    again, _, out = launch(data1)
    assert again == first and "already complete" in out

    # Same shapes and sizes, other values: the old identity (config.json + file sizes) could not tell.
    before = weights_identity(weights)
    tensors = load_file(str(weights / "model.safetensors"))
    name = next(iter(tensors))
    tensors[name] = tensors[name] + 1e-3
    size = (weights / "model.safetensors").stat().st_size
    save_file(tensors, str(weights / "model.safetensors"), metadata={"format": "pt"})
    assert (weights / "model.safetensors").stat().st_size == size and weights_identity(weights) != before
    other_weights, computed, out = launch(data1)
    assert other_weights != first and computed == ["forward"] and "already complete" not in out

    config = json.loads((weights / "tokenizer_config.json").read_text())
    (weights / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 777}))
    other_tokenizer, computed, _ = launch(data1)
    assert other_tokenizer not in (first, other_weights) and computed == ["forward"]

    other_data, computed, _ = launch(data2)
    assert other_data not in (first, other_weights, other_tokenizer) and computed == ["forward"]


def test_weights_changed_in_place_with_their_mtime_set_back_get_a_new_run_id(tmp_path, session_cache, monkeypatch):
    """The sha256 memo is keyed by inode and ctime too: `os.utime` can set the mtime back, never the ctime."""
    from test_provenance import NEVER_RACY, rewrite_in_place

    from xtf import identity
    from xtf.results import run_id
    from xtf.tiny import build_tiny

    monkeypatch.setattr(identity, "RACY_NS", NEVER_RACY)  # the copy is new: remembered anyway, as a day-old file is
    tiny = validate(compose(["model=tiny_llama"])).model
    weights = shutil.copytree(build_tiny(tiny, session_cache), tmp_path / "weights")
    cfg = validate(compose([f"model.path={weights}", "model=tiny_llama", "model.tiny=null",
                            f"paths.cache_dir={tmp_path / 'cache'}"]))
    first = run_id(cfg)
    tensors = weights / "model.safetensors"
    data = bytearray(tensors.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # the last weights' bytes, in place: same size
    rewrite_in_place(tensors, bytes(data))
    assert run_id(cfg) != first
