"""Plot training loss, test accuracy and (with --memory) accuracy against weight memory of QSNN runs.

One panel per dataset (--panels: per dataset and precision, or per dataset and number of time steps),
one curve per experiment (a config without run-time keys; see extract_test_set_accuracy.py): the mean
over its trials, with a shaded band of +-1 sample std (--band minmax: the trials' range). Trials of one
experiment pool, whether they share a folder or sit in folders that differ only in seed (_s0, _s1).

Colour is the learning-rate schedule and line style (and marker) the weight precision, from fixed
tables, so an experiment looks the same in every figure. Labels use the study's own words where the
folder name says them (fashion_mnist_T10_4bit_periodic, ..._fp32_monotone_s1: "4-bit periodic"),
else the config's scheduler and its settings in epochs ("4-bit cosine, period 2 epochs").

The logged loss grows with the number of time steps T, so each run's loss is divided by its T
(num_steps_train, else num_steps, from config.json) to put runs of different T on one scale; the first
--skip-iterations are dropped, then each trial is smoothed by an exponential moving average and drawn
against the iteration; a linear loss axis is scaled to the curves after their first 5% of iterations,
so the steep start leaves the top rather than flattening the rest (--logy: a log axis shows it all).
--lr adds a row with each schedule's learning rate on an axis from 0.

Writes <prefix>loss_curves, <prefix>test_accuracy and <prefix>accuracy_vs_memory as .png and .pdf;
--per-folder writes one such set per subfolder of ROOT (results/paper -> paper_loss_curves.png, ...).

Relative paths (ROOT, --out) are taken from the current directory; ROOT defaults to the repository.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402

from qsnn.analysis import results  # noqa: E402
from qsnn.analysis.curve_figures import (BANDS, DEFAULT_WINDOW, PANEL_CHOICES, Options,  # noqa: E402
                                         band_limits, loss_ylabel, plot_loss_curves, smooth, trial_stats)
from qsnn.analysis.figure_layout import DEFAULT_DPI, save_figure, warn  # noqa: E402
from qsnn.analysis.figure_styles import (SCHEDULE_COLORS, SPARE_COLORS, Style, assign_styles,  # noqa: E402
                                         experiment_styles, extra_text, precision_text, schedule_text, time_steps)
from qsnn.analysis.figures import drop_unfinished, figure_sets, make_figures, select_datasets  # noqa: E402
from qsnn.analysis.results import ResultsWarning, Run  # noqa: E402
from qsnn.errors import UserError  # noqa: E402

# The figure library's names stay importable from this script, as before they moved to qsnn/analysis/*figure*.py
# (tests call plot_results.make_figures, plot_results.experiment_styles, ...).
__all__ = ["DEFAULT_DPI", "Options", "SCHEDULE_COLORS", "SPARE_COLORS", "Style", "assign_styles", "band_limits",
           "experiment_styles", "extra_text", "loss_ylabel", "main", "make_figures", "plot_loss_curves",
           "precision_text", "save_figure", "schedule_text", "select_datasets", "smooth", "time_steps", "trial_stats"]


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: a whole number of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    """The plot_results.py command line; its --help is this file's docstring and the options."""
    parser = results.ArgumentParser(prog="plot_results.py", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", type=Path, default=REPO_ROOT, metavar="ROOT",
                        help="folder searched recursively for run folders (default: the repository, %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("figures"),
                        help="folder for the PNG and PDF files, created if needed (default: ./figures)")
    parser.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW, metavar="N",
                        help="span of the loss's exponential moving average (a running mean), in iterations; "
                             "1: not smoothed (default: %(default)s)")
    parser.add_argument("--skip-iterations", type=non_negative_int, default=0, metavar="N",
                        help="leave the first N iterations out of the loss curves (default: %(default)s)")
    parser.add_argument("--logy", action="store_true", help="draw the loss on a logarithmic axis")
    parser.add_argument("--band", choices=tuple(BANDS), default="std",
                        help="shaded band around the mean of the trials: ±1 sample std or their min-max "
                             "(default: %(default)s)")
    parser.add_argument("--panels", choices=PANEL_CHOICES, default="dataset",
                        help="a panel per dataset, or per dataset and precision, or per dataset and number of "
                             "time steps T (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="plot only these datasets, e.g. mnist fashion_mnist (default: all)")
    parser.add_argument("--lr", action="store_true",
                        help="add a row under the loss panels with each schedule's learning rate (first trial)")
    parser.add_argument("--memory", action="store_true",
                        help="also draw best test accuracy against weight memory (KiB, from eff_<exp>_t<k>.csv)")
    parser.add_argument("--per-folder", action="store_true",
                        help="one set of figures per subfolder of ROOT, named after it (results/paper -> "
                             "paper_loss_curves.png)")
    parser.add_argument("--prefix", default="", help="put this in front of every file name, e.g. study_")
    parser.add_argument("--skip-unfinished", action="store_true",
                        help="leave out trials whose status.json does not say finished (e.g. still running)")
    parser.add_argument("--dpi", type=positive_int, default=DEFAULT_DPI,
                        help="resolution of the PNG files (default: %(default)s)")
    parser.add_argument("--include-tuning", action="store_true", help="also plot tune.py's trial folders")
    parser.add_argument("--show", action="store_true", help="also open the figures in a window")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    """The drawing options of the command line."""
    return Options(window=args.window, skip=args.skip_iterations, logy=args.logy, band=args.band, panels=args.panels)


def find_plot_runs(args: argparse.Namespace) -> list[Run]:
    """The runs to plot: found under ROOT, of the chosen datasets, without unfinished trials if asked."""
    with warnings.catch_warnings():
        if args.skip_unfinished:  # those trials are left out below, with a warning that says so
            warnings.filterwarnings("ignore", r".*; its data so far is included$", ResultsWarning)
        runs = results.find_runs(args.root, args.include_tuning)
    runs = select_datasets(runs, args.datasets)
    if args.skip_unfinished and not (runs := drop_unfinished(runs)):
        raise UserError(f"no finished trial under {args.root}; nothing to plot")
    return runs


def make_and_save(args: argparse.Namespace) -> list[Path]:
    """Draw the figures for args, save them, show them if asked; return the written files."""
    import matplotlib.pyplot as plt

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a folder for the figures")
    sets = figure_sets(find_plot_runs(args), args.root, args.per_folder, args.prefix)
    paths, figures = [], []
    for prefix, runs in sets:
        try:
            drawn = make_figures(runs, lr=args.lr, memory=args.memory, options=options_from(args))
        except UserError as exc:
            if len(sets) == 1:
                raise
            warn(f"no figures for {prefix.rstrip('_') or 'the runs directly in ROOT'}: {exc}")
            continue
        paths += [path for stem, fig in drawn.items() for path in save_figure(fig, args.out, prefix + stem, args.dpi)]
        figures += drawn.values()
    if not figures:
        raise UserError("no readable loss or acc log in any experiment folder; nothing to plot")
    if args.show:
        plt.show()
    for fig in figures:
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
