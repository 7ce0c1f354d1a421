"""Summarise the test accuracy of every QSNN run under a folder as a CSV file and a markdown table.

One row per experiment: the identity keys of a run folder's config.json (qsnn/runs/schema.py: what is
computed, world size and BatchNorm synchronisation included; not device, epochs, seed, ...); folders of
the same experiment pool their trials, a trial (experiment, seed + k) found in two folders counts once
with a warning, and a "setting" column names the keys that tell apart rows with the same dataset,
precision and scheduler. tune.py's trial folders are
left out unless --include-tuning. Per row: trials, epochs logged, each trial's best test accuracy
(max over epochs, as in the paper) with max, mean and sample std over trials (n/a for one trial),
the test accuracy at the best-validation epoch where logged, and efficiency figures where
eff_<exp>_t<k>.csv exists.

Relative paths (ROOT, --out) are taken from the current directory; ROOT defaults to the repository.
Damaged or foreign files under ROOT (bad JSON, garbage CSV rows, bytes that are not UTF-8, folder
names that are not UTF-8) are skipped or shown escaped, each with one `warning:` line.
"""

import argparse
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))

from qsnn.analysis import results  # noqa: E402
from qsnn.errors import UserError  # noqa: E402

TABLE_COLUMNS_DOC = """\
Columns of the accuracy table (test_set_accuracy.csv), one row per experiment (the identity keys of
config.json, world_size included; not device, epochs, seed), pooling the distinct trials (seed + k) of
every folder of that experiment; accuracies are percentages:
  dataset, precision, scheduler    the label; precision is config.json's "precision", else
                                   derived from config.num_bits (null -> "fp32", N -> "<N>bit")
  setting                          the config keys that differ between rows sharing the label,
                                   e.g. "num_steps=10, t_max=469" (empty when the label is unique)
  n_trials, trials                 trials with a readable acc CSV, as "<exp>/t<k>" ";"-separated;
                                   the per-trial columns below list values in this order
  epochs_min, epochs_max           fewest / most epochs logged by one trial
  best_test_acc_per_trial          max of test_acc over epochs, per trial (the paper's number)
  test_acc_max, test_acc_mean      max and mean over trials of best_test_acc_per_trial
  test_acc_std                     their sample std (ddof=1); empty for a single trial
  n_val_trials                     trials whose acc CSV has a val_acc column
  val_selected_test_acc_per_trial  test_acc at the first epoch with the highest val_acc
  val_selected_test_acc_mean, val_selected_test_acc_std   as above, over the n_val_trials trials
  rate_conv1 ... weight_kib_fp32   from eff_<exp>_t<k>.csv at each trial's best test-accuracy epoch,
                                   mean over trials (spike rates, SynOps and MACs per sample,
                                   weight memory in KiB); empty without that file
"""


def parse_args(argv=None) -> argparse.Namespace:
    parser = results.ArgumentParser(prog="extract_test_set_accuracy.py", description=__doc__,
                                    epilog=TABLE_COLUMNS_DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", type=Path, default=REPO_ROOT, metavar="ROOT",
                        help="folder searched recursively for run folders (default: the repository, %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("test_set_accuracy.csv"),
                        help="CSV file to write, its folder created if needed (default: ./test_set_accuracy.csv)")
    parser.add_argument("--include-tuning", action="store_true", help="also tabulate tune.py's trial folders")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    """Write the accuracy CSV, then print it as markdown; 0 on success, UserError's exit code otherwise."""
    try:
        args = parse_args(argv)
        with results.warnings_to_stderr():
            table = results.accuracy_table(results.find_runs(args.root, args.include_tuning))
        path = results.write_table(table, args.out)
    except UserError as exc:
        print(f"error: {results.printable(str(exc))}", file=sys.stderr)  # one line, whatever the paths hold
        return exc.exit_code
    print(results.to_markdown(table))
    print(f"wrote {results.printable(str(path))}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
