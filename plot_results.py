"""Plot training loss, test accuracy and (with --memory) accuracy against weight memory of QSNN runs.

One panel per dataset (--panels: per dataset and precision, or per dataset and number of time steps),
one curve per experiment (a config without run-time keys; see extract_test_set_accuracy.py): the mean
over its trials, with a shaded band of +-1 sample std (--band minmax: the trials' range). Trials of one
experiment pool, whether they share a folder or sit in folders that differ only in seed (_s0, _s1).

Colour is the learning-rate schedule and line style (and marker) the weight precision, from fixed
tables, so an experiment looks the same in every figure. Labels use the study's own words where the
folder name says them (fashion_mnist_T10_4bit_periodic, ..._fp32_monotone_s1: "4-bit periodic"),
else the config's scheduler and its settings in epochs ("4-bit cosine, period 2 epochs").

The logged loss grows with the number of time steps T, so each run's loss is divided by its T
(num_steps_train, else num_steps, from config.json) to put runs of different T on one scale; the first
--skip-iterations are dropped, then each trial is smoothed by an exponential moving average and drawn
against the iteration; a linear loss axis is scaled to the curves after their first 5% of iterations,
so the steep start leaves the top rather than flattening the rest (--logy: a log axis shows it all).
--lr adds a row with each schedule's learning rate on an axis from 0.

Writes <prefix>loss_curves, <prefix>test_accuracy and <prefix>accuracy_vs_memory as .png and .pdf;
--per-folder writes one such set per subfolder of ROOT (results/paper -> paper_loss_curves.png, ...).

Relative paths (ROOT, --out) are taken from the current directory; ROOT defaults to the repository.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

REPO_ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(REPO_ROOT))

import matplotlib  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib import ticker  # noqa: E402  (no pyplot: the backend is chosen later)

from qsnn.analysis import results  # noqa: E402
from qsnn.errors import UserError  # noqa: E402
from qsnn.analysis.results import ResultsWarning, Run, TrialLog, collect_logs  # noqa: E402
from qsnn.runs.schema import EPOCHS_TWINS  # noqa: E402

DEFAULT_WINDOW = 50
DEFAULT_DPI = 200
MAX_POINTS = 2000  # curves are thinned to about this many points: invisible at figure size, small files
MARKER_MAX_POINTS = 30  # a curve of at most this many points (epochs) gets a marker on each
PANEL_SIZE = (3.3, 2.5)  # inches per data panel: three in a row make a two-column paper's full width, scaled 0.7
LR_HEIGHT = 1.1  # inches of the learning-rate row under a loss panel

# Okabe-Ito colours (distinct for colour-blind readers and in greyscale print), one per schedule kind.
SCHEDULE_COLORS = {"periodic": "#0072B2", "monotone": "#D55E00", "constant": "#4D4D4D", "cosine": "#009E73",
                   "cosine_restarts": "#CC79A7", "cyclic": "#E69F00", "step": "#56B4E9"}
SPARE_COLORS = ("#882255", "#117733", "#332288", "#999933", "#44AA99", "#AA4499", "#88CCEE", "#661100")
SCHEDULE_ORDER = ("periodic", "monotone", "constant", "cosine", "cosine_restarts", "cyclic", "step")
# (line style, marker) per precision; a marker keeps precisions apart where lines are short.
PRECISION_STYLES = {"fp32": ("-", "o"), "16bit": ((0, (8, 2)), "P"), "8bit": ("-.", "D"), "4bit": ("--", "s"),
                    "2bit": (":", "^"), "1bit": ((0, (3, 1, 1, 1, 1, 1)), "v")}
SPARE_STYLES = (((0, (5, 1, 1, 1)), "X"), ((0, (1, 2)), "*"), ((0, (6, 2, 2, 2)), "h"), ((0, (2, 1)), "p"))
# A folder named in the study's words: <...>_<precision>_<periodic|monotone|constant>[_s<seed>].
STUDY_NAME = re.compile(r"(?:^|_)(fp32|\d+bit)_(periodic|monotone|constant)(?:_s\d+)?$")
STEP_KEYS = frozenset({"num_steps", "num_steps_train"})  # the T of training; a label says it when T varies
LOSS_FIT_FROM = 0.05  # a linear loss axis fits the curves from this share of their iterations on
# Figure text sized for a two-column paper at about the figure's own width.
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "legend.title_fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False,
         "axes.grid": True, "grid.alpha": 0.3}
BANDS = {"std": "±1 std", "minmax": "min–max"}
PANEL_CHOICES = ("dataset", "precision", "steps")


def _warn(message: str) -> None:
    warnings.warn(message, ResultsWarning, stacklevel=3)


@dataclass(frozen=True)
class Options:
    """How the curves are drawn: smoothing, skipped iterations, log loss axis, band, panels."""

    window: int = DEFAULT_WINDOW
    skip: int = 0
    logy: bool = False
    band: str = "std"
    panels: str = "dataset"


@dataclass(frozen=True)
class Style:
    """How one experiment is named and drawn in every figure."""

    schedule: str  # e.g. "periodic", "cosine, period 2 epochs"
    precision: str  # e.g. "4-bit", "fp32"
    extra: str  # settings that tell it apart from another experiment of the same label, e.g. "T=100"
    kind: str  # the schedule's family (periodic, monotone, constant or a scheduler name): its colour
    steps: int | None  # T the logged loss is divided by (None: not in config.json)
    color: str = "black"
    linestyle: object = "-"
    marker: str = "o"

    @property
    def label(self) -> str:
        """The legend text, e.g. "4-bit periodic" or "fp32 cosine, period 2 epochs, T=100"."""
        return f"{self.precision} {self.schedule}" + (f", {self.extra}" if self.extra else "")


# ---------------------------------------------------------------- which runs


def select_datasets(runs: list[Run], datasets: Iterable[str] | None) -> list[Run]:
    """Keep the runs of the named datasets (all if None); warn about names with no run."""
    if datasets is None:
        return runs
    datasets = list(datasets)
    present = {run.dataset for run in runs}
    for name in datasets:
        if name not in present:
            _warn(f"no run of dataset {name!r} (found: {', '.join(sorted(present))})")
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
                _warn(f"{run.folder}: trial t{trial} is {state}; left out (--skip-unfinished)")
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


# ---------------------------------------------------------------- labels and styles


def run_config(run: Run) -> dict:
    """The run's config dict from its config.json ({} if it cannot be read any more)."""
    try:
        return json.loads((run.folder / "config.json").read_text(encoding="utf-8"))["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def time_steps(config: dict) -> int | None:
    """The number of time steps a training iteration runs (num_steps_train, else num_steps), or None."""
    steps = config.get("num_steps_train", config.get("num_steps"))
    return steps if type(steps) is int and steps > 0 else None


def precision_text(precision: str) -> str:
    """'4bit' -> '4-bit'; 'fp32' and other names as they are."""
    bits = re.fullmatch(r"(\d+)bit", precision)
    return f"{bits[1]}-bit" if bits else precision


def precision_rank(precision: str) -> tuple:
    """Sort key of a precision text: fp32 first, then bit widths from high to low, then other names."""
    bits = re.fullmatch(r"(\d+)-bit", precision)
    return (0, 0, "") if precision == "fp32" else (1, -int(bits[1]), "") if bits else (2, 0, precision)


def span_text(iterations: float, iters_per_epoch: float | None) -> str:
    """A number of iterations in epochs when the epoch length is known ('2 epochs'), else in iterations."""
    if not iters_per_epoch:
        return f"{iterations:,.0f} iterations"
    epochs = round(iterations / iters_per_epoch, 2)
    return f"{epochs:g} epoch" + ("" if epochs == 1 else "s")


def schedule_text(config: dict, iters_per_epoch: float | None) -> tuple[str, str]:
    """(label, kind) of the config's scheduler and its key settings, e.g. ('cosine, period 2 epochs', 'periodic')."""
    name = str(config.get("scheduler", "unknown"))
    value = {key: config.get(key) for key in ("t_max", "eta_min", "t_0", "t_mult", "step_size_up", "step_size",
                                               "gamma", "epochs")}
    for key, twin in EPOCHS_TWINS.items():  # a period stated in epochs overrides its iteration key
        if isinstance(config.get(twin), (int, float)):
            value[key] = round(config[twin] * iters_per_epoch) if iters_per_epoch else None
    span = lambda iterations: span_text(iterations, iters_per_epoch)  # noqa: E731
    floor = f", min LR {value['eta_min']:g}" if isinstance(value["eta_min"], (int, float)) and value["eta_min"] else ""
    if name == "cosine" and isinstance(value["t_max"], (int, float)):
        total = value["epochs"] * iters_per_epoch if iters_per_epoch and isinstance(value["epochs"], int) else None
        if total and value["t_max"] >= total:  # the LR only falls: the study's monotone schedule
            return f"cosine decay over {span(value['t_max'])}{floor}", "monotone"
        # CosineAnnealingLR keeps going past t_max: down over t_max, back up over the next t_max.
        return f"cosine, period {span(2 * value['t_max'])}{floor}", "periodic" if total else "cosine"
    if name == "cosine_restarts" and isinstance(value["t_0"], (int, float)):
        longer = f", each ×{value['t_mult']:g} longer" if value["t_mult"] not in (None, 1) else ""
        return f"warm restarts every {span(value['t_0'])}{longer}{floor}", name
    if name == "cyclic" and isinstance(value["step_size_up"], (int, float)):
        return f"triangular, period {span(2 * value['step_size_up'])}", name
    if name == "step" and isinstance(value["step_size"], (int, float)) and isinstance(value["gamma"], (int, float)):
        return f"step ×{value['gamma']:g} every {span(value['step_size'])}", name
    return name, name


def extra_text(setting: str) -> str:
    """The parts of a run's setting that its label does not say otherwise: 'lr=0.01, t_max=469' -> 'lr=0.01'."""
    parts = []
    for part in re.split(r", (?=\w+=)", setting) if setting else []:
        key = part.partition("=")[0]
        # The schedule text, the precision and (where T varies) a "T=" part say these.
        if key not in results.ALL_SCHEDULE_KEYS and key not in STEP_KEYS and key != "num_bits":
            parts.append(part)
    return ", ".join(parts)


def describe(run: Run, iters_per_epoch: float | None) -> Style:
    """The run's label parts: from its folder name in the study's words, else from its config."""
    config = run_config(run)
    if study := STUDY_NAME.search(run.folder.name):
        precision, schedule, kind = precision_text(study[1]), study[2], study[2]
    else:
        precision = precision_text(run.precision)
        schedule, kind = schedule_text(config, iters_per_epoch)
    return Style(schedule, precision, extra_text(run.setting), kind, time_steps(config))


def iterations_per_epoch(loss_logs: list[TrialLog], acc_logs: list[TrialLog]) -> float | None:
    """Iterations per epoch of an experiment: a trial's last logged iteration over its last epoch."""
    last_epoch = {(log.run.folder, log.trial): int(log.data["epoch"].max()) for log in acc_logs}
    for log in loss_logs:
        if epochs := last_epoch.get((log.run.folder, log.trial)):
            return int(log.data["iteration"].max()) / epochs
    return None


def pick(names: dict[str, str], table: dict, spares: tuple, uses: Counter) -> dict:
    """{name: its family's entry in the fixed table}; a name whose entry is taken, or that has none, gets a spare."""
    chosen = {}
    # The study's word for the family ("periodic", "periodic (cosine, period 2 epochs)") claims the table entry
    # first, then the variant with the most experiments (the one drawn at every precision).
    order = lambda n: (names[n] not in table, not n.startswith(names[n]), -uses[n], n)  # noqa: E731
    for name in sorted(names, key=order):
        wanted = table.get(names[name])
        if wanted is None or wanted in chosen.values():
            wanted = next((s for s in spares if s not in chosen.values()), spares[len(chosen) % len(spares)])
        chosen[name] = wanted
    return chosen


def assign_styles(described: dict[str, Style]) -> dict[str, Style]:
    """Colour by schedule and line style and marker by precision, from the fixed tables."""
    colors = pick({s.schedule: s.kind for s in described.values()}, SCHEDULE_COLORS, SPARE_COLORS,
                  Counter(s.schedule for s in described.values()))
    lines = pick({s.precision: s.precision.replace("-bit", "bit") for s in described.values()}, PRECISION_STYLES,
                 SPARE_STYLES, Counter(s.precision for s in described.values()))
    return {key: replace(s, color=colors[s.schedule], linestyle=lines[s.precision][0], marker=lines[s.precision][1])
            for key, s in described.items()}


def experiment_styles(runs: list[Run], loss_groups: dict | None = None, acc_groups: dict | None = None) -> dict:
    """{experiment: Style} of every experiment of the runs; logs not given are read here."""
    loss_groups = collect_logs(runs, "loss") if loss_groups is None else loss_groups
    acc_groups = collect_logs(runs, "acc") if acc_groups is None else acc_groups
    first = {}
    for run in sorted(runs, key=results.row_order):
        first.setdefault(run.experiment, run)
    per_epoch = {key: iterations_per_epoch(loss_groups.get(key, []), acc_groups.get(key, [])) for key in first}
    described = {key: describe(run, per_epoch[key]) for key, run in first.items()}
    if len({style.steps for style in described.values()}) > 1:  # runs of several T: every label says its T
        described = {key: replace(s, extra=", ".join(filter(None, (f"T={s.steps}" if s.steps else "", s.extra))))
                     for key, s in described.items()}
    return assign_styles(disambiguate(described, first, per_epoch))


def disambiguate(described: dict[str, Style], first: dict[str, Run], per_epoch: dict) -> dict[str, Style]:
    """Experiments of one dataset that would share a label say what differs: the config's schedule, else their folder.

    Every experiment of a schedule name that needs it says its config's schedule, so that one variant keeps
    one colour at every precision.
    """
    described = dict(described)
    count = Counter((first[key].dataset, style.label) for key, style in described.items())
    unclear = {(first[key].dataset, s.schedule) for key, s in described.items()
               if count[first[key].dataset, s.label] > 1}
    for key, s in described.items():
        own = schedule_text(run_config(first[key]), per_epoch[key])[0]
        if (first[key].dataset, s.schedule) in unclear and own != s.schedule:
            described[key] = replace(s, schedule=f"{s.schedule} ({own})")
    count = Counter((first[key].dataset, style.label) for key, style in described.items())
    return {key: replace(s, extra=", ".join(filter(None, (s.extra, first[key].name))))
            if count[first[key].dataset, s.label] > 1 else s for key, s in described.items()}


def legend_order(style: Style) -> tuple:
    """Legend entries grouped by schedule (the study's three first), then precision from fp32 down."""
    rank = SCHEDULE_ORDER.index(style.kind) if style.kind in SCHEDULE_ORDER else len(SCHEDULE_ORDER)
    return (rank, style.schedule, precision_rank(style.precision), style.extra)


# ---------------------------------------------------------------- curves


def smooth(series: pd.Series, window: int) -> pd.Series:
    """Exponential moving average of span `window` (bias-corrected, so no step where a window would fill)."""
    return series.ewm(span=window).mean()


def trial_stats(curves: list[pd.Series]) -> pd.DataFrame:
    """Align trials on their index; mean, sample std (0 where one trial), min and max of those present at each step."""
    wide = pd.concat(curves, axis=1, keys=range(len(curves))).sort_index()
    return pd.DataFrame({"mean": wide.mean(axis=1), "std": wide.std(axis=1, ddof=1).fillna(0.0),
                         "min": wide.min(axis=1), "max": wide.max(axis=1)})


def band_limits(stats: pd.DataFrame, band: str) -> tuple[pd.Series, pd.Series]:
    """Lower and upper edge of the shaded band: mean ± std, or the trials' min and max."""
    if band == "minmax":
        return stats["min"], stats["max"]
    return stats["mean"] - stats["std"], stats["mean"] + stats["std"]


def loss_curve(log: TrialLog, steps: int | None, options: Options) -> pd.Series:
    """One trial's loss by iteration: iterations up to options.skip dropped, divided by T, then smoothed."""
    loss = log.data.set_index("iteration")["loss"]
    loss = loss[loss.index > options.skip]
    return smooth(loss / steps if steps else loss, options.window)


def loss_ylabel(styles: Iterable[Style], window: int) -> str:
    """The loss axis title: says whether the loss is per time step and how it is smoothed."""
    quantity = "training loss / T" if any(style.steps for style in styles) else "training loss"
    return f"{quantity}\n({'not smoothed' if window == 1 else f'EMA, span {window} it.'})"


def panel_key(style: Style, dataset: str, panels: str) -> tuple:
    """The panel an experiment is drawn in: its dataset, and with --panels its precision or T."""
    if panels == "precision":
        return (dataset, precision_rank(style.precision), style.precision)
    if panels == "steps":
        return (dataset, style.steps or 0, f"T={style.steps}" if style.steps else "T unknown")
    return (dataset,)


def panel_keys(groups: dict, styles: dict, panels: str) -> dict[str, tuple]:
    """{experiment: its panel}; a dataset whose experiments all fall in one panel keeps a plain dataset panel."""
    keys = {key: panel_key(styles[key], logs[0].run.dataset, panels) for key, logs in groups.items()}
    split = {dataset for dataset in {k[0] for k in keys.values()}
             if len({k for k in keys.values() if k[0] == dataset}) > 1}
    return {key: panel if panel[0] in split else panel[:1] for key, panel in keys.items()}


def _thin(data):
    return data.iloc[:: max(1, math.ceil(len(data) / MAX_POINTS))]


def draw_curve(ax, stats: pd.DataFrame, style: Style, label: str, band: str, n_trials: int) -> None:
    """The mean as a line (a marker per point where there are few), the band shaded behind it."""
    stats = _thin(stats)
    few = len(stats) <= MARKER_MAX_POINTS
    ax.plot(stats.index, stats["mean"], color=style.color, ls=style.linestyle, marker=style.marker if few else None,
            ms=4.5, label=label, zorder=3)
    if n_trials > 1:
        low, high = band_limits(stats, band)
        ax.fill_between(stats.index, low, high, color=style.color, alpha=0.15, lw=0, zorder=2)


# ---------------------------------------------------------------- figures


def plot_loss_curves(runs: list[Run], window: int = DEFAULT_WINDOW, lr: bool = False, *, options: Options = None,
                     styles: dict | None = None, groups: dict | None = None, lr_groups: dict | None = None):
    """Loss / T vs iteration, a panel per dataset, mean and band over trials per experiment; None if no log.

    With lr, a row under the loss panels shows each schedule's learning rate (its first trial's) from 0.
    """
    options = options or Options(window=window)
    groups = collect_logs(runs, "loss") if groups is None else groups
    if not groups:
        return _warn("no readable loss log; loss curves not drawn")
    styles = styles or experiment_styles(runs, loss_groups=groups)
    curves = {}
    for key, logs in groups.items():
        trial_curves = [c for log in logs if not (c := loss_curve(log, styles[key].steps, options)).empty]
        if trial_curves:
            curves[key] = (logs, trial_curves)
        else:
            _warn(f"{logs[0].run.folder}: no loss logged after iteration {options.skip}; left out of the loss curves")
    if not curves:
        return _warn(f"no loss logged after iteration {options.skip}; loss curves not drawn")
    keys = panel_keys({key: logs for key, (logs, _) in curves.items()}, styles, options.panels)
    fig, panels, lr_panels = _panels(sorted(set(keys.values())), "iteration",
                                     loss_ylabel((styles[k] for k in curves), options.window), lr_row=lr)
    for key, (logs, trial_curves) in curves.items():
        draw_curve(panels[keys[key]], trial_stats(trial_curves), styles[key], f"{styles[key].label} (n={len(logs)})",
                   options.band, len(logs))
    for ax in panels.values():
        ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))
        if options.logy:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 3.0, 5.0, 7.0), numticks=8))
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain_tick))
            ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        else:
            fit_loss_axis(ax)
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain_tick))
    if lr:
        lr_groups = collect_logs(runs, "lr") if lr_groups is None else lr_groups
        draw_learning_rates(lr_panels, {key: lr_groups.get(key, []) for key in curves}, keys, styles)
    _legend(fig, {key: len(logs) for key, (logs, _) in curves.items()}, styles, f"shaded: {BANDS[options.band]}",
            markers=False)
    return fig


