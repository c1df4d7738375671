"""Figures a researcher would put in a paper (xtf.plots), each rendered from synthetic records of the committed
spec: a PNG of sensible size that is not blank, every legend and text inside the figure, no legend over the
data; a zero bar visibly zero and labelled, a missing cell "—", never a bar; error bars = std over seeds; panels
without runs left out; pass@k panels share axes; trade-off points joined in x order; stand-in runs named by the
model that ran; an answer NLL axis around its data; a colour per method, the same in every figure."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from conftest import ROOT  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402

from xtf.experiment import load_experiment  # noqa: E402
from xtf.plots import figure, plot  # noqa: E402


def _spec(name, stand_in=False):
    return load_experiment(ROOT / "experiments" / f"{name}.yaml", stand_in=stand_in)


def _records(spec, value, seeds=(0, 1, 2), run_id=None, skip=()):
    """{cell: [record per seed]} with every table value's record path set to value(i, cell, seed)."""
    out = {}
    for i, cell in enumerate(spec["cells"]):
        if cell in skip:
            continue
        out[cell] = []
        for seed in seeds:
            record = {"run_id": run_id(cell, seed) if run_id else f"{cell}-{seed}"}
            for v in spec["table"]["values"]:
                node = record
                *parents, leaf = v["path"].split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = value(i, cell, seed)
            out[cell].append(record)
    return out


def _texts(fig):
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def _check_layout(fig):
    """Every legend and text inside the figure; a legend never covers an axes (the data)."""
    fig.canvas.draw()
    r, box = fig.canvas.get_renderer(), fig.bbox
    legends = list(fig.legends) + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
    assert legends or len(fig.axes) == 1
    inside = [*legends, fig._suptitle, *fig.texts, *(ax.title for ax in fig.axes if ax.get_visible())]
    for artist in inside:
        if artist is None or not artist.get_visible() or not getattr(artist, "get_text", lambda: "x")():
            continue
        b = artist.get_window_extent(r)
        assert b.x0 >= -1 and b.y0 >= -1 and b.x1 <= box.x1 + 1 and b.y1 <= box.y1 + 1, (artist, b, box)
    for leg in legends:
        for ax in fig.axes:
            if ax.get_visible():
                assert not leg.get_window_extent(r).overlaps(ax.get_window_extent(r)), "legend over the data"


@pytest.mark.parametrize("name, stand_in", [("noise_benchmark", False), ("threshold_sweep", False),
                                            ("code_passk", False), ("code_passk", True), ("table1", False),
                                            ("table1", True), ("table2", False)])
