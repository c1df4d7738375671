"""Experiments as data: every spec expands into runs with their full overrides (the sweeper's contract), its
cells compose into valid configs, a grid is the product of its coordinates minus `exclude`, and the committed
table is still reached from the same run ids."""

import json

import pytest
from conftest import ROOT

from xtf.experiment import composer, expand, load_experiment, spec_files
from xtf.results import run_dir
from xtf.tables import metric

GRID = """
name: g
base: [model=tiny]
seeds: [0, 1]
grid:
  - train: {full: train=full, LoRA: train=lora}
    method: [none, normal, xtf]
  - train: {full: train=full}
    method: {XTF KN: [method=xtf, "method.attributes=[kn]"]}
exclude: [{train: LoRA, method: none}]
table: {rows: [train, method], value: metrics.accuracy}
"""


def test_grid_product_exclude_and_expand_contract(tmp_path):
    (tmp_path / "g.yaml").write_text(GRID)
    spec = load_experiment(tmp_path / "g.yaml")
    assert list(spec["cells"]) == ["full / none", "full / normal", "full / xtf", "LoRA / normal", "LoRA / xtf",
                                   "full / XTF KN"]
    assert spec["points"]["LoRA / xtf"] == {"train": "LoRA", "method": "xtf"}
    runs = expand(spec)
    assert len(runs) == 12 and runs[0][:2] == ("full / none", 0) and runs[1][:2] == ("full / none", 1)
    label, seed, overrides = runs[-1]
    assert (label, seed) == ("full / XTF KN", 1)
    assert overrides == ["model=tiny", "train=full", "method=xtf", "method.attributes=[kn]", "seed=1",
                         "experiment=g"]
    assert all(isinstance(lb, str) and isinstance(s, int) and isinstance(o, list) for lb, s, o in runs)


def test_every_spec_composes(tmp_path):
    """A covering subset of each committed spec's cells (every coordinate label at least once) composes; the
    noise benchmark composes every cell in the next test."""
    with composer() as compose:
        for path in spec_files():
            if path.stem == "noise_benchmark":
                continue
            spec = load_experiment(path)
            seen, picked = set(), []
            for label, point in spec["points"].items():
                if set(point.items()) - seen:
                    seen |= set(point.items())
                    picked.append(label)
            for label in picked:
                overrides = [*spec["base"], *spec["cells"][label], f"seed={spec['seeds'][0]}",
                             f"experiment={spec['name']}"]
                cfg = compose(overrides)
                assert cfg.experiment == spec["name"] and cfg.seed == spec["seeds"][0], (path, label)


# Every committed table must still be reached from its spec: the run ids it lists are what the spec composes to
# today (a changed default, a new hash field or non-deterministic weights would silently orphan every record).
# Tables on the tiny model compose in seconds (make test); those on a packaged real LM need its converted weights
# and the shared data (make test-real). A table known to be stale is listed here with why, strict: regenerating it
# makes its test pass, and then the entry must go.
TINY_TABLES = ["noise_benchmark", "threshold_sweep", "code_passk_tiny"]
REAL_TABLES = ["threshold_sweep_real", "all_methods", "table1_smollm2", "table2_smollm2", "noise_benchmark_real"]
STALE: dict[str, str] = {}  # name → why it is stale and the command that regenerates it


def _check_table_run_ids(name: str) -> None:
    stand_in = not (ROOT / "experiments" / f"{name}.yaml").is_file()  # <spec>_<stand-in suffix>
    spec_name = name.rsplit("_", 1)[0] if stand_in else name
    table = ROOT / "results" / "tables" / f"{name}.json"
    if not table.is_file():
        pytest.fail(f"{table} is not committed")
    spec = load_experiment(ROOT / "experiments" / f"{spec_name}.yaml", stand_in=stand_in)
    committed = json.loads(table.read_text())
    stale = []
    with composer() as compose:
        for label, seed, overrides in expand(spec):
            if run_dir(compose(overrides)).name not in committed.get(label, []):
                stale.append((label, seed))
                if len(stale) == 4:  # enough to say so (a stale stand-in would compose hundreds of cells)
                    break
    assert not stale, f"{name}: runs of the spec that are not in the committed table: {stale}"


def _param(name):
    return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=STALE[name])) if name in STALE else name


@pytest.mark.parametrize("name", [_param(n) for n in TINY_TABLES])
def test_committed_table_is_reached_from_its_spec(name):
    _check_table_run_ids(name)


@pytest.mark.real
@pytest.mark.parametrize("name", [_param(n) for n in REAL_TABLES])
def test_committed_real_model_table_is_reached_from_its_spec(name):
    from conftest import require_shared_data
    require_shared_data()
    _check_table_run_ids(name)