def fit_loss_axis(ax) -> None:
    """Lower a linear loss axis's top to the curves after their first iterations, which would flatten the rest."""
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    if not lines:
        return
    start = min(line.get_xdata()[0] for line in lines)
    cut = start + LOSS_FIT_FROM * (max(line.get_xdata()[-1] for line in lines) - start)
    later = [y for line in lines for x, y in zip(line.get_xdata(), line.get_ydata()) if x >= cut]
    bands = [path.vertices[:, 1] for band in ax.collections for path in band.get_paths()]
    bottom = min([line.get_ydata().min() for line in lines] + [edge.min() for edge in bands])
    top = max(later, default=ax.get_ylim()[1])
    margin = 0.08 * (top - bottom)
    ax.set_ylim(max(ax.get_ylim()[0], bottom - margin), min(ax.get_ylim()[1], top + margin))


def draw_learning_rates(lr_panels: dict, lr_groups: dict, keys: dict, styles: dict) -> None:
    """Each panel's distinct schedules' learning rate (first trial) on an axis from 0 to just above the peak."""
    drawn = defaultdict(set)
    for key, logs in lr_groups.items():
        ax, style = lr_panels[keys[key]], styles[key]
        if not logs or (style.schedule, style.extra) in drawn[ax]:
            continue  # the schedule of several precisions: its LR is the same, draw it once
        drawn[ax].add((style.schedule, style.extra))
        first = _thin(logs[0].data.set_index("iteration")["lr"])
        ax.plot(first.index, first, color=style.color, lw=1.2)
    for ax in lr_panels.values():
        ax.set_ylim(0, max((line.get_ydata().max() for line in ax.get_lines()), default=1.0) * 1.1 or 1.0)
        ax.yaxis.set_major_locator(ticker.MaxNLocator(3))
        formatter = ticker.ScalarFormatter(useMathText=True)
        formatter.set_powerlimits((-2, 3))  # 0.0029 reads as 2.9 with "×10⁻³" above the axis
        ax.yaxis.set_major_formatter(formatter)
        ax.xaxis.set_major_formatter(ticker.StrMethodFormatter("{x:,.0f}"))


