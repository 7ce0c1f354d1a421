"""Regenerate the README's Results table and figures from the runs in results/ (never edit them by hand).

    python results/update_readme.py

Runs extract_test_set_accuracy.py and plot_results.py on results/ and puts the table that the first
prints between the README's `<!-- results-table -->` markers; figures go to results/figures/ (PNG).
"""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- results-table:start -->", "<!-- results-table:end -->"


def run(*args):
    """A root script's standard output (its warnings pass through to the terminal)."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(args)} failed (exit {result.returncode})")
    return result.stdout


def main():
    table = run("extract_test_set_accuracy.py", "results", "--out", "results/test_set_accuracy.csv")
    table = "\n".join(line for line in table.splitlines() if line.startswith("|"))
    run("plot_results.py", "results", "--out", "results/figures", "--lr", "--window", "100")
    for pdf in (ROOT / "results" / "figures").glob("*.pdf"):
        pdf.unlink()  # the repository keeps the small PNGs only
    readme = (ROOT / "README.md").read_text()
    if START not in readme or END not in readme:
        sys.exit(f"error: README.md has no {START} ... {END} markers")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    (ROOT / "README.md").write_text(f"{head}{START}\n{table}\n{END}{tail}")
    print(f"README.md: results table with {table.count(chr(10)) - 1} rows; figures in results/figures/")


if __name__ == "__main__":
    main()
