"""Best test accuracy against weight memory: a point per experiment (error bar: std over its trials) on a log KiB
axis with a tick at each precision's memory, a panel per dataset."""

from __future__ import annotations

from collections import defaultdict

import pandas as pd

from qsnn.analysis.figure_layout import figure_legend, panel_grid, percent_axis, plain_tick, warn
from qsnn.analysis.figure_styles import legend_order


def plot_accuracy_vs_memory(table: pd.DataFrame, styles: dict):
    """Mean best test accuracy (error bar: std over trials) against weight KiB, a point per experiment.

    table: results.accuracy_table's rows with an "experiment" column (the key of styles).
    """
    rows = table.dropna(subset=["weight_kib"])
    if rows.empty:
        return warn("no eff_<exp>_t<k>.csv log with weight_kib; accuracy vs memory not drawn")
    if rows.groupby("dataset").weight_kib.nunique().max() < 2:
        return warn(f"one weight memory per dataset ({', '.join(sorted(rows.dataset.unique()))}): "
                     "accuracy vs memory not drawn")
    fig, panels, _ = panel_grid([(d,) for d in sorted(rows.dataset.unique())], "weight memory (KiB, log scale)",
                             "best test accuracy (%)")
    for (dataset,), ax in panels.items():
        here = rows[rows.dataset == dataset]
        here = here.assign(order=[legend_order(styles[key]) for key in here.experiment]).sort_values("order")
        for row, x in zip(here.itertuples(), dodge(here.weight_kib)):
            style = styles[row.experiment]
            yerr = None if pd.isna(row.test_acc_std) else row.test_acc_std
            ax.errorbar(x, row.test_acc_mean, yerr=yerr, fmt=style.marker, ms=6, capsize=3, color=style.color,
                        label=f"{style.label} (n={row.n_trials})")
        ticks = sorted(here.weight_kib.unique())
        ax.set_xscale("log")
        # A tick at each precision's memory, to 3 significant digits (9.47, not 9.47266).
        ax.set_xticks(ticks, [plain_tick(kib, digits=3) for kib in ticks], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
        ax.grid(False, axis="x")
        percent_axis(ax)
    figure_legend(fig, dict(zip(rows.experiment, rows.n_trials)), styles, "bars: ±1 std", markers=True, lines=False)
    return fig


def dodge(xs: pd.Series) -> list[float]:
    """xs, where several are equal spread apart by factors of 1.07 on the log axis, so no point hides another."""
    position, count = defaultdict(int), xs.value_counts()
    spread = []
    for x in xs:
        spread.append(x * 1.07 ** (position[x] - (count[x] - 1) / 2))
        position[x] += 1
    return spread
