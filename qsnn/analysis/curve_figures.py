"""Training loss by iteration and test accuracy by epoch: each experiment's mean over its trials with a shaded band
(+-1 sample std, or the trials' min-max), a panel per dataset (or per dataset and precision, or dataset and T).

The logged loss grows with the number of time steps T, so each run's loss is divided by its T to put runs of
different T on one scale; the first skipped iterations are dropped, then each trial is smoothed by an exponential
moving average. A linear loss axis is scaled to the curves after their first 5% of iterations, so the steep start
leaves the top rather than flattening the rest. An optional row under the loss panels shows each schedule's
learning rate on an axis from 0.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

import pandas as pd
from matplotlib import ticker  # no pyplot: the command line chooses the backend first

from qsnn.analysis.figure_layout import (MARKER_MAX_POINTS, epoch_axis, figure_legend, panel_grid, percent_axis,
                                         plain_tick, warn)
from qsnn.analysis.figure_styles import Style, experiment_styles, precision_rank
from qsnn.analysis.results import Run, TrialLog, collect_logs

DEFAULT_WINDOW = 50
MAX_POINTS = 2000  # curves are thinned to about this many points: invisible at figure size, small files
LOSS_FIT_FROM = 0.05  # a linear loss axis fits the curves from this share of their iterations on
BANDS = {"std": "±1 std", "minmax": "min–max"}
PANEL_CHOICES = ("dataset", "precision", "steps")


@dataclass(frozen=True)
class Options:
    """How the curves are drawn: smoothing, skipped iterations, log loss axis, band, panels."""

    window: int = DEFAULT_WINDOW
    skip: int = 0
    logy: bool = False
    band: str = "std"
    panels: str = "dataset"


def smooth(series: pd.Series, window: int) -> pd.Series:
    """Exponential moving average of span `window` (bias-corrected, so no step where a window would fill)."""
    return series.ewm(span=window).mean()


def trial_stats(curves: list[pd.Series]) -> pd.DataFrame:
    """Align trials on their index; mean, sample std (0 where one trial), min and max of those present at each step."""
    wide = pd.concat(curves, axis=1, keys=range(len(curves))).sort_index()
    return pd.DataFrame({"mean": wide.mean(axis=1), "std": wide.std(axis=1, ddof=1).fillna(0.0),
                         "min": wide.min(axis=1), "max": wide.max(axis=1)})


def band_limits(stats: pd.DataFrame, band: str) -> tuple[pd.Series, pd.Series]:
    """Lower and upper edge of the shaded band: mean ± std, or the trials' min and max."""
    if band == "minmax":
        return stats["min"], stats["max"]
    return stats["mean"] - stats["std"], stats["mean"] + stats["std"]


def loss_curve(log: TrialLog, steps: int | None, options: Options) -> pd.Series:
    """One trial's loss by iteration: iterations up to options.skip dropped, divided by T, then smoothed."""
    loss = log.data.set_index("iteration")["loss"]
    loss = loss[loss.index > options.skip]
    return smooth(loss / steps if steps else loss, options.window)


def loss_ylabel(styles: Iterable[Style], window: int) -> str:
    """The loss axis title: says whether the loss is per time step and how it is smoothed."""
    quantity = "training loss / T" if any(style.steps for style in styles) else "training loss"
    return f"{quantity}\n({'not smoothed' if window == 1 else f'EMA, span {window} it.'})"


def panel_key(style: Style, dataset: str, panels: str) -> tuple:
    """The panel an experiment is drawn in: its dataset, and with --panels its precision or T."""
    if panels == "precision":
        return (dataset, precision_rank(style.precision), style.precision)
    if panels == "steps":
        return (dataset, style.steps or 0, f"T={style.steps}" if style.steps else "T unknown")
    return (dataset,)


def panel_keys(groups: dict, styles: dict, panels: str) -> dict[str, tuple]:
    """{experiment: its panel}; a dataset whose experiments all fall in one panel keeps a plain dataset panel."""
    keys = {key: panel_key(styles[key], logs[0].run.dataset, panels) for key, logs in groups.items()}
    split = {dataset for dataset in {k[0] for k in keys.values()}
             if len({k for k in keys.values() if k[0] == dataset}) > 1}
    return {key: panel if panel[0] in split else panel[:1] for key, panel in keys.items()}


def _thin(data):
    return data.iloc[:: max(1, math.ceil(len(data) / MAX_POINTS))]


def draw_curve(ax, stats: pd.DataFrame, style: Style, label: str, band: str, n_trials: int) -> None:
    """The mean as a line (a marker per point where there are few), the band shaded behind it."""
    stats = _thin(stats)
    few = len(stats) <= MARKER_MAX_POINTS
    ax.plot(stats.index, stats["mean"], color=style.color, ls=style.linestyle, marker=style.marker if few else None,
            ms=4.5, label=label, zorder=3)
    if n_trials > 1:
        low, high = band_limits(stats, band)
        ax.fill_between(stats.index, low, high, color=style.color, alpha=0.15, lw=0, zorder=2)


