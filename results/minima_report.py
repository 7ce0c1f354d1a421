"""The navigating-minima study's answer, from results/minima/ (run folders and their landscape/ outputs).

    python results/minima_report.py            # print the markdown that update_readme.py puts in the README

Cells are folders named <dataset>_T<steps>_<fp32|Nbit>_<periodic|monotone|constant>_s<seed> (reproduce.sh's
part minima, results/sweeps/minima.json). Only finished trials count. The landscape numbers come from
`landscape.py interpolate` (interpolation_summary.csv, any folder under landscape/) and `landscape.py distances`.
"""
import csv
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from qsnn.analysis import results  # noqa: E402

CELL = re.compile(r"^(?P<dataset>.+)_T(?P<steps>\d+)_(?P<precision>fp32|\d+bit)_"
                  r"(?P<schedule>periodic|monotone|constant)_s(?P<seed>\d+)$")
SCHEDULES = ("periodic", "monotone", "constant")
TROUGHS = (2, 6, 10, 14, 18)  # the periodic schedule's LR troughs (epochs); the others are compared there
SEEDS = 3


def finished_cells(root):
    """{(precision, schedule): [run folder, ...]} of the cells whose trial 0 finished."""
    cells = {}
    for run_dir in sorted((Path(root) / "results" / "minima").glob("*_s*")):
        match = CELL.match(run_dir.name)
        if match and results.read_status(run_dir).get(0, {}).get("state") == "finished":
            cells.setdefault((match["precision"], match["schedule"]), []).append(run_dir)
    return cells


def test_accuracies(run_dir):
    """(best, final) test accuracy of trial 0."""
    log = results.read_log(next(run_dir.glob("acc_*_t0.csv")), "acc")
    return float(log["test_acc"].max()), float(log["test_acc"].iloc[-1])


def mean_std(values, digits=2):
    """'mean ± std' ('± n/a' for one value)."""
    if not values:
        return "–"
    spread = f"{statistics.stdev(values):.{digits}f}" if len(values) > 1 else "n/a"
    return f"{statistics.mean(values):.{digits}f} ± {spread}"


def read_rows(path):
    """The rows of a CSV the landscape tool wrote, as dicts of strings ([] when absent)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def interpolation_rows(run_dir):
    """Every interpolation_summary.csv row under the run's landscape/ folder."""
    return [row for path in sorted((run_dir / "landscape").rglob("interpolation_summary.csv"))
            for row in read_rows(path)]


def pair_value(rows, epoch_a, epoch_b, column, kind=None):
    """A column of the row interpolating epoch_a -> epoch_b of one run (None if not measured)."""
    for row in rows:
        same_run = kind is None or row["kind"] == kind
        if same_run and float(row["epoch_a"]) == epoch_a and float(row["epoch_b"]) == epoch_b and row[column]:
            return float(row[column])
    return None


def over_seeds(run_dirs, fetch):
    """The values fetch(run_dir) gives for each seed, without the missing ones."""
    return [v for v in (fetch(d) for d in run_dirs) if v is not None]


def accuracy_table(cells):
    """Markdown: best and final test accuracy per precision and schedule."""
    lines = ["| weights | schedule | seeds finished | best test accuracy (%) | final test accuracy (%) |",
             "|---|---|---:|---:|---:|"]
    for precision in ("fp32", "4bit", "2bit"):
        for schedule in SCHEDULES:
            dirs = cells.get((precision, schedule), [])
            if not dirs and precision == "2bit":
                continue
            best, final = zip(*map(test_accuracies, dirs)) if dirs else ((), ())
            lines.append(f"| {precision} | {schedule} | {len(dirs)} of {SEEDS} | {mean_std(list(best))} | "
                         f"{mean_std(list(final))} |")
    return "\n".join(lines)


def landscape_table(cells):
    """Markdown: barrier, code flips and the loss at each trough, between the periodic schedule's troughs."""
    spans = list(zip(TROUGHS, TROUGHS[1:]))
    head = " | ".join(f"e{a}→e{b}" for a, b in spans)
    lines = [f"| weights | schedule | seeds | quantity | {head} |", "|---|---|---:|---|" + "---:|" * len(spans)]
    for (precision, schedule), dirs in sorted(cells.items(), key=lambda c: (c[0][0], SCHEDULES.index(c[0][1]))):
        rows = {d: interpolation_rows(d) for d in dirs}
        measured = [d for d in dirs if rows[d]]
        if not measured:
            continue
        for label, column, digits in (("barrier (loss / T)", "barrier", 5), ("codes changed (%)", "code_flips", 1),
                                      ("loss at the later end", "loss_b", 5)):
            scale = 100 if column == "code_flips" else 1
            values = [mean_std([scale * v for v in over_seeds(
                measured, lambda d: pair_value(rows[d], a, b, column))], digits) for a, b in spans]
            lines.append(f"| {precision} | {schedule} | {len(measured)} | {label} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def seed_reference(cells):
    """Markdown line: the barrier between two seeds' final models, where measured (kind 'seeds')."""
    found = []
    for (precision, schedule), dirs in sorted(cells.items()):
        for d in dirs:
            for row in interpolation_rows(d):
                if row["kind"] == "seeds":
                    flips = row.get("code_flips")
                    codes = f", codes changed {100 * float(flips):.1f}%" if flips not in (None, "") else ""
                    found.append(f"{precision} {schedule}, {row['run_a']} (epoch {row['epoch_a']}) against "
                                 f"{row['run_b']} (epoch {row['epoch_b']}): barrier {float(row['barrier']):.5f}{codes}")
    if not found:
        return "Two-seed reference (final models of two seeds): not measured yet (needs a second finished seed)."
    return "Two-seed reference (final models of two seeds): " + "; ".join(found) + "."


def trough_losses_fall(cells, precision):
    """'yes'/'no'/'not measured': does each periodic trough reach a lower training loss than the one before?"""
    dirs = cells.get((precision, "periodic"), [])
    answers = []
    for d in dirs:
        rows = interpolation_rows(d)
        losses = [pair_value(rows, a, b, "loss_b") for a, b in zip(TROUGHS, TROUGHS[1:])]
        first = pair_value(rows, TROUGHS[0], TROUGHS[1], "loss_a")
        if first is None or None in losses:
            continue
        sequence = [first, *losses]
        answers.append(all(later < earlier for earlier, later in zip(sequence, sequence[1:])))
    if not answers:
        return "not measured"
    return f"{sum(answers)} of {len(answers)} seed(s) yes"


def minima_section(root=ROOT):
    """The README's generated part of the study: accuracies, landscape numbers, and the rule-based answers."""
    cells = finished_cells(root)
    if not cells:
        return "No cell of the minima study has finished yet."
    lines = [accuracy_table(cells), "",
             "Between the periodic schedule's LR troughs (epochs 2, 6, 10, 14, 18; the monotone and constant "
             "runs at the same epochs): the interpolation barrier, the fraction of 4-bit weight codes that "
             "changed, and the training loss (per time step, BatchNorm recomputed, 2,000 fixed training images) "
             "at the later snapshot; mean ± std over the seeds measured.", "",
             landscape_table(cells), "", seed_reference(cells), ""]
    for precision in ("4bit", "fp32"):
        if (precision, "periodic") in cells:
            lines.append(f"- {precision}: does every periodic trough reach a lower training loss than the one "
                         f"before? {trough_losses_fall(cells, precision)}.")
    return "\n".join(lines).rstrip()


if __name__ == "__main__":
    print(minima_section())
