"""Find QSNN run folders, read their CSV logs robustly and tabulate test accuracy (figures: plot_results.py).

A run folder holds a config.json with the keys "dataset" and "config"; trial k logs to
{acc,loss,lr,eff}_<exp>_t<k>.csv. A table row is an experiment: the config's identity keys
(qsnn.runs.schema.experiment_identity, world size included) and its budget (BUDGET_KEYS), so folders of one experiment pool their
trials. A trial is (experiment, seed + k): the same trial found in two folders counts once, with a warning. Unreadable data is skipped with a ResultsWarning naming
the file; UserError is raised only when nothing at all is usable.

Everything read back is untrusted: config.json and status.json are checked where they are read
(_read_meta, read_status), CSV logs row by row (read_log). Text that reaches the table, a figure or a
message goes through `printable`: folder names that are not UTF-8 (surrogate escapes from os.walk,
kept as they are in Run.folder and Run.name to open the files) and control characters become
backslash escapes, so output stays one line per row and encodable.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import sys
import warnings
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import pandas as pd

from qsnn.runs import schema
from qsnn.runs.cli import ArgumentParser  # noqa: F401 (the root scripts' parser, re-exported)
from qsnn.runs.config import precision_name
from qsnn.core.efficiency import COLUMNS as EFFICIENCY_COLUMNS
from qsnn.errors import MESSAGE_VALUE_CHARS, UserError, shorten

# Folders that never hold runs but can be huge (datasets, environments).
SKIP_DIRS = frozenset({".git", "venv", ".venv", "site-packages", "data", "__pycache__", ".pytest_cache",
                       "node_modules"})
# Each scheduler's own keys (qsnn/runs/schema.py); another scheduler's keys do not change a run.
SCHEDULE_KEYS, ALL_SCHEDULE_KEYS = schema.SCHEDULE_KEYS, schema.ALL_SCHEDULE_KEYS
EFF_COLUMNS = EFFICIENCY_COLUMNS[1:]  # after "epoch": the paper's two conv layers; a network of N has N rates
# A conv layer's columns of a network with any number of conv layers: rate_conv3, synops_conv3, ...
CONV_COLUMN = re.compile(r"(rate|synops)_conv([1-9][0-9]{0,2})")
# Required columns of each log (the first is its step), then optional ones.
LOG_COLUMNS = {"acc": ("epoch", "test_acc"), "loss": ("iteration", "loss"), "lr": ("iteration", "lr"),
               "eff": ("epoch",)}
OPTIONAL_COLUMNS = {"acc": ("val_acc",), "eff": EFF_COLUMNS}  # eff: also every CONV_COLUMN of its header
ACC_COLUMNS = ["test_acc", "val_acc"]  # percentages: a value outside 0..100 is damage
BUDGET_KEYS = ("epochs", "patience")  # how long trials ran: in a table row's identity, not in resume's
MAX_STEP = 2**53  # epochs and iterations above it are damage (and would not survive the cast to int)


def _join(values: pd.Series) -> str:
    return ";".join("" if pd.isna(v) else f"{v:.6g}" for v in values)


def eff_columns(names: Iterable[str] = ()) -> list[str]:
    """The paper's eff columns and every further conv layer's among names, in eff CSV order (rate_conv1..N,
    rate_fc, synops, synops_conv2..N, synops_fc, input_macs, weight_kib, weight_kib_fp32)."""
    found = set(EFF_COLUMNS) | {str(n) for n in names if CONV_COLUMN.fullmatch(str(n))}
    return sorted(found, key=_eff_position)


def _eff_position(name: str) -> tuple:
    conv = CONV_COLUMN.fullmatch(name)
    if conv:  # the rates before rate_fc, the per-layer SynOps between synops and synops_fc
        return (0 if conv[1] == "rate" else 3, int(conv[2]))
    return ({"rate_fc": 1, "synops": 2, "synops_fc": 4}.get(name, 5 + EFF_COLUMNS.index(name)), 0)


def conv_rate_columns(columns: Iterable[str]) -> list[str]:
    """The rate_conv<i> columns among columns, in layer order."""
    return [c for c in eff_columns(columns) if c.startswith("rate_conv") and c in set(columns)]


# Per-trial columns -> table columns, as pandas named aggregations over an experiment's trials.
AGGREGATES = dict(
    dataset=("dataset", "first"), precision=("precision", "first"), scheduler=("scheduler", "first"),
    setting=("setting", "first"), n_trials=("trial", "size"), trials=("trial", ";".join),
    epochs_min=("epochs", "min"), epochs_max=("epochs", "max"), best_test_acc_per_trial=("best", _join),
    test_acc_max=("best", "max"), test_acc_mean=("best", "mean"), test_acc_std=("best", "std"),
    n_val_trials=("val_selected", "count"), val_selected_test_acc_per_trial=("val_selected", _join),
    val_selected_test_acc_mean=("val_selected", "mean"), val_selected_test_acc_std=("val_selected", "std"),
    **{column: (column, "mean") for column in EFF_COLUMNS},
)
TABLE_COLUMNS = tuple(AGGREGATES)


class ResultsWarning(UserWarning):
    """A run file that was skipped or only partly read, or a trial whose data is incomplete."""


@dataclass(frozen=True)
class Run:
    """One run folder: where it is, its label, its experiment key and its trial indices."""

    folder: Path
    name: str
    dataset: str
    precision: str
    scheduler: str
    experiment: str  # sorted JSON of the config keys that define the result
    trials: tuple[int, ...]
    setting: str = ""  # what tells this experiment apart from others with the same label
    seed: object = 0  # the base seed: trial k ran with seed + k
    progress: tuple = ()  # (trial, finished, epochs completed) from status.json: which copy of a repeated trial wins

    def trial_seed(self, trial: int) -> object:
        """The seed trial k of this run ran with: with the experiment, what names the trial."""
        return schema.trial_seed({"seed": self.seed}, trial)

    def log_path(self, kind: str, trial: int) -> Path:
        return self.folder / f"{kind}_{self.name}_t{trial}.csv"


class TrialLog(NamedTuple):
    """The usable rows of one CSV log of one trial."""

    run: Run
    trial: int
    data: pd.DataFrame


def cut_long(text: str) -> str:
    """text as is when short, else cut by shorten (a command-line value can be any length)."""
    return text if len(text) <= MESSAGE_VALUE_CHARS else shorten(text)


def _warn(message: str) -> None:
    warnings.warn(printable(message), ResultsWarning, stacklevel=3)


def printable(text: str) -> str:
    """text with undecodable file-name bytes as \\xNN and other unprintable characters backslash-escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else _escape(c) for c in text)


