"""How each experiment is named and drawn, the same in every figure: its label, colour, line style and marker.

Colour is the learning-rate schedule and line style (and marker) the weight precision, from fixed tables, so an
experiment looks the same in every figure. Labels use the study's own words where the folder name says them
(fashion_mnist_T10_4bit_periodic, ..._fp32_monotone_s1: "4-bit periodic"), else the config's scheduler and its
settings in epochs ("4-bit cosine, period 2 epochs").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, replace

from qsnn.analysis import results
from qsnn.analysis.results import Run, TrialLog, collect_logs
from qsnn.runs.schema import EPOCHS_TWINS

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
        # The schedule text, the precision and (where T varies) a "T=" part say these; the epoch axis the budget.
        if key not in results.ALL_SCHEDULE_KEYS and key not in STEP_KEYS and key not in results.BUDGET_KEYS \
                and key != "num_bits":
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