def test_threshold_sweep_cells():
    spec = load_experiment(ROOT / "experiments" / "threshold_sweep.yaml")
    assert spec["labels"]["attribute"][0] == "all tokens"
    kn = [lb for lb, p in spec["points"].items() if p["attribute"].startswith("KN")]
    assert "method.kn.threshold=0.95" in spec["cells"][kn[3]] and "eval.split=dev" in spec["base"]


def test_metric_paths():
    assert metric({"x": {"y": 3}}, "x.y") == 3 and metric({"x": {}}, "x.y") is None
    assert metric({"metrics": {"pass@1": 0.5}}, "metrics.pass@1") == 0.5 and metric({"a": True}, "a") is None


def test_stand_in_variant_swaps_real_models_for_tiny_ones_and_keeps_the_layout(tmp_path):
    import pytest

    from xtf.experiment import SpecError

    spec_text = GRID.replace("base: [model=tiny]", "base: [model=llama32_1b]") + (
        "stand_in: {models: {llama32_1b: tiny_qwen2}, seeds: [3], overrides: [data.limit=8]}\n")
    (tmp_path / "g.yaml").write_text(spec_text)
    real, tiny = load_experiment(tmp_path / "g.yaml"), load_experiment(tmp_path / "g.yaml", stand_in=True)
    assert tiny["name"] == "g_tiny" and tiny["seeds"] == [3] and list(tiny["cells"]) == list(real["cells"])
    assert tiny["table"] == real["table"] and "Stand-in run" in tiny["description"]
    _, seed, overrides = expand(tiny)[0]
    assert overrides[:2] == ["model=tiny_qwen2", "data.limit=8"] and overrides[-2:] == ["seed=3", "experiment=g_tiny"]
    with composer() as compose:  # every stand-in run is a valid tiny-model config, under its own experiment
        cfg = compose(overrides)
        assert cfg.model.name == "tiny_qwen2" and cfg.experiment == "g_tiny" and cfg.data.limit == 8
    (tmp_path / "g.yaml").write_text(GRID)
    with pytest.raises(SpecError, match="stand_in"):
        load_experiment(tmp_path / "g.yaml", stand_in=True)
    for path in spec_files():  # the paper tables all have a runnable CPU stand-in
        if path.stem in ("table1", "table2", "code_passk"):
            cpu = "model=tiny" if path.stem == "code_passk" else "model=smollm2_135m"
            assert all(cpu in o for _, _, o in expand(load_experiment(path, stand_in=True)))


def test_stand_in_exclude_suffix_and_replaced_base_keys(tmp_path):
    """Table 1's CPU variant: LoRA rows only (stand_in.exclude), results under table1_smollm2 (stand_in.suffix);
    Table 2's: a stand-in override replaces the base's override of the same key (train=lora for train=full)."""
    t1 = load_experiment(ROOT / "experiments" / "table1.yaml", stand_in=True)
    assert t1["name"] == "table1_smollm2" and t1["seeds"] == [0, 1, 2] and t1["labels"]["train"] == ["LoRA"]
    assert {p["train"] for p in t1["points"].values()} == {"LoRA"} and set(t1["points"]) == set(t1["cells"])
    assert {p["method"] for p in t1["points"].values()} >= {"CA", "Normal", "DA", "TC", "SLM", "XTF"}
    t2 = load_experiment(ROOT / "experiments" / "table2.yaml", stand_in=True)
    assert t2["name"] == "table2_smollm2" and "train=full" not in t2["base"] and "train=lora" in t2["base"]
    (tmp_path / "g.yaml").write_text(GRID + "stand_in: {exclude: [{train: GPU}]}\n")
    from xtf.experiment import SpecError
    with pytest.raises(SpecError, match=r"stand_in.exclude\[0\].train: unknown label 'GPU'"):
        load_experiment(tmp_path / "g.yaml", stand_in=True)


def test_a_stand_in_that_leaves_cells_out_keeps_the_paper_numbers_of_the_cells_shown():
    """table1's stand-in drops the full rows (stand_in.exclude): the paper's numbers of those rows are not
    'stray' keys (that crashed make tables), and only the numbers of the LoRA cells shown are kept."""
    from xtf.tables import paper_values_for
    values, _ = paper_values_for(load_experiment(ROOT / "experiments" / "table1.yaml", stand_in=True))
    assert values and all("/full/" not in k for k in values)
    assert values["gsm8k/llama31_8b/LoRA/XTF"] == paper_values_for(
        load_experiment(ROOT / "experiments" / "table1.yaml"))[0]["gsm8k/llama31_8b/LoRA/XTF"]