def test_every_committed_plot_renders_readably(tmp_path, name, stand_in):
    spec = _spec(name, stand_in)
    records = _records(spec, lambda i, cell, seed: (i % 7) / 10 + 0.05 * seed)
    fig = figure(spec, records)
    _check_layout(fig)
    plt.close(fig)
    out = plot(spec, records, tmp_path / f"{name}.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and 20_000 < out.stat().st_size < 4_000_000
    image = plt.imread(out)
    assert 500 <= image.shape[1] <= 3000 and 300 <= image.shape[0] <= 3000, image.shape
    assert image[..., :3].std() > 0.05  # not blank
    assert plot(spec, {}, tmp_path / "empty.png") is None and not (tmp_path / "empty.png").exists()


def test_zero_is_drawn_and_labelled_missing_is_a_dash_error_bars_are_std_over_seeds():
    spec = _spec("noise_benchmark")
    cells = list(spec["cells"])
    zero, missing = cells[0], cells[1]
    records = _records(spec, lambda i, cell, seed: 0.0 if cell == zero else 0.4 + 0.1 * seed, skip={missing})
    fig = figure(spec, records)
    (ax,) = fig.axes
    texts = _texts(fig)
    assert texts.count("0.000") == 1 and texts.count("—") == 1 and texts.count("0.500") == len(cells) - 2
    assert any(list(line.get_ydata()) == [0, 0] for line in ax.lines)  # the zero bar's mark on the baseline
    assert [h.get_label() for h in fig.legends[0].legend_handles] and "no complete run" in [
        t.get_text() for t in fig.legends[0].get_texts()]
    segments = [s for c in ax.containers if isinstance(c, ErrorbarContainer) for s in c.lines[2][0].get_segments()]
    assert len(segments) == len(cells) - 2  # none for the zero cell (std 0) and none for the missing one
    assert np.allclose(segments[0][:, 1], [0.4, 0.6])  # mean 0.5 ± sample std 0.1 over the three seeds
    plt.close(fig)


def test_grouped_bars_leave_excluded_cells_blank_and_panels_without_runs_out():
    spec = _spec("table1")
    gsm8k = {c for c in spec["cells"] if spec["points"][c]["task"] == "gsm8k"}
    records = _records(spec, lambda i, cell, seed: 0.3, skip=set(spec["cells"]) - gsm8k)
    fig = figure(spec, records)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["task = gsm8k, train = full", "task = gsm8k, train = LoRA"]
    assert "—" not in _texts(fig)  # LoRA/CA is excluded from the grid: blank, not "missing"
    assert _texts(fig).count("30.0") == len(gsm8k)
    omitted = "no complete run, not drawn: task/train = pubmedqa/full, pubmedqa/LoRA"   # omitted, and named
    assert omitted in fig._suptitle.get_text()
    plt.close(fig)


def test_passk_panels_share_axes_and_identical_stand_in_panels_are_drawn_once():
    spec = _spec("code_passk", stand_in=True)  # every model label runs the same tiny model: the same run ids
    same = lambda cell, seed: "/".join(v for k, v in spec["points"][cell].items() if k != "model") + f"-{seed}"  # noqa: E731
    fig = figure(spec, _records(spec, lambda i, cell, seed: 0.0, seeds=(0,), run_id=same))
    axes = [ax for ax in fig.axes if ax.get_visible()]
    # drawn once, named by the model that ran (tiny), not by the paper models' names alone
    assert len(axes) == 2 and all(ax.get_title().endswith("model = tiny\n(stand-in for r1_qwen_1_5b … mistral_7b, "
                                                          "7 models)") for ax in axes)
    assert axes[0].get_shared_y_axes().joined(axes[0], axes[1])
    assert _texts(fig).count("every series is 0 at every k") == 2
    assert [t.get_text() for t in fig.legends[0].get_texts()] == spec["labels"]["method"]
    plt.close(fig)


def test_tradeoff_points_joined_in_x_order_with_error_bars():
    spec = _spec("threshold_sweep")
    # kept fraction falls as the threshold index rises: threshold order is the reverse of x order
    records = _records(spec, lambda i, cell, seed: 1 - i / 20 + 0.01 * seed)
    fig = figure(spec, records)
    (ax,) = [a for a in fig.axes if a.get_title().startswith("trade-off")]
    lines = [c.lines[0] for c in ax.containers if isinstance(c, ErrorbarContainer) and len(c.lines[0].get_xdata()) > 1]
    assert len(lines) == len(spec["labels"]["attribute"]) - 1  # one per attribute but the reference
    for line in lines:
        xs = list(line.get_xdata())
        assert xs == sorted(xs)
    assert all(c.has_xerr and c.has_yerr for c in ax.containers if isinstance(c, ErrorbarContainer))
    assert ax.get_legend() is None and fig.legends  # one legend for the figure, outside the data
    _check_layout(fig)
    plt.close(fig)


def _stand_in_table1():
    """table1's SmolLM2 stand-in as recorded: every model but r1_qwen_14b runs the same runs (CA is r1_qwen_14b's)."""
    spec = _spec("table1", stand_in=True)
    same = lambda cell, seed: "/".join(v for k, v in spec["points"][cell].items()   # noqa: E731
                                       if k != "model" or v == "r1_qwen_14b") + f"-{seed}"
    return spec, _records(spec, lambda i, cell, seed: 0.3 + 0.01 * (i % 8), run_id=same)


def test_a_stand_in_legend_fits_the_saved_figure_and_labels_name_the_model_that_ran(tmp_path):
    spec, records = _stand_in_table1()
    fig = figure(spec, records)
    _check_layout(fig)   # the 8-method legend within the figure (it was cut at both sides)
    (legend,) = fig.legends
    width = legend.get_window_extent(fig.canvas.get_renderer()).width * 130 / fig.dpi   # pixels at the PNG's dpi
    ticks = {t.get_text() for ax in fig.axes for t in ax.get_xticklabels()}
    assert ticks == {"smollm2_135m\n(stand-in for llama31_8b, mistral_7b, r1_qwen_7b)",
                     "smollm2_135m\n(stand-in for r1_qwen_14b)"}, ticks
    plt.close(fig)
    image = plt.imread(plot(spec, records, tmp_path / "t1.png"))
    assert image.shape[1] >= width and (image[-40:, :, :3] < 0.9).any()   # the legend's row is in the PNG


def test_an_answer_nll_axis_spans_its_data_and_an_accuracy_axis_starts_at_zero():
    spec = _spec("all_methods")
    records = _records(spec, lambda i, cell, seed: 1.30 + 0.01 * i + 0.002 * seed)
    fig = figure(spec, records)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    low, high = ax.get_ylim()
    bars = [b for b in ax.patches if b.get_height()]
    assert 1.0 < low < min(b.get_height() for b in bars) - 0.002 and high > max(b.get_height() for b in bars) + 0.002
    assert "axis not from 0" in ax.get_ylabel()
    plt.close(fig)
    spec = _spec("noise_benchmark")   # accuracy: a share, 0 is its natural baseline
    fig = figure(spec, _records(spec, lambda i, cell, seed: 0.4 + 0.01 * i))
    assert fig.axes[0].get_ylim()[0] == 0 and "axis" not in fig.axes[0].get_ylabel()
    plt.close(fig)


def _bar_colours(fig) -> dict[str, tuple]:
    """{legend label: (face colour, hatch)} of a bar figure."""
    legend = fig.legends[0]
    return {t.get_text(): (tuple(h.get_facecolor()), h.get_hatch() or "")
            for t, h in zip(legend.get_texts(), legend.legend_handles) if hasattr(h, "get_hatch")}


def test_bars_have_a_colour_per_method_the_same_in_every_figure_with_a_legend():
    spec = _spec("all_methods")
    fig = figure(spec, _records(spec, lambda i, cell, seed: 1.3 + 0.01 * i))
    colours = _bar_colours(fig)
    assert list(colours) == list(spec["cells"]) and len({c for c, _ in colours.values()}) == len(colours)
    (ax,) = [a for a in fig.axes if a.get_visible()]
    assert len({tuple(b.get_facecolor()) for b in ax.patches}) == len(spec["cells"])   # not one colour for all
    plt.close(fig)
    spec1 = _spec("table1")   # hue = method: its labels have the same colours as all_methods' of the same method
    fig1 = figure(spec1, _records(spec1, lambda i, cell, seed: 0.3))
    colours1 = _bar_colours(fig1)
    for label in ("Normal", "XTF", "SLM", "TC", "DF", "DA"):
        assert colours1[label] == colours[label], label
    plt.close(fig1)
    spec2 = _spec("noise_benchmark")   # labels that ran the same method: its colour, told apart by hatch
    fig2 = figure(spec2, _records(spec2, lambda i, cell, seed: 0.3))
    colours2 = _bar_colours(fig2)
    assert colours2["normal"][0] == colours2["normal (clean data)"][0] == colours["Normal"][0]
    assert colours2["normal"][1] != colours2["normal (clean data)"][1]
    xtfs = [v for k, v in colours2.items() if k.startswith("xtf")]
    assert len({c for c, _ in xtfs}) == 1 and len({h for _, h in xtfs}) == len(xtfs) == 4
    plt.close(fig2)
