"""Figures: what a reader sees on them, checked on the matplotlib Figure before it is written
(`save_figure` is caught, so the axes' ticks and the texts' drawn boxes can be read back)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb

from chainrule import plots
from chainrule.history import EXPLODING_RATIO, VANISHING_RATIO, History


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots functions drew, in order, instead of writing them."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig))
    return figures


def one_epoch_history() -> History:
    h = History()
    h.epochs = [{"epoch": 1, "loss": 0.5, "accuracy": 0.8}]
    h.best_epoch = 0
    h.gradient_flow = [{"0:Linear": {"grad_norm": 0.1, "update_ratio": 1e-3}, "1:ReLU": {"dead_fraction": 0.1}}]
    return h


@pytest.mark.parametrize("draw", [plots.learning_curves, plots.gradient_flow])
def test_a_one_epoch_run_has_the_one_tick_1_on_its_epoch_axis(draw, drawn, tmp_path):
    # MaxNLocator(integer=True) found no integers in the span matplotlib gives one point
    # (0.945 to 1.05) and ticked fractions, with none at 1
    draw(one_epoch_history(), tmp_path / "fig.png")
    fig = drawn[0]
    fig.canvas.draw()
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            assert list(ax.get_xticks()) == [1]
            assert [t.get_text() for t in ax.get_xticklabels()] == ["1"]


@pytest.mark.parametrize("draw", [plots.learning_curves, plots.gradient_flow])
def test_a_longer_run_ticks_whole_epochs_only(draw, drawn, tmp_path):
    h = one_epoch_history()
    h.epochs = [{"epoch": e, "loss": 1 / e, "accuracy": 0.5} for e in range(1, 4)]
    h.gradient_flow = h.gradient_flow * 3
    draw(h, tmp_path / "fig.png")
    fig = drawn[0]
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown and all(t == int(t) for t in shown) and {1, 3} <= set(shown)


def test_a_metric_with_one_finite_value_still_ticks_whole_epochs(drawn, tmp_path):
    # the loss panel drew one point (epoch 1's loss NaN) in matplotlib's span of a few hundredths
    # around it, ticked 1.900 1.925 ... 2.100, printed over one another
    h = History()
    h.epochs = [{"epoch": 1, "loss": float("nan"), "accuracy": 0.5}, {"epoch": 2, "loss": 0.3, "accuracy": 0.9}]
    plots.learning_curves(h, tmp_path / "fig.png")
    fig = drawn[0]
    fig.canvas.draw()
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        shown = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert shown == [1, 2], (ax.get_ylabel(), shown)


def contrast(a, b) -> float:
    """WCAG's contrast ratio of two colours, 1 (none) to 21 (black on white)."""
    def luminance(colour):
        c = np.array(to_rgb(colour))
        return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4) @ [0.2126, 0.7152, 0.0722]

    light, dark = sorted((luminance(a), luminance(b)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


@pytest.mark.parametrize("cm", [
    [[910, 142], [262, 686]],  # a binary classifier: no cell 0, the scale started at the 142 mistakes
    [[5, 0, 1], [0, 40, 3], [2, 9, 300]],
    [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12], [13, 14, 15, 16]],
    [[5]],  # (one class: the scale from 5 to 5 drew it white, the text above half of 5 white too)
])
def test_every_count_of_a_confusion_matrix_is_legible_on_its_cell(cm, drawn, tmp_path):
    # the text turned white above half the largest count while the colours started at the
    # smallest: with no empty cell, the fewest mistakes were drawn white on white
    plots.confusion_matrix(np.array(cm), tmp_path / "cm.png")
    (ax,) = drawn[0].axes
    (image,) = ax.get_images()
    cells = image.cmap(image.norm(image.get_array()))
    counts = ax.texts
    assert len(counts) == np.size(cm)
    for text in counts:
        j, i = (round(v) for v in text.get_position())
        assert text.get_text() == str(cm[i][j])
        assert contrast(text.get_color(), cells[i, j]) >= 4.5, (cm[i][j], text.get_color(), cells[i, j])
        if cm[i][j]:  # (and no count looks like none, which is white)
            assert not np.allclose(cells[i, j], image.cmap(0.0)), cm[i][j]


@pytest.mark.parametrize("rows", [1, 5])
def test_an_image_grids_title_clears_its_first_rows_captions(rows, drawn, tmp_path):
    # Fashion-MNIST's three-line captions ("test #17\nT-shirt/top\n-> Shirt (99%)") under a title
    # kept 0.4 in while the top margin was a share of the figure's height: with one row the
    # title was drawn over the captions
    n = 5 * rows
    titles = [f"test #{i}\nT-shirt/top\n-> Shirt (99%)" for i in range(n)]
    plots.image_grid(np.zeros((n, 28, 28)), tmp_path / "grid.png", titles=titles, cols=5,
                     title=f"{n} most confidently wrong test images (true -> predicted)")
    fig = drawn[0]
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    (title,) = [t.get_window_extent(renderer) for t in fig.texts]  # (the suptitle)
    for ax in fig.axes[:5]:
        caption = ax.title.get_window_extent(renderer)
        assert not title.overlaps(caption), (title, caption)
        assert title.y0 >= caption.y1


def test_gradient_flows_update_ratio_panel_says_what_the_gradient_report_flags(drawn, tmp_path):
    # The panel shaded 1e-4 to 1e-2 as a "healthy range" while gradient_report flags a layer only
    # above 1e-1 or below 1e-6: a layer at 0.016 was drawn as unhealthy and never flagged
    h = one_epoch_history()
    h.gradient_flow = [{"0:Linear": {"grad_norm": 0.1, "update_ratio": 0.016}}]
    assert "<-" not in h.gradient_report()  # (not flagged)
    plots.gradient_flow(h, tmp_path / "flow.png")
    (ax,) = [ax for ax in drawn[0].axes if ax.get_ylabel() == "update / weight"]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any("healthy" in label for label in labels)
    lines = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines() if line.get_label() != "0:Linear"}
    assert lines == {"EXPLODING above": EXPLODING_RATIO, "VANISHING below": VANISHING_RATIO}
    assert (EXPLODING_RATIO, VANISHING_RATIO) == (1e-1, 1e-6)  # (the report's thresholds, kept)


def test_gradient_flow_of_gradients_all_zero_draws_them_without_matplotlibs_warning(drawn, tmp_path):
    """Saturated sigmoids (`digits train --model small --lr 1e30`) pass no gradient back: on a log
    scale, matplotlib warned "Data has no positive values, and therefore cannot be log-scaled", with
    its source line, on standard error. Such a panel is linear, and says that all was 0."""
    h = one_epoch_history()
    h.gradient_flow = [{"0:Linear": {"grad_norm": 0.0, "update_ratio": 0.0}, "1:ReLU": {"dead_fraction": 1.0},
                        "2:Linear": {"grad_norm": 0.0, "update_ratio": 0.0}}] * 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plots.gradient_flow(h, tmp_path / "flow.png")
        drawn[0].canvas.draw()
    for ax in drawn[0].axes[:2]:
        assert ax.get_yscale() == "linear" and [t.get_text() for t in ax.texts] == ["all 0"], ax.get_ylabel()
    h.gradient_flow = [{"0:Linear": {"grad_norm": 0.0, "update_ratio": 0.0}},
                       {"0:Linear": {"grad_norm": 0.5, "update_ratio": 1e-3}}]  # (0 in one epoch only: a log scale)
    plots.gradient_flow(h, tmp_path / "flow.png")
    assert [ax.get_yscale() for ax in drawn[1].axes] == ["log", "log"] and not drawn[1].axes[0].texts
