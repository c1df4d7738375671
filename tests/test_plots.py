"""Figures a researcher would put in a paper (xtf.plots), each rendered from synthetic records of the committed
spec: a PNG of sensible size that is not blank, every legend and text inside the figure, no legend over the
data; a zero bar visibly zero and labelled, a missing cell "—", never a bar; error bars = std over seeds; panels
without runs left out; pass@k panels share axes; trade-off points joined in x order."""

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
    assert len(axes) == 2 and all("7 labels, same runs" in ax.get_title() for ax in axes)
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
