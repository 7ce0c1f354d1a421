"""Plot training loss and test accuracy of every QSNN run under a folder.

One panel per dataset, one line per (precision, scheduler) group: the mean over trials with a
shaded band of +-1 sample std. Loss is smoothed per trial by a rolling mean and drawn against the
iteration; trials of unequal length are averaged over those present at each step. Writes
loss_curves.png/.pdf and test_accuracy.png/.pdf.
"""

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402

from qsnn import results  # noqa: E402
from qsnn.errors import UserError  # noqa: E402


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", type=Path, default=REPO_ROOT,
                        help="folder searched recursively for run folders (default: the repository root, %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("figures"),
                        help="folder for the PNG and PDF files (default: ./figures)")
    parser.add_argument("--window", type=positive_int, default=results.DEFAULT_WINDOW,
                        help="rolling-mean window of the loss, in iterations (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="plot only these datasets, e.g. mnist fashion_mnist (default: all)")
    parser.add_argument("--lr", action="store_true",
                        help="draw each group's learning rate (first trial) on a second y axis of the loss plot")
    parser.add_argument("--show", action="store_true", help="also open the figures in a window")
    return parser.parse_args(argv)


def make_and_save(args: argparse.Namespace) -> list[Path]:
    """Draw the figures for args, save them, show them if asked; return the written files."""
    import matplotlib.pyplot as plt

    runs = results.select_datasets(results.find_runs(args.root), args.datasets)
    figures = results.make_figures(runs, window=args.window, lr=args.lr)
    paths = [path for stem, fig in figures.items() for path in results.save_figure(fig, args.out, stem)]
    if args.show:
        plt.show()
    for fig in figures.values():
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    """Write the figures; 0 on success, UserError's exit code otherwise."""
    args = parse_args(argv)
    if not args.show:
        matplotlib.use("Agg")
    try:
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
