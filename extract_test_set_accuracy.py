"""Summarise the test accuracy of every QSNN run under a folder as a CSV file and a markdown table.

Runs are grouped by (dataset, precision, scheduler); experiment folders sharing a group pool their
trials. Per group: trial count, epochs logged, each trial's best test accuracy (max over epochs, as
in the paper) with max, mean and sample std (ddof=1, 0.0 for one trial) over trials, and, where the
acc CSV has val_acc, the test accuracy at the best-validation epoch with its mean and std.
"""

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))

from qsnn import results  # noqa: E402
from qsnn.errors import UserError  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__,
        epilog=results.TABLE_COLUMNS_DOC,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", nargs="?", type=Path, default=REPO_ROOT,
                        help="folder searched recursively for run folders (default: the repository root, %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("test_set_accuracy.csv"),
                        help="CSV file to write (default: ./test_set_accuracy.csv)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Write the accuracy CSV and print it as markdown; 0 on success, UserError's exit code otherwise."""
    args = parse_args(argv)
    try:
        with results.warnings_to_stderr():
            table = results.accuracy_table(results.find_runs(args.root))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(results.to_markdown(table))
    print(f"wrote {results.write_table(table, args.out)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