def plot_test_accuracy(acc_logs: dict[str, list[TrialLog]], styles: dict | None = None, options: Options = None):
    """Test accuracy vs epoch, a panel per dataset, mean and band over trials per experiment; None if no log."""
    options = options or Options()
    if not acc_logs:
        return _warn("no readable acc log; test accuracy not drawn")
    if styles is None:
        styles = experiment_styles([logs[0].run for logs in acc_logs.values()], acc_groups=acc_logs)
    keys = panel_keys(acc_logs, styles, options.panels)
    fig, panels, _ = _panels(sorted(set(keys.values())), "epoch", "test accuracy (%)")
    last_epoch = defaultdict(int)
    for key, logs in acc_logs.items():
        curves = [log.data.set_index("epoch")["test_acc"] for log in logs]
        draw_curve(panels[keys[key]], trial_stats(curves), styles[key], f"{styles[key].label} (n={len(logs)})",
                   options.band, len(logs))
        last_epoch[keys[key]] = max(last_epoch[keys[key]], *(int(c.index.max()) for c in curves))
    for key, ax in panels.items():
        _epoch_axis(ax, last_epoch[key])
        _percent_axis(ax)
    many = max(last_epoch.values()) > MARKER_MAX_POINTS
    _legend(fig, {key: len(logs) for key, logs in acc_logs.items()}, styles, f"shaded: {BANDS[options.band]}",
            markers=not many)
    return fig


