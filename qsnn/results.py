"""Find QSNN run folders, read their CSV logs robustly, aggregate test accuracy and draw figures.

A run folder is any folder holding a config.json with the keys "dataset" and "config"; its trials
log to {loss,lr,acc}_<exp>_t<k>.csv. Anything unreadable is skipped with a ResultsWarning naming the
file; UserError is raised only when nothing at all is usable.

The columns of the accuracy table (test_set_accuracy.csv) are described in TABLE_COLUMNS_DOC.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pandas as pd

from qsnn.config import precision_name
from qsnn.errors import UserError

# Folders that never hold runs but can be huge (datasets, environments).
SKIP_DIRS = frozenset(
    {".git", "venv", ".venv", "site-packages", "data", "__pycache__", ".pytest_cache", "node_modules"}
)
# Columns a log must have; the first is the step the log is indexed by.
LOG_COLUMNS = {"acc": ("epoch", "test_acc"), "loss": ("iteration", "loss"), "lr": ("iteration", "lr")}
OPTIONAL_COLUMNS = {"acc": ("val_acc",)}
TABLE_COLUMNS = (
    "dataset", "precision", "scheduler", "n_trials", "trials", "epochs_min", "epochs_max",
    "best_test_acc_per_trial", "test_acc_max", "test_acc_mean", "test_acc_std",
    "n_val_trials", "val_selected_test_acc_per_trial",
    "val_selected_test_acc_mean", "val_selected_test_acc_std",
)
DEFAULT_WINDOW = 50
# Curves are thinned to about this many points: invisible at figure size, and keeps PDFs small.
MAX_POINTS = 2000

TABLE_COLUMNS_DOC = """\
Columns of the accuracy table (test_set_accuracy.csv), one row per (dataset, precision, scheduler),
pooling the trials of every experiment folder with that key; accuracies are percentages:
  dataset, precision, scheduler    the group; precision is config.json's "precision", else
                                   derived from config.num_bits (null -> "fp32", N -> "<N>bit")
  n_trials                         trials with a readable acc CSV
  trials                           those trials as "<exp>/t<k>", ";"-separated; the per-trial
                                   columns below list values in this order
  epochs_min, epochs_max           fewest / most epochs logged by one trial
  best_test_acc_per_trial          max of test_acc over epochs, per trial (the paper's number)
  test_acc_max                     max over trials of best_test_acc_per_trial
  test_acc_mean, test_acc_std      mean and sample std (ddof=1; 0.0 for a single trial) over trials
                                   of best_test_acc_per_trial
  n_val_trials                     trials whose acc CSV has a val_acc column
  val_selected_test_acc_per_trial  test_acc at the first epoch with the highest val_acc (empty
                                   entry for a trial without val_acc)
  val_selected_test_acc_mean, val_selected_test_acc_std
                                   mean and sample std (as above) over the n_val_trials trials;
                                   empty when n_val_trials is 0
"""

Group = tuple[str, str, str]


class ResultsWarning(UserWarning):
    """A run file that was skipped or only partly read, or a trial whose data is incomplete."""


@dataclass(frozen=True)
class Run:
    """One experiment folder: where it is, its group key and its trial indices."""

    folder: Path
    name: str
    dataset: str
    precision: str
    scheduler: str
    trials: tuple[int, ...]

    @property
    def group(self) -> Group:
        return (self.dataset, self.precision, self.scheduler)

    def log_path(self, kind: str, trial: int) -> Path:
        return self.folder / f"{kind}_{self.name}_t{trial}.csv"


class TrialLog(NamedTuple):
    """The usable rows of one CSV log of one trial."""

    run: Run
    trial: int
    data: pd.DataFrame

    @property
    def label(self) -> str:
        return f"{self.run.name}/t{self.trial}"


def _warn(message: str) -> None:
    warnings.warn(message, ResultsWarning, stacklevel=3)


def _skip(path: Path, reason: str) -> None:
    _warn(f"skipping {path}: {reason}")


@contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Print each warning raised inside the block as one `warning: ...` line on stderr, repeats included."""
    def show(message, category, *args, **kwargs):
        print(f"warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", ResultsWarning)
        warnings.showwarning = show
        yield


# ---------------------------------------------------------------- finding runs


def find_runs(root: str | Path) -> list[Run]:
    """Return every experiment folder under root in sorted walk order; UserError if there is none."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    runs = [run for folder in _folders_with_config(root) if (run := read_run(folder)) is not None]
    if not runs:
        raise UserError(f"no experiment folders (config.json with 'dataset' and 'config') under {root}")
    return runs


def _folders_with_config(root: Path) -> Iterator[Path]:
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
        if "config.json" in files:
            yield Path(folder)


def read_run(folder: Path) -> Run | None:
    """Describe the experiment in folder, or None if its config.json is not a run's config."""
    path = folder / "config.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        _skip(path, f"not readable JSON ({exc})")
        return None
    if not isinstance(meta, dict) or "dataset" not in meta or not isinstance(meta.get("config"), dict):
        return None
    config = meta["config"]
    name = str(meta.get("exp_name") or folder.name)
    status = _read_status(folder)
    run = Run(
        folder=folder,
        name=name,
        dataset=str(meta["dataset"]),
        precision=precision_label(meta),
        scheduler=str(config.get("scheduler", "unknown")),
        trials=_trial_indices(folder, name, config.get("num_trials"), status),
    )
    _warn_unfinished(run, status)
    return run


def precision_label(meta: dict) -> str:
    """config.json's "precision", else "fp32" for config.num_bits null and "<N>bit" for N."""
    if isinstance(meta.get("precision"), str) and meta["precision"]:
        return meta["precision"]
    return precision_name(meta["config"].get("num_bits"))


def _trial_indices(folder: Path, name: str, num_trials, status: dict[int, dict]) -> tuple[int, ...]:
    # Trials announced by the config or status.json but without files are kept, so that their
    # missing logs are reported rather than silently shrinking the trial count.
    pattern = re.compile(rf"(?:acc|loss|lr)_{re.escape(name)}_t(\d+)\.csv")
    found = {int(m.group(1)) for f in folder.iterdir() if (m := pattern.fullmatch(f.name))}
    configured = range(num_trials) if isinstance(num_trials, int) else range(0)
    return tuple(sorted(found | set(status) | set(configured)))


def _read_status(folder: Path) -> dict[int, dict]:
    path = folder / "status.json"
    if not path.exists():
        return {}
    try:
        trials = json.loads(path.read_text(encoding="utf-8"))["trials"]
        return {int(k): v for k, v in trials.items() if isinstance(v, dict)}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        _skip(path, f"not a readable status file ({exc!r})")
        return {}


def _warn_unfinished(run: Run, status: dict[int, dict]) -> None:
    for trial, info in sorted(status.items()):
        state = info.get("state", "unknown")
        if state != "finished":
            reason = f" ({info['reason']})" if info.get("reason") else ""
            _warn(
                f"{run.folder}: trial t{trial} is {state}{reason}; "
                f"its data so far is included"
            )


# ---------------------------------------------------------------- reading logs


def read_log(path: Path, kind: str) -> pd.DataFrame | None:
    """Read one CSV log, keeping complete numeric rows sorted by step; warn and return None if none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return _skip(path, "file is missing")
    except OSError as exc:
        return _skip(path, f"cannot read it ({exc.strerror})")
    lines = _complete_lines(text, path)
    if not lines:
        return _skip(path, "file is empty")
    try:
        frame = pd.read_csv(io.StringIO("\n".join(lines)), index_col=False)
    except (pd.errors.ParserError, ValueError) as exc:
        return _skip(path, f"not a readable CSV ({exc})")
    required = LOG_COLUMNS[kind]
    missing = [c for c in required if c not in frame.columns]
    if missing:
        return _skip(path, f"header lacks column(s) {', '.join(missing)}")
    if frame.empty:
        return _skip(path, "header only, no data rows")
    used = required + tuple(c for c in OPTIONAL_COLUMNS.get(kind, ()) if c in frame.columns)
    return _numeric_rows(frame, used, path)


def _complete_lines(text: str, path: Path) -> list[str]:
    lines = text.splitlines()
    # The trainer appends whole lines, so text after the last newline is a row cut mid-write.
    if len(lines) > 1 and not text.endswith("\n"):
        _warn(f"{path}: dropped its incomplete last line {lines.pop()!r}")
    # pandas would silently misalign a row with extra fields (as an index) or refuse the file.
    width = lines[0].count(",") if lines else 0
    wide = [line for line in lines[1:] if line.count(",") > width]
    if wide:
        _warn(f"{path}: dropped {len(wide)} row(s) with more fields than the header")
        lines = [lines[0]] + [line for line in lines[1:] if line.count(",") <= width]
    return lines


def _numeric_rows(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> pd.DataFrame | None:
    numeric = frame[list(columns)].apply(pd.to_numeric, errors="coerce").dropna()
    dropped = len(frame) - len(numeric)
    if dropped:
        _warn(f"{path}: dropped {dropped} row(s) with missing or non-numeric values")
    if numeric.empty:
        return _skip(path, "no complete numeric row")
    step = columns[0]
    numeric[step] = numeric[step].astype(int)
    # A resumed trial may log a step twice; the later row is the one that counts.
    numeric = numeric.drop_duplicates(step, keep="last").sort_values(step)
    return numeric.reset_index(drop=True)


def collect_logs(runs: Iterable[Run], kind: str) -> dict[Group, list[TrialLog]]:
    """Read one kind of log ("acc", "loss" or "lr") of every trial, grouped by run.group, groups sorted."""
    groups: dict[Group, list[TrialLog]] = {}
    for run in runs:
        for trial in run.trials:
            data = read_log(run.log_path(kind, trial), kind)
            if data is not None:
                groups.setdefault(run.group, []).append(TrialLog(run, trial, data))
    return dict(sorted(groups.items(), key=lambda item: _group_order(item[0])))


def _group_order(group: Group) -> tuple:
    dataset, precision, scheduler = group
    bits = re.fullmatch(r"(\d+)bit", precision)
    rank = (0, 0, "") if precision == "fp32" else (1, -int(bits[1]), "") if bits else (2, 0, precision)
    return (dataset, rank, scheduler)


def select_datasets(runs: list[Run], datasets: Iterable[str] | None) -> list[Run]:
    """Keep the runs of the named datasets (all if None); warn about names with no run."""
    if datasets is None:
        return runs
    wanted = list(datasets)
    present = {run.dataset for run in runs}
    for name in wanted:
        if name not in present:
            _warn(f"no run of dataset {name!r} (found: {', '.join(sorted(present))})")
    kept = [run for run in runs if run.dataset in wanted]
    if not kept:
        raise UserError(f"no run of dataset(s) {', '.join(wanted)}")
    return kept


# ---------------------------------------------------------------- accuracy table


def accuracy_table(runs: Iterable[Run]) -> pd.DataFrame:
    """One row per (dataset, precision, scheduler) with the columns in TABLE_COLUMNS_DOC."""
    groups = collect_logs(runs, "acc")
    if not groups:
        raise UserError("no readable acc_<exp>_t<k>.csv log in any experiment folder")
    rows = [_summary_row(group, logs) for group, logs in groups.items()]
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _summary_row(group: Group, logs: list[TrialLog]) -> dict:
    best = [float(log.data["test_acc"].max()) for log in logs]
    selected = [val_selected_test_acc(log.data) for log in logs]
    with_val = [acc for acc in selected if acc is not None]
    epochs = [len(log.data) for log in logs]
    mean, std = mean_std(best)
    val_mean, val_std = mean_std(with_val) if with_val else (math.nan, math.nan)
    return dict(
        zip(("dataset", "precision", "scheduler"), group),
        n_trials=len(logs),
        trials=";".join(log.label for log in logs),
        epochs_min=min(epochs),
        epochs_max=max(epochs),
        best_test_acc_per_trial=_join(best),
        test_acc_max=max(best),
        test_acc_mean=mean,
        test_acc_std=std,
        n_val_trials=len(with_val),
        val_selected_test_acc_per_trial=_join(selected),
        val_selected_test_acc_mean=val_mean,
        val_selected_test_acc_std=val_std,
    )


def val_selected_test_acc(acc: pd.DataFrame) -> float | None:
    """test_acc at the first epoch with the highest val_acc; None without a val_acc column."""
    if "val_acc" not in acc.columns:
        return None
    return float(acc.loc[acc["val_acc"].idxmax(), "test_acc"])


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1), the latter 0.0 for a single value."""
    array = np.asarray(values, dtype=float)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return float(array.mean()), std


def _join(values: list[float | None]) -> str:
    return ";".join("" if v is None else f"{v:.6g}" for v in values)


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the accuracy table as CSV (empty cells for missing values, 10 significant digits)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False, float_format="%.10g")
    return path


