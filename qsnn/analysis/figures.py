"""plot_results.py's figures of run folders: which runs make each set of figures, and the set itself by file stem
(loss_curves, test_accuracy, accuracy_vs_memory)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Iterable

import matplotlib

from qsnn.analysis import results
from qsnn.analysis.curve_figures import DEFAULT_WINDOW, Options, plot_loss_curves, plot_test_accuracy
from qsnn.analysis.figure_layout import STYLE, warn
from qsnn.analysis.figure_styles import experiment_styles
from qsnn.analysis.memory_figure import plot_accuracy_vs_memory
from qsnn.analysis.results import Run, collect_logs
from qsnn.errors import UserError


def select_datasets(runs: list[Run], datasets: Iterable[str] | None) -> list[Run]:
    """Keep the runs of the named datasets (all if None); warn about names with no run."""
    if datasets is None:
        return runs
    datasets = list(datasets)
    present = {run.dataset for run in runs}
    for name in datasets:
        if name not in present:
            warn(f"no run of dataset {name!r} (found: {', '.join(sorted(present))})")
    if not (kept := [run for run in runs if run.dataset in datasets]):
        raise UserError(f"no run of dataset(s) {', '.join(datasets)}")
    return kept


def drop_unfinished(runs: list[Run]) -> list[Run]:
    """The runs with only their trials whose status.json says finished (no entry: kept); warn for the rest."""
    kept = []
    for run in runs:
        status = results.read_status(run.folder)
        trials = []
        for trial in run.trials:
            state = status.get(trial, {}).get("state", "finished")
            if state == "finished":
                trials.append(trial)
            else:
                warn(f"{run.folder}: trial t{trial} is {state}; left out (--skip-unfinished)")
        if trials:
            kept.append(replace(run, trials=tuple(trials)))
    return kept


def figure_sets(runs: list[Run], root: Path, per_folder: bool, prefix: str = "") -> list[tuple[str, list[Run]]]:
    """(file prefix, runs) per figure set: one set, or with per_folder one per subfolder of root."""
    if not per_folder:
        return [(prefix, runs)]
    sets = defaultdict(list)
    for run in runs:
        parts = run.folder.relative_to(root).parts
        sets[parts[0] if len(parts) > 1 else ""].append(run)
    # Settings tell experiments apart within a set; other folders' runs must not add to its labels.
    return [(f"{prefix}{name}_" if name else prefix, results.with_settings(sets[name])) for name in sorted(sets)]


def make_figures(runs: list[Run], window: int = DEFAULT_WINDOW, lr: bool = False, memory: bool = False,
                 options: Options = None) -> dict:
    """The figures by file stem (loss_curves, test_accuracy, with memory accuracy_vs_memory), those with data."""
    options = options or Options(window=window)
    loss_groups, acc_groups = collect_logs(runs, "loss"), collect_logs(runs, "acc")
    lr_groups = collect_logs(runs, "lr") if lr else {}
    styles = experiment_styles(runs, loss_groups, acc_groups)
    with matplotlib.rc_context(STYLE):
        figures = {"loss_curves": plot_loss_curves(runs, lr=lr, options=options, styles=styles, groups=loss_groups,
                                                   lr_groups=lr_groups),
                   "test_accuracy": plot_test_accuracy(acc_groups, styles, options)}
        if memory and acc_groups:
            table = results.accuracy_table(runs, acc_groups).assign(experiment=list(acc_groups))  # in group order
            figures["accuracy_vs_memory"] = plot_accuracy_vs_memory(table, styles)
    if not (figures := {name: fig for name, fig in figures.items() if fig is not None}):
        raise UserError("no readable loss or acc log in any experiment folder; nothing to plot")
    return figures