def plot_accuracy_vs_memory(table: pd.DataFrame, styles: dict):
    """Mean best test accuracy (error bar: std over trials) against weight KiB, a point per experiment.

    table: results.accuracy_table's rows with an "experiment" column (the key of styles).
    """
    rows = table.dropna(subset=["weight_kib"])
    if rows.empty:
        return _warn("no eff_<exp>_t<k>.csv log with weight_kib; accuracy vs memory not drawn")
    if rows.groupby("dataset").weight_kib.nunique().max() < 2:
        return _warn(f"one weight memory per dataset ({', '.join(sorted(rows.dataset.unique()))}): "
                     "accuracy vs memory not drawn")
    fig, panels, _ = _panels([(d,) for d in sorted(rows.dataset.unique())], "weight memory (KiB, log scale)",
                             "best test accuracy (%)")
    for (dataset,), ax in panels.items():
        here = rows[rows.dataset == dataset]
        here = here.assign(order=[legend_order(styles[key]) for key in here.experiment]).sort_values("order")
        for row, x in zip(here.itertuples(), dodge(here.weight_kib)):
            style = styles[row.experiment]
            yerr = None if pd.isna(row.test_acc_std) else row.test_acc_std
            ax.errorbar(x, row.test_acc_mean, yerr=yerr, fmt=style.marker, ms=6, capsize=3, color=style.color,
                        label=f"{style.label} (n={row.n_trials})")
        ticks = sorted(here.weight_kib.unique())
        ax.set_xscale("log")
        # A tick at each precision's memory, to 3 significant digits (9.47, not 9.47266).
        ax.set_xticks(ticks, [_plain_tick(kib, digits=3) for kib in ticks], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_xlim(min(ticks) / 1.5, max(ticks) * 1.5)
        ax.grid(False, axis="x")
        _percent_axis(ax)
    _legend(fig, dict(zip(rows.experiment, rows.n_trials)), styles, "bars: ±1 std", markers=True, lines=False)
    return fig


def dodge(xs: pd.Series) -> list[float]:
    """xs, where several are equal spread apart by factors of 1.07 on the log axis, so no point hides another."""
    position, count = defaultdict(int), xs.value_counts()
    spread = []
    for x in xs:
        spread.append(x * 1.07 ** (position[x] - (count[x] - 1) / 2))
        position[x] += 1
    return spread


def _plain_tick(value: float, _position=None, digits: int = 4) -> str:
    # "0.015", not "0.0150" or an offset: a few significant digits, no trailing zeros.
    return f"{value:.{digits}g}"


def _epoch_axis(ax, last_epoch: int) -> None:
    # Whole-epoch ticks, and a short run gets half an epoch of room either side (one epoch is one point).
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True, min_n_ticks=1))
    if last_epoch <= MARKER_MAX_POINTS:
        ax.set_xlim(0.5, last_epoch + 0.5)