def _escape(char: str) -> str:
    if "\udc80" <= char <= "\udcff":  # a byte os.walk could not decode (the surrogateescape handler's)
        return f"\\x{ord(char) - 0xdc00:02x}"
    return char.encode("unicode_escape").decode("ascii")


@contextmanager
def warnings_to_stderr() -> Iterator[None]:
    """Print each warning raised inside the block as one `warning: ...` line on stderr, repeats included."""
    with warnings.catch_warnings():
        warnings.simplefilter("always", ResultsWarning)
        warnings.showwarning = lambda message, *args, **kwargs: print(f"warning: {message}", file=sys.stderr)
        yield


def find_runs(root: str | Path, include_tuning: bool = False) -> list[Run]:
    """Every run folder under root in sorted walk order, tune.py trials only if asked; UserError if none."""
    root = Path(root)
    try:
        is_folder = root.is_dir()
    except OSError as exc:  # a name too long for the file system, say
        raise UserError(f"{printable(cut_long(str(root)))}: {exc.strerror}") from None
    if not is_folder:
        raise UserError(f"{printable(str(root))} is not a folder")
    runs, tuning = [], 0
    for folder, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS)
        if "config.json" not in files or (meta := _read_meta(Path(folder) / "config.json")) is None:
            continue
        if not include_tuning and is_tuning(Path(folder).relative_to(root), meta):
            tuning += 1
        else:
            runs.append(read_run(Path(folder), meta))
    if not runs:
        hint = f" ({tuning} tune.py trial folder(s) skipped; add --include-tuning)" if tuning else ""
        raise UserError(f"no experiment folders (config.json with 'dataset' and 'config') under {root}{hint}")
    return with_settings(without_repeated_trials(runs))


