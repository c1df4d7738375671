"""Identity by content: other weights of the same shape, another tokenizer file or another data folder make a
new run (new run id, scores computed again), never "already complete" or a reused score cache."""

import json
import shutil

from conftest import compose
from test_bad_input import gsm8k_dir, gsm8k_row

from xtf.config import validate
from xtf.identity import weights_identity
from xtf.pipeline import run


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