def _percent_axis(ax) -> None:
    # Accuracies are percentages: the axis never runs past 100, and ticks are plain numbers.
    low, high = ax.get_ylim()
    ax.set_ylim(low, min(high, 100.0))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(_plain_tick))


def _panels(keys: list[tuple], xlabel: str, ylabel: str, lr_row: bool = False):
    """(figure, {key: data axes}, {key: learning-rate axes}) with up to 3 panels a row, room for a legend."""
    import matplotlib.pyplot as plt  # here, so the table CLI never loads pyplot and the plot CLI picks a backend first

    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    heights = [PANEL_SIZE[1], LR_HEIGHT] * nrows if lr_row else [PANEL_SIZE[1]] * nrows
    size = (PANEL_SIZE[0] * ncols, sum(heights))  # the legend goes outside: save_figure's tight box adds it
    fig, axes = plt.subplots(len(heights), ncols, figsize=size, squeeze=False, layout="constrained",
                             gridspec_kw={"height_ratios": heights})
    data_axes = axes[::2] if lr_row else axes
    for ax in list(data_axes.flat[len(keys):]) + (list(axes[1::2].flat[len(keys):]) if lr_row else []):
        fig.delaxes(ax)
    panels, lr_panels = {}, {}
    for i, key in enumerate(keys):
        ax, first = data_axes.flat[i], i % ncols == 0  # the y axes are named once a row, at its left
        ax.set(title=", ".join(map(str, key[:1] + key[2:])), xlabel="" if lr_row else xlabel,
               ylabel=ylabel if first else "")
        panels[key] = ax
        if lr_row:
            lr_ax = axes[1::2].flat[i]
            lr_ax.sharex(ax)
            ax.tick_params(labelbottom=False)
            lr_ax.set(xlabel=xlabel, ylabel="learning\nrate" if first else "")
            lr_panels[key] = lr_ax
    fig.align_ylabels()
    return fig, panels, lr_panels


