"""Regenerate the results sections of README.md and docs/*.md, and the figures, from results/ (never by hand).

    python results/update_readme.py

Each generated section sits between a pair of markers, `<!-- NAME:start -->` and `<!-- NAME:end -->`, in
exactly one of README.md and docs/*.md; the script finds each pair by reading those files, so a section can
move between pages without touching this script. The sections (SECTIONS below):

- `results-table`: the table that extract_test_set_accuracy.py prints for results/;
- `schedule-verdict`: the schedule study's comparison (finished trials only);
- `paper-epochs`: every epoch of the paper runs in results/paper/;
- `minima`: the minima study's answer (results/minima_report.py).

A marker pair found in no file or in two files, or a start without its end, is an error, reported before
anything runs. plot_results.py draws the figures into results/figures/.
"""
import csv
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from qsnn.analysis import results  # noqa: E402  (the readers behind extract_test_set_accuracy.py)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from minima_report import minima_section  # noqa: E402  (the navigating-minima study, results/minima/)

SECTIONS = ("results-table", "schedule-verdict", "paper-epochs", "minima")  # the marker names, in fill order
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


class MarkerError(Exception):
    """A generated section's markers are missing, duplicated or unpaired."""


def markers(name):
    """The start and end marker of a generated section."""
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def documents(root=ROOT):
    """The files that may hold generated sections: README.md and docs/*.md."""
    root = Path(root)
    return [path for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if path.is_file()]


def locate(names=SECTIONS, root=ROOT):
    """{section name: the one file holding its marker pair}; MarkerError unless each pair is in exactly one."""
    root = Path(root)
    texts = {path: path.read_text() for path in documents(root)}
    found, problems = {}, []
    for name in names:
        start, end = markers(name)
        holders = []
        for path, text in texts.items():
            starts, ends = text.count(start), text.count(end)
            if starts == ends == 0:
                continue
            shown = path.relative_to(root).as_posix()
            if starts != 1 or ends != 1 or text.index(start) > text.index(end):
                problems.append(f"{shown} has {starts} {start} and {ends} {end} markers (one of each, in that "
                                "order, is needed)")
            holders.append(path)
        if not holders:
            problems.append(f"no file has the {start} ... {end} markers (looked in README.md and docs/*.md)")
        elif len(holders) > 1:
            shown = " and ".join(path.relative_to(root).as_posix() for path in holders)
            problems.append(f"the {start} ... {end} markers are in {shown}; keep them in one file")
        else:
            found[name] = holders[0]
    if problems:
        raise MarkerError("; ".join(problems))
    return found


def replace_between(text, pair, content):
    """text with content put between the two markers."""
    start, end = pair
    if start not in text or end not in text:
        raise MarkerError(f"no {start} ... {end} markers")
    head, rest = text.split(start, 1)
    return f"{head}{start}\n{content}\n{end}{rest.split(end, 1)[1]}"


def fill(contents, root=ROOT):
    """Put each section's content ({name: markdown}) between its markers in its file; the files changed."""
    places = locate(list(contents), root)
    changed = []
    for path in dict.fromkeys(places.values()):
        text = original = path.read_text()
        for name, holder in places.items():
            if holder == path:
                text = replace_between(text, markers(name), contents[name])
        if text != original:
            path.write_text(text)
            changed.append(path)
    return changed


def main():
    try:
        places = locate()  # before the minute of work below, so a moved marker fails at once
    except MarkerError as error:
        sys.exit(f"error: {error}")
    table = run("extract_test_set_accuracy.py", "results", "--out", "results/test_set_accuracy.csv")
    table = "\n".join(line for line in table.splitlines() if line.startswith("|"))
    run("plot_results.py", "results", "--out", "results/figures", "--per-folder", "--skip-unfinished", "--lr",
        "--memory", "--panels", "precision", "--skip-iterations", "50", "--window", "100")
    for pdf in (ROOT / "results" / "figures").glob("*.pdf"):
        pdf.unlink()  # the repository keeps the small PNGs only
    contents = {"results-table": table, "schedule-verdict": schedule_verdict(), "paper-epochs": paper_epochs(),
                "minima": minima_section()}
    try:
        changed = fill(contents)
    except MarkerError as error:
        sys.exit(f"error: {error}")
    where = ", ".join(f"{name} in {path.relative_to(ROOT).as_posix()}" for name, path in places.items())
    print(f"{where}; results table with {table.count(chr(10)) - 1} rows; "
          f"{len(changed)} file(s) changed; figures in results/figures/")


if __name__ == "__main__":
    main()
