"""The frame every figure shares: its text style, a grid of panels (with a learning-rate row under them if asked),
accuracy and epoch axes, one legend outside the panels, warnings about what is not drawn, and the PNG + PDF files.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import matplotlib
from matplotlib import ticker  # no pyplot: the command line chooses the backend first

from qsnn.analysis import results
from qsnn.analysis.figure_styles import legend_order
from qsnn.analysis.results import ResultsWarning
from qsnn.errors import UserError

DEFAULT_DPI = 200
MARKER_MAX_POINTS = 30  # a curve of at most this many points (epochs) gets a marker on each
PANEL_SIZE = (3.3, 2.5)  # inches per data panel: three in a row make a two-column paper's full width, scaled 0.7
LR_HEIGHT = 1.1  # inches of the learning-rate row under a loss panel
# Figure text sized for a two-column paper at about the figure's own width.
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "legend.title_fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3}


def warn(message: str) -> None:
    """A ResultsWarning about data left out or a figure not drawn, shown at the caller of the function that warns."""
    warnings.warn(message, ResultsWarning, stacklevel=3)


def plain_tick(value: float, _position=None, digits: int = 4) -> str:
    """A tick label: "0.015", not "0.0150" or an offset (a few significant digits, no trailing zeros)."""
    return f"{value:.{digits}g}"


def epoch_axis(ax, last_epoch: int) -> None:
    """Whole-epoch ticks, and a short run gets half an epoch of room either side (one epoch is one point)."""
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
    if last_epoch <= MARKER_MAX_POINTS:
        ax.set_xlim(0.5, last_epoch + 0.5)


def percent_axis(ax) -> None:
    """An accuracy axis: percentages, so it never runs past 100, and ticks are plain numbers."""
    low, high = ax.get_ylim()
    ax.set_ylim(low, min(high, 100.0))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(plain_tick))


def panel_grid(keys: list[tuple], xlabel: str, ylabel: str, lr_row: bool = False):
    """(figure, {key: data axes}, {key: learning-rate axes}) with up to 3 panels a row, room for a legend."""
    import matplotlib.pyplot as plt  # here, so the table CLI never loads pyplot and the plot CLI picks a backend first

    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    heights = [PANEL_SIZE[1], LR_HEIGHT] * nrows if lr_row else [PANEL_SIZE[1]] * nrows
    size = (PANEL_SIZE[0] * ncols, sum(heights))  # the legend goes outside: save_figure's tight box adds it
    fig, axes = plt.subplots(len(heights), ncols, figsize=size, squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": heights})
    data_axes = axes[::2] if lr_row else axes
    for ax in list(data_axes.flat[len(keys):]) + (list(axes[1::2].flat[len(keys):]) if lr_row else []):
        fig.delaxes(ax)
    panels, lr_panels = {}, {}
    for i, key in enumerate(keys):
        ax, first = data_axes.flat[i], i % ncols == 0  # the y axes are named once a row, at its left
        ax.set(title=", ".join(map(str, key[:1] + key[2:])), xlabel="" if lr_row else xlabel,
               ylabel=ylabel if first else "")
        panels[key] = ax
        if lr_row:
            lr_ax = axes[1::2].flat[i]
            lr_ax.sharex(ax)
            ax.tick_params(labelbottom=False)
            lr_ax.set(xlabel=xlabel, ylabel="learning\nrate" if first else "")
            lr_panels[key] = lr_ax
    fig.align_ylabels()
    return fig, panels, lr_panels


def figure_legend(fig, n_trials: dict[str, int], styles: dict, spread: str, markers: bool, lines: bool = True) -> None:
    """One legend outside the panels (right of one panel, below several): an entry per experiment, by schedule."""
    from matplotlib.lines import Line2D

    counts = set(n_trials.values())
    entries = {}
    for key in sorted(n_trials, key=lambda k: legend_order(styles[k])):
        style = styles[key]
        label = style.label if len(counts) == 1 else f"{style.label} (n={n_trials[key]})"
        entries.setdefault(label, Line2D([], [], color=style.color, ls=style.linestyle if lines else "none",
                                         marker=style.marker if markers else None))
    if counts == {1}:
        title = "one trial each"
    else:
        over = f"{counts.pop()} trials" if len(counts) == 1 else "trials"
        title = f"mean over {over}, {spread}"
    if len(fig.axes) > 1 and len({ax.get_subplotspec().colspan.start for ax in fig.axes}) > 1:
        # Below, a column per schedule where they fit: entries are sorted by schedule and fill columns top down.
        fits = max(1, int(fig.get_figwidth() // (0.062 * max(map(len, entries)) + 0.8)))
        columns = len({styles[key].schedule for key in n_trials})
        ncols = columns if columns <= fits and len(entries) % columns == 0 else min(fits, len(entries))
        # Anchored outside the layout: save_figure's tight box takes in the legend however long it is.
        fig.legend(entries.values(), entries.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
                   title=title, ncols=ncols)
    else:
        fig.legend(entries.values(), entries.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                   title=title.replace(", ", ",\n"), alignment="left")


def save_figure(fig, out_dir: str | Path, stem: str, dpi: int = DEFAULT_DPI) -> list[Path]:
    """Save fig atomically as <out_dir>/<stem>.png (at dpi) and .pdf, creating out_dir; UserError if impossible."""
    from qsnn.runs.runlog import atomic_path  # imports torch: only when writing

    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            with atomic_path(path) as tmp:
                with matplotlib.rc_context(STYLE):  # tick labels are made when drawing: in the figures' style
                    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", pad_inches=0.05)  # all of a long legend
    except OSError as exc:
        raise UserError(f"cannot write figures to {out_dir}: {results.os_reason(exc)}") from None
    return paths