def _legend(fig, n_trials: dict[str, int], styles: dict, spread: str, markers: bool, lines: bool = True) -> None:
    """One legend outside the panels (right of one panel, below several): an entry per experiment, by schedule."""
    from matplotlib.lines import Line2D

    counts = set(n_trials.values())
    entries = {}
    for key in sorted(n_trials, key=lambda k: legend_order(styles[k])):
        style = styles[key]
        label = style.label if len(counts) == 1 else f"{style.label} (n={n_trials[key]})"
        entries.setdefault(label, Line2D([], [], color=style.color, ls=style.linestyle if lines else "none",
                                         marker=style.marker if markers else None))
    if counts == {1}:
        title = "one trial each"
    else:
        over = f"{counts.pop()} trials" if len(counts) == 1 else "trials"
        title = f"mean over {over}, {spread}"
    if len(fig.axes) > 1 and len({ax.get_subplotspec().colspan.start for ax in fig.axes}) > 1:
        # Below, a column per schedule where they fit: entries are sorted by schedule and fill columns top down.
        fits = max(1, int(fig.get_figwidth() // (0.062 * max(map(len, entries)) + 0.8)))
        columns = len({styles[key].schedule for key in n_trials})
        ncols = columns if columns <= fits and len(entries) % columns == 0 else min(fits, len(entries))
        # Anchored outside the layout: save_figure's tight box takes in the legend however long it is.
        fig.legend(entries.values(), entries.keys(), loc="upper center", bbox_to_anchor=(0.5, 0.0), frameon=False,
                   title=title, ncols=ncols)
    else:
        fig.legend(entries.values(), entries.keys(), loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                   title=title.replace(", ", ",\n"), alignment="left")


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


def save_figure(fig, out_dir: str | Path, stem: str, dpi: int = DEFAULT_DPI) -> list[Path]:
    """Save fig atomically as <out_dir>/<stem>.png (at dpi) and .pdf, creating out_dir; UserError if impossible."""
    from qsnn.runs.runlog import atomic_path  # imports torch: only when writing

    out_dir = Path(out_dir)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("png", "pdf")]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for path in paths:
            with atomic_path(path) as tmp:
                with matplotlib.rc_context(STYLE):  # tick labels are made when drawing: in the figures' style
                    fig.savefig(tmp, dpi=dpi, bbox_inches="tight", pad_inches=0.05)  # all of a long legend
    except OSError as exc:
        raise UserError(f"cannot write figures to {out_dir}: {results.os_reason(exc)}") from None
    return paths


# ---------------------------------------------------------------- command line


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    parser = results.ArgumentParser(prog="plot_results.py", description=__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", nargs="?", type=Path, default=REPO_ROOT, metavar="ROOT",
                        help="folder searched recursively for run folders (default: the repository, %(default)s)")
    parser.add_argument("--out", type=Path, default=Path("figures"),
                        help="folder for the PNG and PDF files, created if needed (default: ./figures)")
    parser.add_argument("--window", type=positive_int, default=DEFAULT_WINDOW, metavar="N",
                        help="span of the loss's exponential moving average (a running mean), in iterations; "
                             "1: not smoothed (default: %(default)s)")
    parser.add_argument("--skip-iterations", type=non_negative_int, default=0, metavar="N",
                        help="leave the first N iterations out of the loss curves (default: %(default)s)")
    parser.add_argument("--logy", action="store_true", help="draw the loss on a logarithmic axis")
    parser.add_argument("--band", choices=tuple(BANDS), default="std",
                        help="shaded band around the mean of the trials: ±1 sample std or their min-max "
                             "(default: %(default)s)")
    parser.add_argument("--panels", choices=PANEL_CHOICES, default="dataset",
                        help="a panel per dataset, or per dataset and precision, or per dataset and number of "
                             "time steps T (default: %(default)s)")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="plot only these datasets, e.g. mnist fashion_mnist (default: all)")
    parser.add_argument("--lr", action="store_true",
                        help="add a row under the loss panels with each schedule's learning rate (first trial)")
    parser.add_argument("--memory", action="store_true",
                        help="also draw best test accuracy against weight memory (KiB, from eff_<exp>_t<k>.csv)")
    parser.add_argument("--per-folder", action="store_true",
                        help="one set of figures per subfolder of ROOT, named after it (results/paper -> "
                             "paper_loss_curves.png)")
    parser.add_argument("--prefix", default="", help="put this in front of every file name, e.g. study_")
    parser.add_argument("--skip-unfinished", action="store_true",
                        help="leave out trials whose status.json does not say finished (e.g. still running)")
    parser.add_argument("--dpi", type=positive_int, default=DEFAULT_DPI,
                        help="resolution of the PNG files (default: %(default)s)")
    parser.add_argument("--include-tuning", action="store_true", help="also plot tune.py's trial folders")
    parser.add_argument("--show", action="store_true", help="also open the figures in a window")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    """The drawing options of the command line."""
    return Options(window=args.window, skip=args.skip_iterations, logy=args.logy, band=args.band, panels=args.panels)


