"""Figures: learning curves, confusion matrices, gradient flow, weight and image grids.

Every function draws on a matplotlib `Figure` of its own (the object-oriented API: no pyplot
state shared between threads, no display needed, safe in servers and CI) and writes the PNG
atomically, so a crash never leaves a half-drawn file behind.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import numpy as np

from chainrule import metrics
from chainrule.errors import WARNING_FILTERS
from chainrule.files import atomic_write_bytes
from chainrule.history import EXPLODING_RATIO, VANISHING_RATIO


def _subplots(*args, **kwargs):
    """`(figure, axes)` like `pyplot.subplots`, on a Figure that belongs to no global state.

    matplotlib is imported here, on first use, rather than with this module: it costs ~0.3 s,
    which commands that draw nothing (`spam classify`, run once per delivered message) must not pay.
    """
    from matplotlib.figure import Figure

    fig_kwargs = {k: kwargs.pop(k) for k in ("figsize", "layout") if k in kwargs}
    fig = Figure(**fig_kwargs)
    return fig, fig.subplots(*args, **kwargs)


def _epoch_ticks(ax, epochs) -> None:
    """Whole epochs only on `ax`'s x axis, which spans every epoch of `epochs`, drawn or not.

    The span is set from the epochs, not left to what was drawn: matplotlib widens a one-point
    range (a one-epoch run, or a metric finite in one epoch alone, NaN in the others) to a few
    hundredths either side, where `MaxNLocator(integer=True)` finds no integer and ticks fractions
    (1.900 1.925 ... 2.100) instead. A single epoch gets the one tick at it."""
    from matplotlib.ticker import MaxNLocator  # (see `_subplots`)

    if len(epochs) == 0:
        return
    first, last = min(epochs), max(epochs)
    margin = max(0.5, 0.05 * (last - first))  # (matplotlib's own 5% margin, half an epoch at least)
    ax.set_xlim(first - margin, last + margin)
    if first == last:
        ax.set_xticks([first])
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig, path) -> None:
    """Render `fig` in the format its suffix names (PNG, SVG, PDF, JPEG, ...) and write it
    atomically to `path`; an unknown suffix is a ValueError naming the formats."""
    kind = Path(path).suffix.lower().lstrip(".")
    formats = set(fig.canvas.get_supported_filetypes()) - {"pgf"}  # (PGF needs a LaTeX installation)
    if Path(path).is_dir():
        raise ValueError(f"{path} is a folder: name a figure file, ending in .png, .svg, .pdf or another "
                         f"format matplotlib writes")
    if kind not in formats:
        raise ValueError(f"{path}: a figure file ends in one of .{', .'.join(sorted(formats))}")
    buf = io.BytesIO()
    # A character the font lacks (a class name in Chinese, with no CJK font installed) is drawn as
    # an empty box, and matplotlib warns on stderr of each one, in several lines: cosmetic, so quiet.
    with WARNING_FILTERS, warnings.catch_warnings():
        warnings.filterwarnings("ignore", r"Glyph \d+ .* missing from font", UserWarning)
        fig.savefig(buf, format=kind, dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def learning_curves(history, path, title: str = "Learning curves") -> None:
    """Loss and accuracy per epoch, training vs validation, side by side.

    `history` is a `chainrule.History` (or anything with `.epochs`, a list of per-epoch dicts).
    """
    epochs = [e["epoch"] for e in history.epochs]
    has_acc = any("accuracy" in e for e in history.epochs)
    fig, axes = _subplots(1, 2 if has_acc else 1, figsize=(10 if has_acc else 5.5, 4), squeeze=False)
    for ax, metric in zip(axes[0], ("loss", "accuracy"), strict=False):
        for key, label, style in ((metric, "training", "-o"), (f"val_{metric}", "validation", "-s")):
            values = [e.get(key) for e in history.epochs]
            if any(v is not None for v in values):
                ax.plot(epochs, [np.nan if v is None else v for v in values], style, ms=3, label=label)
        best = getattr(history, "best_epoch", None)
        if best is not None:
            ax.axvline(best + 1, color="grey", ls=":", lw=1, label=f"best epoch ({best + 1})")
        ax.set_xlabel("epoch")
        _epoch_ticks(ax, epochs)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
        if metric == "loss" and all(e.get("loss", 0) > 0 for e in history.epochs):
            ax.set_yscale("log")
    fig.suptitle(title)
    save_figure(fig, path)


def _ink_on(rgba: np.ndarray) -> np.ndarray:
    """"black" or "white" for text on each colour of `rgba` (..., 4), whichever contrasts more.

    WCAG's contrast ratio (L1 + 0.05) / (L2 + 0.05), with L the relative luminance of linear sRGB,
    is the same for both inks where L = 0.179: black above it, white below, at least 4.58:1."""
    rgb = rgba[..., :3]
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    return np.where(linear @ [0.2126, 0.7152, 0.0722] > 0.179, "black", "white")


# Classes up to which a confusion matrix writes the count in every cell and grows with the classes;
# a larger one keeps this size (a 200-class matrix with every count written took 45 s and 4 GB).
MATRIX_CELLS_WRITTEN = 40


def confusion_matrix(cm: np.ndarray, path, labels=None, title: str = "Confusion matrix") -> None:
    """A confusion matrix of counts (`metrics.confusion_matrix`) as a heat map (rows: true, columns:
    predicted), with one label per class and, up to `MATRIX_CELLS_WRITTEN` classes, the count in
    every cell (more make cells too small to write in: the colours alone show them).

    The colour scale is logarithmic so the few mistakes stay visible next to the large diagonal,
    and starts at 0 so that white means no example, even where no cell is empty. Each count is
    written in black or white, whichever stands out more from the colour drawn under it.
    """
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or not cm.size:
        raise ValueError(f"confusion_matrix: expected a square matrix of counts, got shape {cm.shape}")
    if not (np.issubdtype(cm.dtype, np.number) and np.all(np.isfinite(cm)) and np.all(cm >= 0)
            and np.all(cm == np.round(cm))):
        raise ValueError("confusion_matrix: the cells must be counts (whole numbers >= 0)")
    k = cm.shape[0]
    labels = [str(i) for i in range(k)] if labels is None else [str(x) for x in labels]
    if len(labels) != k:
        raise ValueError(f"confusion_matrix: {len(labels)} labels for {k} classes")
    side = min(k, MATRIX_CELLS_WRITTEN)  # beyond that, cells too small to write in: the colours alone
    fig, ax = _subplots(figsize=(1.0 + 0.55 * side, 0.8 + 0.5 * side))
    shown = np.log1p(cm.astype(float))
    image = ax.imshow(shown, cmap="Blues", vmin=0)
    ink = _ink_on(image.cmap(image.norm(shown)))
    for i in range(k if k <= MATRIX_CELLS_WRITTEN else 0):
        for j in range(k):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=8, color=ink[i, j])
    long = max((len(x) for x in labels), default=0) > 2  # class names, not digits: tilt them to fit
    ax.set_xticks(range(k), labels, rotation=45 if long else 0, ha="right" if long else "center")
    ax.set_yticks(range(k), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    total = cm.sum()
    acc = np.trace(cm) / total if total else float("nan")
    ax.set_title(f"{title} (accuracy {100 * acc:.2f}%, n={total})")
    save_figure(fig, path)


def gradient_flow(history, path, title: str = "Gradient flow") -> None:
    """Per-layer gradient norm and update/weight ratio per epoch, from `History.gradient_flow`.

    A layer's update/weight ratio is typically near 1e-3 (the shaded band, 1e-4 to 1e-2, a rule of
    thumb, not a verdict); the dashed lines are where `History.gradient_report` flags a layer,
    EXPLODING above 1e-1 and VANISHING below 1e-6, so a point between the band and a line is
    unusual but not flagged. The report's thresholds stay wide on purpose: a large learning rate
    early on, or a nearly converged layer, leaves the band without anything being wrong. Dead
    ReLU fractions get a third panel when the network has ReLUs.
    """
    flow = history.gradient_flow
    epochs = np.arange(1, len(flow) + 1)
    layers = list(dict.fromkeys(name for stats in flow for name in stats))
    weighted = [n for n in layers if any("grad_norm" in s.get(n, {}) for s in flow)]
    relus = [n for n in layers if any("dead_fraction" in s.get(n, {}) for s in flow)]
    panels = [("grad_norm", "mean gradient norm", weighted), ("update_ratio", "update / weight", weighted)]
    if relus:
        panels.append(("dead_fraction", "dead ReLU units (fraction)", relus))
    fig, axes = _subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False, layout="constrained")
    for ax, (key, label, names) in zip(axes[0], panels, strict=True):
        drawn = []
        for name in names:
            values = [s.get(name, {}).get(key, np.nan) for s in flow]
            ax.plot(epochs, values, "-o", ms=3, label=name)
            drawn += values
        if key != "dead_fraction":
            _log_scale(ax, drawn)
        if key == "update_ratio":
            ax.axhspan(1e-4, 1e-2, color="green", alpha=0.08, label="typical (~1e-3)")
            ax.axhline(EXPLODING_RATIO, color="C3", ls="--", lw=1, label="EXPLODING above")
            ax.axhline(VANISHING_RATIO, color="C7", ls="--", lw=1, label="VANISHING below")
        ax.set_xlabel("epoch")
        _epoch_ticks(ax, epochs)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    save_figure(fig, path)


def _log_scale(ax, values) -> None:
    """A log scale on `ax`'s y axis, which draws `values`, where one is a finite number above 0.
    Where every one is 0 (saturated sigmoids pass no gradient back), matplotlib cannot log-scale
    them and warned so on standard error, its source line with it: the axis stays linear, and the
    panel says that all was 0."""
    values = np.asarray(values, dtype=float)
    if np.any(np.isfinite(values) & (values > 0)):
        ax.set_yscale("log")
    elif values.size and np.all(values == 0):
        ax.text(0.5, 0.5, "all 0", transform=ax.transAxes, ha="center", va="center", color="grey")


def image_grid(images, path, titles=None, cols: int | None = None, title: str | None = None,
               symmetric: bool = False) -> None:
    """Small images in a grid, each with an optional caption.

    Args:
        images: array (n, h, w), drawn with ink (high values) dark on white, like a digit on paper.
        titles: one caption per image, or None.
        symmetric: colour scale centred on zero with a diverging map, for weights (red +, blue -).
    """
    images = np.asarray(images)
    n = len(images)
    cols = cols or min(n, 10) or 1
    rows = max(1, math.ceil(n / cols))
    lines = max((str(t).count("\n") + 1 for t in titles), default=0) if titles is not None else 0
    # Constrained layout places the title above the first row's captions whatever their lines and
    # the rows: a top margin kept as a share of the figure's height drew a one-row grid's title
    # over three-line captions (Fashion-MNIST's "T-shirt/top\n-> Shirt").
    fig, axes = _subplots(rows, cols, figsize=(1.3 * cols, (1.2 + 0.15 * lines) * rows + (0.4 if title else 0)),
                             squeeze=False, layout="constrained")
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if symmetric:
            m = float(np.abs(img).max()) or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        else:
            ax.imshow(img, cmap="gray_r", interpolation="nearest")
        if titles is not None:
            ax.set_title(str(titles[i]), fontsize=7)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def weight_grid(weights: np.ndarray, path, image_shape=(28, 28), max_units: int = 100,
                title: str = "First-layer weights") -> None:
    """First-layer weights as images: column j of `weights` (in_features, units) is what hidden
    unit j responds to, drawn in the input's own shape (red: positive weight, blue: negative)."""
    w = np.asarray(weights)
    units = min(w.shape[1], max_units)
    tiles = w[:, :units].T.reshape((units, *image_shape))
    image_grid(tiles, path, titles=[str(j) for j in range(units)], cols=min(units, 10),
               title=f"{title} ({units} of {w.shape[1]} units)", symmetric=True)


