"""Plot training loss, test accuracy and (with --memory) accuracy against weight memory of QSNN runs.

One panel per dataset, one line per experiment (a config without run-time keys; see
extract_test_set_accuracy.py): the mean over trials with a shaded band of +-1 sample std. The loss
of each trial is smoothed by an exponential moving average and drawn against the iteration; trials
of unequal length are averaged over those present at each step. Writes loss_curves, test_accuracy
and accuracy_vs_memory as .png and .pdf.

Relative paths (ROOT, --out) are taken from the current directory; ROOT defaults to the repository.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402  (no pyplot: the backend is chosen later)

from qsnn import results  # noqa: E402
from qsnn.errors import UserError  # noqa: E402
from qsnn.results import ResultsWarning, Run, TrialLog, collect_logs  # noqa: E402

DEFAULT_WINDOW = 50
MAX_POINTS = 2000  # curves are thinned to about this many points: invisible at figure size, small files


def _warn(message: str) -> None:
    warnings.warn(message, ResultsWarning, stacklevel=3)


def select_datasets(runs: list[Run], datasets: Iterable[str] | None) -> list[Run]:
    """Keep the runs of the named datasets (all if None); warn about names with no run."""
    if datasets is None:
        return runs
    datasets = list(datasets)
    present = {run.dataset for run in runs}
    for name in datasets:
        if name not in present:
            _warn(f"no run of dataset {name!r} (found: {', '.join(sorted(present))})")
    if not (kept := [run for run in runs if run.dataset in datasets]):
        raise UserError(f"no run of dataset(s) {', '.join(datasets)}")
    return kept


def trial_mean_std(curves: list[pd.Series]) -> pd.DataFrame:
    """Align trials on their index; mean and sample std (0 where one trial) of the trials present at each step."""
    wide = pd.concat(curves, axis=1, keys=range(len(curves))).sort_index()
    return pd.DataFrame({"mean": wide.mean(axis=1), "std": wide.std(axis=1, ddof=1).fillna(0.0)})


def smooth(series: pd.Series, window: int) -> pd.Series:
    """Exponential moving average of span `window` (bias-corrected, so no step where a window would fill)."""
    return series.ewm(span=window).mean()


def plot_loss_curves(runs: list[Run], window: int = DEFAULT_WINDOW, lr: bool = False):
    """Smoothed loss vs iteration, a panel per dataset, mean ± std over trials per experiment; None if no log.

    With lr, the first trial's learning rate of each experiment is drawn dashed on a twin y axis.
    """
    groups = collect_logs(runs, "loss")
    if not groups:
        return _warn("no readable loss log; loss curves not drawn")
    lr_groups = collect_logs(runs, "lr") if lr else {}
    ylabel = f"training loss (exponential moving avg., span {window})"
    fig, panels = _panels(_datasets(groups), "iteration", ylabel)
    colors = _colors(groups)
    twins = {}
    for key, logs in groups.items():
        curves = [smooth(log.data.set_index("iteration")["loss"], window) for log in logs]
        ax = panels[logs[0].run.dataset]
        _draw_band(ax, trial_mean_std(curves), colors[key], _label(logs))
        if lr_groups.get(key):
            twins[ax] = twins.get(ax) or _lr_axis(ax)
            first = _thin(lr_groups[key][0].data.set_index("iteration")["lr"])
            twins[ax].plot(first.index, first, color=colors[key], ls="--", lw=0.8, alpha=0.8)
    _finish(panels)
    return fig


def _lr_axis(ax):
    twin = ax.twinx()
    twin.set_ylabel("learning rate (dashed: first trial)")
    ax.set_zorder(twin.get_zorder() + 1)  # keep the loss lines and their legend above the LR lines
    ax.patch.set_visible(False)
    return twin


def plot_test_accuracy(acc_logs: dict[str, list[TrialLog]]):
    """Test accuracy vs epoch, a panel per dataset, mean ± std over trials per experiment; None if no log."""
    if not acc_logs:
        return _warn("no readable acc log; test accuracy not drawn")
    fig, panels = _panels(_datasets(acc_logs), "epoch", "test accuracy (%)")
    colors = _colors(acc_logs)
    for key, logs in acc_logs.items():
        curves = [log.data.set_index("epoch")["test_acc"] for log in logs]
        _draw_band(panels[logs[0].run.dataset], trial_mean_std(curves), colors[key], _label(logs))
    for panel in panels.values():
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    _finish(panels)
    return fig


def plot_accuracy_vs_memory(table: pd.DataFrame):
    """Mean best test accuracy (error bar: std over trials) against weight KiB, a point per row named in the legend."""
    rows = table.dropna(subset=["weight_kib"])
    if rows.empty:
        return _warn("no eff_<exp>_t<k>.csv log with weight_kib; accuracy vs memory not drawn")
    fig, panels = _panels(sorted(rows.dataset.unique()), "weight memory (KiB, log scale)",
                          "best test accuracy (%), mean ± std over trials")
    for i, row in enumerate(rows.itertuples()):
        # Rows of one bit width share an x: colour and marker tell them apart, the legend names them.
        label = _row_label(row.precision, row.scheduler, row.setting, row.n_trials)
        yerr = None if pd.isna(row.test_acc_std) else row.test_acc_std
        panels[row.dataset].errorbar(row.weight_kib, row.test_acc_mean, yerr=yerr, fmt="osD^v"[i // 10 % 5],
                                     capsize=3, color=f"C{i % 10}", label=label)
    for dataset, ax in panels.items():
        ticks = sorted(rows.weight_kib[rows.dataset == dataset].unique())
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{kib:g}" for kib in ticks], minor=False)
        ax.set_xticks([], minor=True)
        ax.legend(fontsize="small")
    return fig


def make_figures(runs: list[Run], window: int = DEFAULT_WINDOW, lr: bool = False, memory: bool = False) -> dict:
    """The figures by file stem (loss_curves, test_accuracy, with memory accuracy_vs_memory), those with data."""
    acc_logs = collect_logs(runs, "acc")
    figures = {"loss_curves": plot_loss_curves(runs, window, lr), "test_accuracy": plot_test_accuracy(acc_logs)}
    if memory and acc_logs:
        figures["accuracy_vs_memory"] = plot_accuracy_vs_memory(results.accuracy_table(runs, acc_logs))
    if not (figures := {name: fig for name, fig in figures.items() if fig is not None}):
        raise UserError("no readable loss or acc log in any experiment folder; nothing to plot")
    return figures


def save_figure(fig, out_dir: str | Path, stem: str) -> list[Path]:
    """Save fig atomically as <out_dir>/<stem>.png and .pdf, creating out_dir; UserError if impossible."""
    from qsnn.runlog import atomic_path  # imports torch: only when writing

    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            with atomic_path(path) as tmp:
                fig.savefig(tmp, dpi=120)
    except OSError as exc:
        raise UserError(f"cannot write figures to {out_dir}: {results.os_reason(exc)}") from None
    return paths


def _datasets(groups: dict[str, list[TrialLog]]) -> list[str]:
    return sorted({logs[0].run.dataset for logs in groups.values()})


def _panels(datasets: list[str], xlabel: str, ylabel: str):
    # pyplot is imported here so the table CLI never loads it and the plot CLI can pick a backend first.
    import matplotlib.pyplot as plt

    ncols = min(len(datasets), 3)
    nrows = math.ceil(len(datasets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(datasets):]:
        fig.delaxes(ax)
    for ax, dataset in zip(axes.flat, datasets):
        ax.set(title=dataset, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    return fig, dict(zip(datasets, axes.flat))


def _colors(groups: dict[str, list[TrialLog]]) -> dict[str, str]:
    # One colour per (precision, scheduler, setting) across panels, so an experiment reads the same everywhere.
    styles = {key: (logs[0].run.precision, logs[0].run.scheduler, logs[0].run.setting) for key, logs in groups.items()}
    order = list(dict.fromkeys(styles.values()))
    return {key: f"C{order.index(style) % 10}" for key, style in styles.items()}


def _label(logs: list[TrialLog]) -> str:
    return _row_label(logs[0].run.precision, logs[0].run.scheduler, logs[0].run.setting, len(logs))


def _row_label(precision: str, scheduler: str, setting: str, n_trials: int) -> str:
    return f"{precision} {scheduler}{f' ({setting})' if setting else ''} (n={n_trials})"


def _thin(data):
    return data.iloc[:: max(1, math.ceil(len(data) / MAX_POINTS))]


def _draw_band(ax, stats: pd.DataFrame, color: str, label: str) -> None:
    stats = _thin(stats)
    ax.plot(stats.index, stats["mean"], color=color, lw=1.2, label=label)
    ax.fill_between(stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"],
                    color=color, alpha=0.2, lw=0)


def _finish(panels: dict) -> None:
    for ax in panels.values():
        ax.legend(fontsize="small")


# ---------------------------------------------------------------- command line


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = results.ArgumentParser(prog="plot_results.py", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", type=Path, default=REPO_ROOT, metavar="ROOT",
                        help="folder searched recursively for run folders (default: the repository, %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("figures"),
                        help="folder for the PNG and PDF files, created if needed (default: ./figures)")
    parser.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW,
                        help="span of the loss's exponential moving average, in iterations (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="plot only these datasets, e.g. mnist fashion_mnist (default: all)")
    parser.add_argument("--lr", action="store_true",
                        help="draw each experiment's learning rate (first trial) on a second y axis of the loss plot")
    parser.add_argument("--memory", action="store_true",
                        help="also draw best test accuracy against weight memory (KiB, from eff_<exp>_t<k>.csv)")
    parser.add_argument("--include-tuning", action="store_true", help="also plot tune.py's trial folders")
    parser.add_argument("--show", action="store_true", help="also open the figures in a window")
    return parser.parse_args(argv)


def make_and_save(args: argparse.Namespace) -> list[Path]:
    """Draw the figures for args, save them, show them if asked; return the written files."""
    import matplotlib.pyplot as plt

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a folder for the figures")
    runs = select_datasets(results.find_runs(args.root, args.include_tuning), args.datasets)
    figures = make_figures(runs, window=args.window, lr=args.lr, memory=args.memory)
    paths = [path for stem, fig in figures.items() for path in save_figure(fig, args.out, stem)]
    if args.show:
        plt.show()
    for fig in figures.values():
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    """Write the figures; 0 on success, UserError's exit code otherwise."""
    try:
        args = parse_args(argv)
        if not args.show:
            matplotlib.use("Agg")
        with results.warnings_to_stderr():
            paths = make_and_save(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    for path in paths:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
