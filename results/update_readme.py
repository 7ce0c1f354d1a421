"""Regenerate the README's Results table, schedule comparison and figures from results/ (never by hand).

    python results/update_readme.py

Runs extract_test_set_accuracy.py and plot_results.py on results/ and puts the table that the first
prints between the README's `<!-- results-table -->` markers, and the schedule study's comparison
(finished trials only), the paper runs' epochs and the minima study's answer (results/minima_report.py)
between their own markers; figures go to results/figures/.
"""
import csv
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from qsnn import results  # noqa: E402  (the readers behind extract_test_set_accuracy.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minima_report import minima_section  # noqa: E402  (the navigating-minima study, results/minima/)

START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"
VERDICT = ("<!-- schedule-verdict:start -->", "<!-- schedule-verdict:end -->")
PAPER = ("<!-- paper-epochs:start -->", "<!-- paper-epochs:end -->")
MINIMA = ("<!-- minima:start -->", "<!-- minima:end -->")
SCHEDULES = ("periodic", "monotone", "constant")  # the suffixes of reproduce.sh's study folders
SEEDS = 3


def run(*args):
    """A root script's standard output (its warnings pass through to the terminal)."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(args)} failed (exit {result.returncode})")
    return result.stdout


def paper_epochs(root=ROOT):
    """Markdown: test accuracy and training seconds of every epoch of the runs in results/paper/."""
    lines = ["| run | epoch | test accuracy (%) | training time (s) |", "|---|---:|---:|---:|"]
    for acc in sorted((Path(root) / "results" / "paper").glob("*/acc_*_t0.csv")):
        with open(acc, newline="") as f:
            for row in csv.DictReader(f):
                lines.append(f"| {acc.parent.name} | {row['epoch']} | {float(row['test_acc']):.2f} | "
                             f"{float(row['train_time']):.0f} |")
    return "\n".join(lines)


def finished_best_accuracies(run_dir):
    """Best test accuracy of each trial of a run folder that finished (running trials are left out)."""
    finished = [k for k, status in sorted(results.read_status(run_dir).items()) if status.get("state") == "finished"]
    logs = [results.read_log(next(run_dir.glob(f"acc_*_t{k}.csv")), "acc") for k in finished]
    return [float(log["test_acc"].max()) for log in logs if log is not None]


def schedule_verdict(root=ROOT):
    """Markdown: mean ± std of each (precision, schedule) cell and whether periodic wins beyond the spread."""
    cells = {}
    for run_dir in sorted((Path(root) / "results" / "schedules").glob("*_T*_*")):
        if (run_dir / "status.json").exists():
            _, precision, schedule = run_dir.name.rsplit("_", 2)
            cells[precision, schedule] = finished_best_accuracies(run_dir)
    lines = ["| weights | " + " | ".join(SCHEDULES) + " | periodic beats both by more than the seed spread? |",
             "|---|" + "---|" * (len(SCHEDULES) + 1)]
    for precision in ("fp32", "4bit", "2bit"):
        row = [cell_text(cells.get((precision, s), [])) for s in SCHEDULES]
        lines.append(f"| {precision} | " + " | ".join(row) + f" | {verdict(cells, precision)} |")
    return "\n".join(lines)


def cell_text(values):
    """'mean ± std (n)' of a cell's finished trials."""
    if not values:
        return "not run yet"
    spread = f"{statistics.stdev(values):.2f}" if len(values) > 1 else "n/a"
    return f"{statistics.mean(values):.2f} ± {spread} ({len(values)} of {SEEDS})"


def verdict(cells, precision):
    """Yes/no once every schedule has all its seeds: periodic's mean above each other's by more than both stds."""
    values = {s: cells.get((precision, s), []) for s in SCHEDULES}
    if any(len(v) < SEEDS for v in values.values()):
        return "pending (not every seed finished)"
    periodic = values["periodic"]
    margins = {s: statistics.mean(periodic) - statistics.mean(v) for s, v in values.items() if s != "periodic"}
    spread = max(statistics.stdev(v) for v in values.values())
    gaps = ", ".join(f"{m:+.2f} vs {s}" for s, m in margins.items())
    return ("yes" if min(margins.values()) > spread else "no") + f" ({gaps}; largest std {spread:.2f})"


def replace_between(text, markers, content):
    """text with content put between the two markers."""
    start, end = markers
    if start not in text or end not in text:
        sys.exit(f"error: README.md has no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{content}\n{end}{rest.split(end, 1)[1]}"


def main():
    table = run("extract_test_set_accuracy.py", "results", "--out", "results/test_set_accuracy.csv")
    table = "\n".join(line for line in table.splitlines() if line.startswith("|"))
    run("plot_results.py", "results", "--out", "results/figures", "--per-folder", "--skip-unfinished", "--lr",
        "--memory", "--panels", "precision", "--skip-iterations", "50", "--window", "100")
    for pdf in (ROOT / "results" / "figures").glob("*.pdf"):
        pdf.unlink()  # the repository keeps the small PNGs only
    readme = replace_between((ROOT / "README.md").read_text(), (START, END), table)
    readme = replace_between(readme, VERDICT, schedule_verdict())
    readme = replace_between(readme, PAPER, paper_epochs())
    readme = replace_between(readme, MINIMA, minima_section())
    (ROOT / "README.md").write_text(readme)
    print(f"README.md: results table with {table.count(chr(10)) - 1} rows; figures in results/figures/")


if __name__ == "__main__":
    main()