def find_plot_runs(args: argparse.Namespace) -> list[Run]:
    """The runs to plot: found under ROOT, of the chosen datasets, without unfinished trials if asked."""
    with warnings.catch_warnings():
        if args.skip_unfinished:  # those trials are left out below, with a warning that says so
            warnings.filterwarnings("ignore", r".*; its data so far is included$", ResultsWarning)
        runs = results.find_runs(args.root, args.include_tuning)
    runs = select_datasets(runs, args.datasets)
    if args.skip_unfinished and not (runs := drop_unfinished(runs)):
        raise UserError(f"no finished trial under {args.root}; nothing to plot")
    return runs


def make_and_save(args: argparse.Namespace) -> list[Path]:
    """Draw the figures for args, save them, show them if asked; return the written files."""
    import matplotlib.pyplot as plt

    if args.out.exists() and not args.out.is_dir():
        raise UserError(f"--out {args.out} is a file; give a folder for the figures")
    sets = figure_sets(find_plot_runs(args), args.root, args.per_folder, args.prefix)
    paths, figures = [], []
    for prefix, runs in sets:
        try:
            drawn = make_figures(runs, lr=args.lr, memory=args.memory, options=options_from(args))
        except UserError as exc:
            if len(sets) == 1:
                raise
            _warn(f"no figures for {prefix.rstrip('_') or 'the runs directly in ROOT'}: {exc}")
            continue
        paths += [path for stem, fig in drawn.items() for path in save_figure(fig, args.out, prefix + stem, args.dpi)]
        figures += drawn.values()
    if not figures:
        raise UserError("no readable loss or acc log in any experiment folder; nothing to plot")
    if args.show:
        plt.show()
    for fig in figures:
        plt.close(fig)
    return paths


def main(argv=None) -> int:
    """Write the figures; 0 on success, UserError's exit code otherwise."""
    try:
        args = parse_args(argv)
        if not args.show:
            matplotlib.use("Agg")
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