def without_repeated_trials(runs: list[Run]) -> list[Run]:
    """Each trial (experiment, seed + k) counted once: the finished copy with the most epochs wins (the first
    folder on a tie), and a warning names the folders of the copies left out."""
    copies: dict[tuple, list[tuple[int, int]]] = defaultdict(list)  # trial -> [(run index, k)], in folder order
    for i, run in enumerate(runs):
        for k in run.trials:
            copies[(run.experiment, json.dumps(run.trial_seed(k), default=str))].append((i, k))
    kept = {i: [] for i in range(len(runs))}
    for found in copies.values():
        best = max(found, key=lambda copy: (completion(runs[copy[0]], copy[1]), -found.index(copy)))
        kept[best[0]].append(best[1])
        for i, k in (copy for copy in found if copy != best):
            done, epochs = completion(runs[best[0]], best[1])
            _warn(f"{runs[i].folder}: trial t{k} repeats trial t{best[1]} of {runs[best[0]].folder} (the same "
                  f"experiment and seed {shorten(runs[i].trial_seed(k))}); counted once, from the latter "
                  f"({'finished' if done else 'unfinished'}, {epochs} epochs)")
    return [replace(run, trials=tuple(sorted(kept[i]))) for i, run in enumerate(runs)]


def completion(run: Run, trial: int) -> tuple[bool, int]:
    """(finished, epochs completed) of a run's trial per its status.json; (False, 0) when it has no entry."""
    return next(((done, epochs) for k, done, epochs in run.progress if k == trial), (False, 0))


def _read_meta(path: Path) -> dict | None:
    """config.json's contents if it describes a run and holds usable values; None (with a warning if damaged)."""
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad UTF-8 or JSON; RecursionError: deep nesting
        return _warn(f"skipping {path}: not readable JSON ({shorten(str(exc))})")
    if not (isinstance(meta, dict) and "dataset" in meta and isinstance(meta.get("config"), dict)):
        return None
    if problem := _meta_problem(meta):
        return _warn(f"skipping {path}: {problem}")
    return meta


def _meta_problem(meta: dict) -> str | None:
    """What makes a run's config.json unusable here (a value of the wrong kind), or None."""
    for key, where in (("dataset", meta), ("precision", meta), ("exp_name", meta), ("scheduler", meta["config"])):
        if where.get(key) is not None and not isinstance(where[key], str):
            return f"its {key} is a {type(where[key]).__name__}, not text"
    if not isinstance(meta["dataset"], str):
        return "its dataset is null, not text"
    name = meta.get("exp_name") or ""
    if name in (".", "..") or any(c in name for c in "/\\\0"):  # it names the log files inside the folder
        return f"its exp_name {shorten(name)} is not a plain file name"
    return None


def is_tuning(relative: Path, meta: dict) -> bool:
    """tune.py output: a folder below a `tune` folder, or its trial_<n> in <output_dir>/tune/<study>/."""
    study_dir = Path(str(meta["config"].get("output_dir") or ""))
    named_trial = re.fullmatch(r"trial_\d+", str(meta.get("exp_name"))) is not None
    return "tune" in relative.parts[:-1] or (named_trial and study_dir.parent.name == "tune")


def read_run(folder: Path, meta: dict) -> Run:
    """Describe the run in folder from its config.json contents; warn about unfinished trials."""
    config = meta["config"]
    name = str(meta.get("exp_name") or folder.name)
    status = read_status(folder)
    for trial, info in sorted(status.items()):
        if (state := info.get("state", "unknown")) != "finished":
            reason = f" ({info['reason']})" if info.get("reason") else ""
            _warn(f"{folder}: trial t{trial} is {state}{reason}; its data so far is included")
    # folders written before a key existed ran with its schema default; world_size sits beside "config"
    key = schema.experiment_identity({**config, "dataset": meta["dataset"]}, meta)
    # the budget is no part of resuming (a run may be extended) but is of a result: best-of-5 epochs is not
    # best-of-18, so runs of one experiment with different budgets are different table rows
    key.update({name: config.get(name, schema.SCHEMA[name].default) for name in BUDGET_KEYS})
    key.update(dataset=printable(meta["dataset"]), precision=printable(precision_label(meta)))
    return Run(folder, name, key["dataset"], key["precision"], printable(str(config.get("scheduler", "unknown"))),
               json.dumps(key, sort_keys=True, default=str), _trial_indices(folder, name, config, status),
               seed=config.get("seed", schema.SCHEMA["seed"].default), progress=trial_progress(status))


def trial_progress(status: dict[int, dict]) -> tuple:
    """(trial, finished, epochs completed) of each status.json entry (an unreadable count is 0)."""
    def epochs(info):
        value = info.get("epochs_completed", 0)
        return value if type(value) is int else 0
    return tuple((k, info.get("state") == "finished", epochs(info)) for k, info in sorted(status.items()))