def pr_roc_curves(y_true, scores, path, cutoff: float | None = None,
                  title: str = "Precision–recall and ROC") -> None:
    """Precision–recall and ROC curves of a binary scorer side by side (positive class = 1), with
    the operating point at `cutoff` marked on both. The ROC's x axis is logarithmic: for a spam
    filter the interesting part is a false-positive rate (blocked ham) well under 1%."""
    y_true, scores = np.asarray(y_true), np.asarray(scores, np.float64)
    fpr, tpr, _ = metrics.roc_curve(y_true, scores)
    precision, recall, _ = metrics.precision_recall_curve(y_true, scores)
    auc = metrics.roc_auc(y_true, scores)
    fig, (ax_pr, ax_roc) = _subplots(1, 2, figsize=(10, 4))
    ax_pr.plot(recall, precision, lw=1.5)
    ax_pr.set_xlabel("recall (spam caught)")
    ax_pr.set_ylabel("precision")
    ax_roc.plot(np.maximum(fpr, 1e-4), tpr, lw=1.5, label=f"AUC {auc:.4f}")
    ax_roc.set_xscale("log")
    ax_roc.set_xlabel("false-positive rate (blocked ham), log scale")
    ax_roc.set_ylabel("true-positive rate (spam caught)")
    if cutoff is not None:
        pred = scores >= cutoff
        pos, neg = max(int(y_true.sum()), 1), max(int((1 - y_true).sum()), 1)
        tp, fp = int((pred & (y_true == 1)).sum()), int((pred & (y_true == 0)).sum())
        rec, prec = tp / pos, tp / max(tp + fp, 1)
        ax_pr.plot([rec], [prec], "o", color="C3", label=f"cut-off {cutoff:.3f}")
        ax_roc.plot([max(fp / neg, 1e-4)], [rec], "o", color="C3", label=f"cut-off {cutoff:.3f}")
        ax_pr.legend(loc="lower left")
    for ax in (ax_pr, ax_roc):
        ax.grid(alpha=0.3)
    ax_roc.legend(loc="lower right")
    fig.suptitle(title)
    save_figure(fig, path)