def to_markdown(table: pd.DataFrame) -> str:
    """Render the accuracy table as a markdown table with two-decimal percentages."""
    header = [
        "dataset", "precision", "scheduler", "trials", "epochs", "best test acc per trial (%)",
        "max (%)", "mean ± std (%)", "test acc at best val epoch, mean ± std (%)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_markdown_cells(row)) + " |" for row in table.to_dict("records")]
    return "\n".join(lines)


def _markdown_cells(row: dict) -> list[str]:
    epochs = f"{row['epochs_min']}" if row["epochs_min"] == row["epochs_max"] else (
        f"{row['epochs_min']}-{row['epochs_max']}"
    )
    per_trial = ", ".join(f"{float(v):.2f}" for v in row["best_test_acc_per_trial"].split(";"))
    val = ""
    if row["n_val_trials"]:
        val = f"{row['val_selected_test_acc_mean']:.2f} ± {row['val_selected_test_acc_std']:.2f}"
        if row["n_val_trials"] < row["n_trials"]:
            val += f" (n={row['n_val_trials']})"
    return [
        row["dataset"], row["precision"], row["scheduler"], str(row["n_trials"]), epochs, per_trial,
        f"{row['test_acc_max']:.2f}", f"{row['test_acc_mean']:.2f} ± {row['test_acc_std']:.2f}", val,
    ]


# ---------------------------------------------------------------- figures


def trial_mean_std(curves: list[pd.Series]) -> pd.DataFrame:
    """Align trials on their index; mean and sample std (0 where one trial) of the trials present at each step."""
    wide = pd.concat(curves, axis=1, keys=range(len(curves))).sort_index()
    return pd.DataFrame({"mean": wide.mean(axis=1), "std": wide.std(axis=1, ddof=1).fillna(0.0)})


def smooth(series: pd.Series, window: int) -> pd.Series:
    """Rolling mean over `window` steps, clipped to the series length; early steps average what exists."""
    return series.rolling(max(1, min(window, len(series))), min_periods=1).mean()


def plot_loss_curves(runs: list[Run], window: int = DEFAULT_WINDOW, lr: bool = False):
    """Smoothed loss vs iteration, a panel per dataset, mean ± std over trials per group; None if no log.

    Trials of unequal length are averaged over those present at each iteration. With lr, the first
    trial's learning rate of each group is drawn dashed on a twin y axis (one extra Axes per panel).
    """
    groups = collect_logs(runs, "loss")
    if not groups:
        _warn("no readable loss log; loss curves not drawn")
        return None
    lr_groups = collect_logs(runs, "lr") if lr else {}
    fig, panels = _panels(groups, "iteration", f"training loss (rolling mean, window {window})")
    colors = _colors(groups)
    twins = {}
    for group, logs in groups.items():
        curves = [smooth(log.data.set_index("iteration")["loss"], window) for log in logs]
        ax = panels[group[0]]
        _draw_band(ax, trial_mean_std(curves), colors[group[1:]], _label(group, logs))
        if lr_groups.get(group):
            if ax not in twins:
                twins[ax] = _lr_axis(ax)
            first = _thin(lr_groups[group][0].data.set_index("iteration")["lr"])
            twins[ax].plot(first.index, first, color=colors[group[1:]], ls="--", lw=0.8, alpha=0.8)
    _finish(panels)
    return fig


def _lr_axis(ax):
    twin = ax.twinx()
    twin.set_ylabel("learning rate (dashed: first trial)")
    # Keep the loss lines and their legend above the learning-rate lines.
    ax.set_zorder(twin.get_zorder() + 1)
    ax.patch.set_visible(False)
    return twin


def plot_test_accuracy(runs: list[Run]):
    """Test accuracy vs epoch, a panel per dataset, mean ± std over trials per group; None if no log."""
    groups = collect_logs(runs, "acc")
    if not groups:
        _warn("no readable acc log; test accuracy not drawn")
        return None
    fig, panels = _panels(groups, "epoch", "test accuracy (%)")
    colors = _colors(groups)
    for group, logs in groups.items():
        curves = [log.data.set_index("epoch")["test_acc"] for log in logs]
        _draw_band(panels[group[0]], trial_mean_std(curves), colors[group[1:]], _label(group, logs))
    _finish(panels)
    return fig


def make_figures(runs: list[Run], window: int = DEFAULT_WINDOW, lr: bool = False) -> dict:
    """Both figures by file stem ("loss_curves", "test_accuracy"), leaving out any with no data."""
    figures = {"loss_curves": plot_loss_curves(runs, window, lr), "test_accuracy": plot_test_accuracy(runs)}
    figures = {name: fig for name, fig in figures.items() if fig is not None}
    if not figures:
        raise UserError("no readable loss or acc log in any experiment folder; nothing to plot")
    return figures


def save_figure(fig, out_dir: str | Path, stem: str) -> list[Path]:
    """Save fig as <out_dir>/<stem>.png and .pdf, creating out_dir; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths


def _panels(groups: dict[Group, list[TrialLog]], xlabel: str, ylabel: str):
    # pyplot is imported here so the table CLI never loads it and the plot CLI can pick a backend first.
    import matplotlib.pyplot as plt

    datasets = sorted({group[0] for group in groups})
    ncols = min(len(datasets), 3)
    nrows = math.ceil(len(datasets) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 4.2 * nrows), squeeze=False, layout="constrained")
    for ax in axes.flat[len(datasets):]:
        fig.delaxes(ax)
    for ax, dataset in zip(axes.flat, datasets):
        ax.set(title=dataset, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
    return fig, dict(zip(datasets, axes.flat))


def _colors(groups: dict[Group, list[TrialLog]]) -> dict[tuple[str, str], str]:
    # One colour per (precision, scheduler) across panels, so a setting reads the same everywhere.
    settings = sorted({group[1:] for group in groups}, key=lambda s: _group_order(("", *s)))
    return {setting: f"C{i % 10}" for i, setting in enumerate(settings)}


def _label(group: Group, logs: list[TrialLog]) -> str:
    return f"{group[1]} {group[2]} (n={len(logs)})"


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