def precision_label(meta: dict) -> str:
    """config.json's "precision", else "fp32" for config.num_bits null and "<N>bit" for N."""
    return meta.get("precision") or precision_name(meta["config"].get("num_bits"))


def _trial_indices(folder: Path, name: str, config: dict, status: dict[int, dict]) -> tuple[int, ...]:
    # Trials with files or a status entry; further announced ones are counted, never listed (num_trials may be huge).
    pattern = re.compile(rf"(?:acc|loss|lr)_{re.escape(name)}_t([0-9]{{1,9}})\.csv")
    try:
        names = [f.name for f in folder.iterdir()]
    except OSError as exc:
        names = _warn(f"{folder}: cannot list its files ({exc.strerror}); only its status.json trials are read") or []
    found = {int(m[1]) for f in names if (m := pattern.fullmatch(f))} | set(status)
    announced = config.get("num_trials")
    if type(announced) is int and (missing := announced - sum(k < announced for k in found)) > 0:
        first = itertools.islice((f"t{k}" for k in itertools.count() if k not in found), min(missing, 3))
        more = ", ..." if missing > 3 else ""
        _warn(f"{folder}: config.json announces {announced} trials; {missing} have no logs ({', '.join(first)}{more})")
    return tuple(sorted(found))


def read_status(folder: Path) -> dict[int, dict]:
    """{trial: its status.json entry}; {} (with a warning if damaged) when there is none to read."""
    path = folder / "status.json"
    try:  # written atomically by qsnn.runs.runlog: whole or absent
        trials = json.loads(path.read_text(encoding="utf-8"))["trials"]
        status = {int(k): v for k, v in trials.items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        return _warn(f"skipping {path}: not a readable status file ({shorten(repr(exc))})") or {}
    if bad := [k for k, v in status.items() if not isinstance(v, dict) or not 0 <= k < 10**9]:
        return _warn(f"skipping {path}: trial {shorten(bad[0])} is not a trial number with an object") or {}
    return status


def with_settings(runs: list[Run]) -> list[Run]:
    """Set each run's setting: the experiment keys whose values differ among runs sharing its label, except
    a key at its default where the schema says so (compute_precision=fp32: every older run would show it)."""
    configs = pd.DataFrame([json.loads(run.experiment) for run in runs]).map(json.dumps)  # absent key: "NaN"
    labels = pd.Series([(run.dataset, run.precision, run.scheduler) for run in runs])
    differs = configs.groupby(labels).transform("nunique") > 1

    def shown(key, value):
        return key not in schema.SCHEMA or schema.SCHEMA[key].setting_at_default or value != schema.SCHEMA[key].default

    return [replace(run, setting=printable(", ".join(f"{k}={experiment.get(k)}" for k in sorted(configs.columns[row])
                                                     if shown(k, experiment.get(k)))))
            for run, row, experiment in zip(runs, differs.to_numpy(), (json.loads(r.experiment) for r in runs))]


def row_order(run: Run) -> tuple:
    """Sort key of table rows: dataset, fp32 then bit widths high to low, scheduler, setting (numbers by value)."""
    bits = re.fullmatch(r"(\d+)bit", run.precision)
    rank = (0, 0, "") if run.precision == "fp32" else (1, -int(bits[1]), "") if bits else (2, 0, run.precision)
    # re.split with a group alternates text and digit runs: odd places are numbers, compared as such
    natural = [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", run.setting))]
    return (run.dataset, rank, run.scheduler, natural)


def read_log(path: Path, kind: str, missing_ok: bool = False) -> pd.DataFrame | None:
    """Complete, finite rows of one CSV log sorted by step; warn and return None if there are none."""
    try:
        text = path.read_text(encoding="utf-8-sig", errors="replace")  # bytes that are not UTF-8 become U+FFFD
    except FileNotFoundError:
        return None if missing_ok else _warn(f"skipping {path}: file is missing")
    except OSError as exc:
        return _warn(f"skipping {path}: cannot read it ({exc.strerror})")
    body, _, cut = text.rpartition("\n")
    if body and cut:  # the trainer writes whole lines: text after the last newline was cut mid-write
        _warn(f"{path}: dropped its incomplete last line {shorten(cut)}")
        text = body
    if not (lines := text.splitlines()):
        return _warn(f"skipping {path}: file is empty")
    if undecodable := [line for line in lines[1:] if "\ufffd" in line]:
        _warn(f"{path}: dropped {len(undecodable)} row(s) holding bytes that are not UTF-8 text")
        lines = [lines[0], *(line for line in lines[1:] if "\ufffd" not in line)]
    # The trainer writes bare numbers: a quote would make pandas read on to the end of the file as one field.
    if quoted := sum(1 for line in lines[1:] if '"' in line or "\0" in line):
        _warn(f"{path}: dropped {quoted} row(s) with quotes or NUL bytes, which no log holds")
        lines = [lines[0], *(line for line in lines[1:] if '"' not in line and "\0" not in line)]
    # pandas would silently cut a row with extra fields (or take them as an index).
    if wide := [line for line in lines[1:] if line.count(",") > lines[0].count(",")]:
        _warn(f"{path}: dropped {len(wide)} row(s) with more fields than the header")
    try:
        frame = pd.read_csv(io.StringIO("\n".join(line for line in lines if line not in wide)))
    except (pd.errors.ParserError, ValueError) as exc:
        return _warn(f"skipping {path}: not a readable CSV ({exc})")
    if missing := [c for c in LOG_COLUMNS[kind] if c not in frame.columns]:
        return _warn(f"skipping {path}: header lacks column(s) {', '.join(missing)}")
    if frame.empty:
        return _warn(f"skipping {path}: header only, no data rows")
    optional = eff_columns(frame.columns) if kind == "eff" else OPTIONAL_COLUMNS.get(kind, ())
    columns = [*LOG_COLUMNS[kind], *(c for c in optional if c in frame.columns)]
    return _valid_rows(frame[columns].apply(pd.to_numeric, errors="coerce"), path)


def _valid_rows(numeric: pd.DataFrame, path: Path) -> pd.DataFrame | None:
    accs, steps = numeric.filter(items=ACC_COLUMNS), numeric.iloc[:, 0]
    valid = np.isfinite(numeric).all(axis=1) & (accs >= 0).all(axis=1) & (accs <= 100).all(axis=1)
    if dropped := int((~valid).sum()):
        accuracy = " or an accuracy outside 0..100" if len(accs.columns) else ""
        _warn(f"{path}: dropped {dropped} row(s) with missing or non-numeric values{accuracy}")
    whole = (steps >= 0) & (steps <= MAX_STEP) & (steps == np.floor(steps))  # else the cast to int would wrap
    if odd := int((valid & ~whole).sum()):
        _warn(f"{path}: dropped {odd} row(s) whose {steps.name} is not a whole number in 0..2**53")
    valid &= whole
    if not valid.any():
        return _warn(f"skipping {path}: no complete numeric row")
    step = numeric.columns[0]
    numeric = numeric[valid].astype({step: int})
    # A step logged twice (a resumed trial) counts with its later row.
    return numeric.drop_duplicates(step, keep="last").sort_values(step).reset_index(drop=True)


def collect_logs(runs: Iterable[Run], kind: str) -> dict[str, list[TrialLog]]:
    """Read one kind of log ("acc", "loss", "lr") of every trial, by experiment, in table row order."""
    groups = defaultdict(list)
    for run in sorted(runs, key=row_order):
        for trial in run.trials:
            if (data := read_log(run.log_path(kind, trial), kind)) is not None:
                groups[run.experiment].append(TrialLog(run, trial, data))
    return dict(groups)


def accuracy_table(runs: Iterable[Run], acc_logs: dict[str, list[TrialLog]] | None = None) -> pd.DataFrame:
    """One row per experiment (columns: extract_test_set_accuracy.py --help); acc_logs: the runs' if read already."""
    acc_logs = collect_logs(runs, "acc") if acc_logs is None else acc_logs
    if not acc_logs:
        raise UserError("no readable acc_<exp>_t<k>.csv log in any experiment folder")
    trials = pd.DataFrame([trial_summary(log) for logs in acc_logs.values() for log in logs])
    # the columns of the paper's eff CSV, and those of every further conv layer some run has
    means = {column: (column, "mean") for column in eff_columns(trials.columns)}
    columns = {**{k: v for k, v in AGGREGATES.items() if k not in EFF_COLUMNS}, **means}
    return trials.groupby("experiment", sort=False).agg(**columns).reset_index(drop=True)


def trial_summary(log: TrialLog) -> dict:
    """One trial's best test accuracy, epochs, val-selected accuracy and efficiency at its best epoch."""
    run, acc = log.run, log.data
    best = acc.loc[acc["test_acc"].idxmax()]  # the first epoch of best test accuracy: the model the trial kept
    eff = read_log(run.log_path("eff", log.trial), "eff", missing_ok=True)
    eff_at_best = eff.set_index("epoch").reindex([int(best["epoch"])]).iloc[0] if eff is not None else {}
    return {"experiment": run.experiment, "dataset": run.dataset, "precision": run.precision,
            "scheduler": run.scheduler, "setting": run.setting, "trial": f"{printable(run.name)}/t{log.trial}",
            "epochs": len(acc), "best": best["test_acc"],
            # test_acc at the first epoch of highest val_acc: the model a validation split would select
            "val_selected": acc.loc[acc["val_acc"].idxmax(), "test_acc"] if "val_acc" in acc else math.nan,
            **{column: eff_at_best.get(column, math.nan) for column in eff_columns(getattr(eff, "columns", ()))}}


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as CSV atomically (empty cells for missing values); UserError if that is impossible."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; give the CSV file to write, e.g. {path / 'test_set_accuracy.csv'}")
    from qsnn.runs.runlog import atomic_path  # imports torch: only when writing

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            table.to_csv(tmp, index=False, float_format="%.10g")
    except OSError as exc:
        raise UserError(f"cannot write {path}: {os_reason(exc)}") from None
    return path


def os_reason(exc: OSError) -> str:
    """Why a write failed, in a few words (mkdir's "File exists" names a file in the way)."""
    return f"{exc.filename} is a file, not a folder" if isinstance(exc, FileExistsError) else exc.strerror or str(exc)


def _fmt(values: Iterable[float], spec: str) -> list[str]:
    return ["" if pd.isna(v) else format(v, spec) for v in values]


def _pm(means: pd.Series, stds: pd.Series) -> list[str]:
    return [f"{m:.2f} ± " + ("n/a" if pd.isna(s) else f"{s:.2f}") for m, s in zip(means, stds)]


def _rate_cells(table: pd.DataFrame) -> tuple[str, list[str]]:
    """(header, cells) of the spike-rate column: each row's conv layers and fc joined by " / ".

    The header names the layers ("spike rate conv1 / conv2 / fc") when every filled row has the same
    number of conv layers, else it reads "spike rate conv1 / ... / fc" and each row shows its own.
    """
    convs = conv_rate_columns(table.columns)
    cells, counts = [], set()
    for _, row in table.iterrows():
        layers = [c for c in convs if not pd.isna(row[c])]
        filled = bool(layers) and layers == convs[:len(layers)] and not pd.isna(row["rate_fc"])
        cells.append(" / ".join(_fmt([row[c] for c in [*layers, "rate_fc"]], ".3f")) if filled else "")
        if filled:
            counts.add(len(layers))
    names = [f"conv{i + 1}" for i in range(max(counts))] if len(counts) == 1 else ["conv1", "..."]
    return "spike rate " + " / ".join([*(names if counts else ["conv1", "conv2"]), "fc"]), cells


def to_markdown(table: pd.DataFrame) -> str:
    """The table as markdown, two-decimal percentages; setting and efficiency columns only when filled."""
    t = table
    val = [pm + (f" (n={n})" if n < total else "") if n else "" for pm, n, total in
           zip(_pm(t.val_selected_test_acc_mean, t.val_selected_test_acc_std), t.n_val_trials, t.n_trials)]
    rate_header, rate_cells = _rate_cells(t)
    cells = pd.DataFrame({
        "dataset": t.dataset, "precision": t.precision, "scheduler": t.scheduler, "setting": t.setting,
        "trials": t.n_trials.astype(str),
        "epochs": [f"{a}" if a == b else f"{a}-{b}" for a, b in zip(t.epochs_min, t.epochs_max)],
        "best test acc per trial (%)": [", ".join(_fmt(map(float, s.split(";")), ".2f"))
                                        for s in t.best_test_acc_per_trial],
        "max (%)": _fmt(t.test_acc_max, ".2f"), "mean ± std (%)": _pm(t.test_acc_mean, t.test_acc_std),
        "test acc at best val epoch, mean ± std (%)": val,
        rate_header: rate_cells,
        "SynOps / sample": _fmt(t.synops, ",.0f"), "weights (KiB)": _fmt(t.weight_kib, ".1f"),
    })
    cells = cells.loc[:, (cells != "").any() | ~cells.columns.isin(["setting", *cells.columns[-3:]])]
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)])