def plot_loss_curves(runs: list[Run], window: int = DEFAULT_WINDOW, lr: bool = False, *, options: Options = None,
                     styles: dict | None = None, groups: dict | None = None, lr_groups: dict | None = None):
    """Loss / T vs iteration, a panel per dataset, mean and band over trials per experiment; None if no log.

    With lr, a row under the loss panels shows each schedule's learning rate (its first trial's) from 0.
    """
    options = options or Options(window=window)
    groups = collect_logs(runs, "loss") if groups is None else groups
    if not groups:
        return warn("no readable loss log; loss curves not drawn")
    styles = styles or experiment_styles(runs, loss_groups=groups)
    curves = {}
    for key, logs in groups.items():
        trial_curves = [c for log in logs if not (c := loss_curve(log, styles[key].steps, options)).empty]
        if trial_curves:
            curves[key] = (logs, trial_curves)
        else:
            warn(f"{logs[0].run.folder}: no loss logged after iteration {options.skip}; left out of the loss curves")
    if not curves:
        return warn(f"no loss logged after iteration {options.skip}; loss curves not drawn")
    keys = panel_keys({key: logs for key, (logs, _) in curves.items()}, styles, options.panels)
    fig, panels, lr_panels = panel_grid(sorted(set(keys.values())), "iteration",
                                     loss_ylabel((styles[k] for k in curves), options.window), lr_row=lr)
    for key, (logs, trial_curves) in curves.items():
        draw_curve(panels[keys[key]], trial_stats(trial_curves), styles[key], f"{styles[key].label} (n={len(logs)})",
                   options.band, len(logs))
    for ax in panels.values():
        ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
        if options.logy:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0, 7.0), numticks=8))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(plain_tick))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        else:
            fit_loss_axis(ax)
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(plain_tick))
    if lr:
        lr_groups = collect_logs(runs, "lr") if lr_groups is None else lr_groups
        draw_learning_rates(lr_panels, {key: lr_groups.get(key, []) for key in curves}, keys, styles)
    figure_legend(fig, {key: len(logs) for key, (logs, _) in curves.items()}, styles, f"shaded: {BANDS[options.band]}",
            markers=False)
    return fig


def fit_loss_axis(ax) -> None:
    """Lower a linear loss axis's top to the curves after their first iterations, which would flatten the rest."""
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    if not lines:
        return
    start = min(line.get_xdata()[0] for line in lines)
    cut = start + LOSS_FIT_FROM * (max(line.get_xdata()[-1] for line in lines) - start)
    later = [y for line in lines for x, y in zip(line.get_xdata(), line.get_ydata()) if x >= cut]
    bands = [path.vertices[:, 1] for band in ax.collections for path in band.get_paths()]
    bottom = min([line.get_ydata().min() for line in lines] + [edge.min() for edge in bands])
    top = max(later, default=ax.get_ylim()[1])
    margin = 0.08 * (top - bottom)
    ax.set_ylim(max(ax.get_ylim()[0], bottom - margin), min(ax.get_ylim()[1], top + margin))


def draw_learning_rates(lr_panels: dict, lr_groups: dict, keys: dict, styles: dict) -> None:
    """Each panel's distinct schedules' learning rate (first trial) on an axis from 0 to just above the peak."""
    drawn = defaultdict(set)
    for key, logs in lr_groups.items():
        ax, style = lr_panels[keys[key]], styles[key]
        if not logs or (style.schedule, style.extra) in drawn[ax]:
            continue  # the schedule of several precisions: its LR is the same, draw it once
        drawn[ax].add((style.schedule, style.extra))
        first = _thin(logs[0].data.set_index("iteration")["lr"])
        ax.plot(first.index, first, color=style.color, lw=1.2)
    for ax in lr_panels.values():
        ax.set_ylim(0, max((line.get_ydata().max() for line in ax.get_lines()), default=1.0) * 1.1 or 1.0)
        ax.yaxis.set_major_locator(ticker.MaxNLocator(3))
        formatter = ticker.ScalarFormatter(useMathText=True)
        formatter.set_powerlimits((-2, 3))  # 0.0029 reads as 2.9 with "×10⁻³" above the axis
        ax.yaxis.set_major_formatter(formatter)
        ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))


def plot_test_accuracy(acc_logs: dict[str, list[TrialLog]], styles: dict | None = None, options: Options = None):
    """Test accuracy vs epoch, a panel per dataset, mean and band over trials per experiment; None if no log."""
    options = options or Options()
    if not acc_logs:
        return warn("no readable acc log; test accuracy not drawn")
    if styles is None:
        styles = experiment_styles([logs[0].run for logs in acc_logs.values()], acc_groups=acc_logs)
    keys = panel_keys(acc_logs, styles, options.panels)
    fig, panels, _ = panel_grid(sorted(set(keys.values())), "epoch", "test accuracy (%)")
    last_epoch = defaultdict(int)
    for key, logs in acc_logs.items():
        curves = [log.data.set_index("epoch")["test_acc"] for log in logs]
        draw_curve(panels[keys[key]], trial_stats(curves), styles[key], f"{styles[key].label} (n={len(logs)})",
                   options.band, len(logs))
        last_epoch[keys[key]] = max(last_epoch[keys[key]], *(int(c.index.max()) for c in curves))
    for key, ax in panels.items():
        epoch_axis(ax, last_epoch[key])
        percent_axis(ax)
    many = max(last_epoch.values()) > MARKER_MAX_POINTS
    figure_legend(fig, {key: len(logs) for key, logs in acc_logs.items()}, styles, f"shaded: {BANDS[options.band]}",
            markers=not many)
    return fig
