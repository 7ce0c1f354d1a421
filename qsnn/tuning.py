"""Hyperparameter search with Optuna over a dataset's run.py config (the library behind tune.py).

Each Optuna trial trains one network with `run_trial` for a small epoch budget, scored by its best
accuracy on a validation split carved out of the training set (never the test set). Every epoch's
validation accuracy is reported so a median pruner can stop poor trials early. The study lives in an
SQLAlchemy database (SQLite by default), so a rerun continues it and workers on several machines can
share one. `--n-trials N` means "until the study holds N finished (complete or pruned) trials";
trials running in other workers count too, so workers do not overshoot.
"""
import argparse
import json
import logging
import os
import re
import runpy
import shlex
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .config import NULLABLE, REPO_ROOT, check_type, coerce, parse_args, resolve_path, validate
from . import runlog
from .errors import UserError

DATASETS = ("mnist", "fashion_mnist", "dvs128_gesture")
# The keys the paper tuned; each range holds the published values of all three datasets.
DEFAULT_RANGES = {"lr": "1e-4:1e-2:log", "beta": "0.5:0.999", "threshold": "0.1:5:log",
                  "slope": "1:25:log", "dropout": "0:0.5"}
# Keys tune.py sets for every trial itself, so --set/--range on them would be silently lost.
RESERVED = {"epochs": "use --epochs", "val_split": "use --val-split",
            "num_trials": "each Optuna trial is one training run",
            "exp_name": "trial folders are named trial_<number>"}
# Keys that change the batches make_loaders builds; trials that agree on them share loaders.
LOADER_KEYS = ("dataset", "data_dir", "num_steps_train", "num_steps_test", "val_split", "seed",
               "batch_size", "test_batch_size", "tensor_data", "num_workers")
# Keys that change where or how fast a run goes, not its result: left out of the --set reminder.
RUN_ONLY_KEYS = {"output_dir", "data_dir", "device", "num_workers", "tensor_data", "time_chunk",
                 "test_batch_size", "execution"}
HEARTBEAT_S = 60  # a worker killed hard leaves a RUNNING trial; after 3 missed beats it is failed

EPILOG = """\
examples:
  python tune.py mnist --demo --n-trials 6 --epochs 3 --set num_steps=10   # offline, minutes
  python tune.py mnist --n-trials 50 --epochs 10 --range lr=1e-4:1e-2:log --range beta=0.5:0.999
  python tune.py mnist --best                       # print the best trial, write its config
  python mnist/run.py --config runs/tune/mnist_best.json    # train it with the full protocol

several machines: start the same command on each with one shared database, e.g.
  --storage postgresql://user:password@dbhost/qsnn  (needs psycopg2)
Ctrl-C marks the running trial failed and keeps the finished ones; rerun the command to continue.
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as a UserError (one line, exit code 2) instead of usage text."""

    def error(self, message):
        raise UserError(f"{message} (see python tune.py --help)")


def build_parser():
    """The tune.py command line."""
    p = _Parser(prog="tune.py", description="Search the QSNN hyperparameters of a dataset's run.py config with\n"
                "Optuna (TPE sampler, median pruner), scored on a validation split of the training set.",
                epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", metavar="DATASET", help=f"whose run.py config to tune: {' | '.join(DATASETS)}")
    p.add_argument("--demo", action="store_true", help="tune mnist's offline demo preset (scikit-learn digits)")
    p.add_argument("--n-trials", type=int, default=50, metavar="N",
                   help="stop once the study holds N complete + pruned trials, counting earlier runs and "
                        "other workers (default 50)")
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="epoch budget of each trial (default 10)")
    p.add_argument("--val-split", type=float, default=0.1, metavar="F",
                   help="fraction of the training set held out to score trials; must be > 0 (default 0.1)")
    p.add_argument("--range", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                   help="search KEY in [LOW, HIGH] (log scale with :log), or among choices with KEY=A,B,C; "
                        "repeatable. Default: " + " ".join(f"{k}={v}" for k, v in DEFAULT_RANGES.items()))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key for every trial (e.g. num_steps=10); a tuned key set here is "
                        "fixed instead. Search-only: not written to the best config. Repeatable")
    p.add_argument("--study", metavar="NAME", help="study name (default DATASET, or mnist_demo with --demo)")
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy database URL shared by all workers "
                   "(default sqlite:///<output_dir>/tune/<study>.db under the repository)")
    p.add_argument("--sampler-seed", type=int, metavar="N",
                   help="seed the TPE sampler (reproducible single-worker runs; leave unset for several workers)")
    p.add_argument("--no-prune", action="store_true", help="train every trial for its whole epoch budget")
    p.add_argument("--prune-startup", type=int, default=3, metavar="N",
                   help="complete trials before pruning starts (default 3)")
    p.add_argument("--prune-from", type=int, default=1, metavar="EPOCH",
                   help="first epoch after which a trial may be pruned (default 1)")
    p.add_argument("--best", action="store_true", help="only read the study: print its best trial, write its config")
    p.add_argument("--out", metavar="FILE", help="where to write the best config "
                   "(default <output_dir>/tune/<study>_best.json under the repository)")
    return p


def check_args(args):
    """Raise UserError for values argparse cannot check by type alone."""
    if args.dataset not in DATASETS:
        raise UserError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(DATASETS)}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("run tune.py without torchrun: each rank would start its own trials; "
                        "start one tune.py per GPU (CUDA_VISIBLE_DEVICES) with a shared --storage instead")
    if args.demo and args.dataset != "mnist":
        raise UserError("--demo is the offline preset of mnist only; use: python tune.py mnist --demo")
    limits = [("--n-trials", args.n_trials, 1), ("--epochs", args.epochs, 1),
              ("--prune-startup", args.prune_startup, 0), ("--prune-from", args.prune_from, 1)]
    for flag, value, low in limits:
        if value < low:
            raise UserError(f"{flag} {value} is not allowed; must be >= {low}")
    if not 0 < args.val_split < 1:
        raise UserError(f"--val-split {args.val_split} is not allowed; must be within (0, 1): "
                        "trials are scored on held-out training data, never on the test set")
    args.study = args.study or (f"{args.dataset}_demo" if args.demo else args.dataset)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.study):
        raise UserError(f"--study {args.study!r}: use letters, digits, '_', '.' and '-' (it names files)")


# ---------------------------------------------------------------- config and search space


def load_run_py(dataset, demo):
    """(defaults, demo preset or None) of <dataset>/run.py."""
    namespace = runpy.run_path(str(REPO_ROOT / dataset / "run.py"))
    return namespace["config"], namespace.get("demo") if demo else None


def base_config(defaults, preset, sets):
    """(run.py config with the demo preset, the same with --set overrides, {key: value} of those)."""
    overrides = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set num_steps=10")
        if key not in defaults:
            raise UserError(f"--set {item!r}: unknown config key {key!r}; valid keys: {', '.join(defaults)}")
        if key in RESERVED:
            raise UserError(f"--set {item!r}: tune.py sets {key} itself; {RESERVED[key]}")
        overrides[key] = text
    demo_flag = ["--demo"] if preset is not None else []
    run_py_cfg, _ = parse_args(defaults, demo_flag, preset)
    cfg, _ = parse_args(defaults, demo_flag + [f"--{k}={v}" for k, v in overrides.items()], preset)
    return run_py_cfg, cfg, {k: cfg[k] for k in overrides}


@dataclass
class Param:
    """One searched key: a float/int range (optionally log-scaled) or a list of choices."""
    key: str
    spec: str
    kind: str  # float | int | categorical
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial):
        """Ask the Optuna trial for this key's value."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.key, self.choices)
        suggest = trial.suggest_int if self.kind == "int" else trial.suggest_float
        return suggest(self.key, self.low, self.high, log=self.log)

    def ends(self):
        """The extreme values a trial can get (checked against the config's rules up front)."""
        return self.choices if self.kind == "categorical" else (self.low, self.high)

    def describe(self):
        """E.g. 'lr in [0.0001, 0.01] log' or 'scheduler in {cosine, cyclic}'."""
        if self.kind == "categorical":
            return f"{self.key} in {{{', '.join(map(str, self.choices))}}}"
        return f"{self.key} in [{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


def parse_range(text, defaults):
    """A Param from 'KEY=LOW:HIGH[:log]' or 'KEY=A,B,C', checked against the run.py defaults."""
    key, sep, spec = text.partition("=")
    if not sep or not spec:
        raise UserError(f"--range {text!r}: expected KEY=LOW:HIGH[:log] or KEY=A,B,C")
    if key not in defaults:
        raise UserError(f"--range {text!r}: unknown config key {key!r}; valid keys: {', '.join(defaults)}")
    if key in RESERVED or key == "seed":
        raise UserError(f"--range {text!r}: {key} cannot be searched")
    if "," in spec:
        return Param(key, text, "categorical", choices=tuple(coerce(key, c, defaults[key]) for c in spec.split(",")))
    wanted = NULLABLE.get(key, type(defaults[key]))
    if wanted not in (int, float):
        raise UserError(f"--range {text!r}: {key} is not numeric; give choices instead, e.g. {key}=A,B")
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
        raise UserError(f"--range {text!r}: expected {key}=LOW:HIGH or {key}=LOW:HIGH:log")
    low, high = (parse_number(text, p, wanted) for p in parts[:2])
    if not low < high:
        raise UserError(f"--range {text!r}: LOW must be below HIGH")
    if len(parts) == 3 and low <= 0:
        raise UserError(f"--range {text!r}: a log range needs LOW > 0")
    return Param(key, text, wanted.__name__, low, high, len(parts) == 3)


def parse_number(text, part, wanted):
    """One end of a range as a float, or an int for integer keys; UserError otherwise."""
    try:
        value = float(part)
    except ValueError:
        raise UserError(f"--range {text!r}: {part!r} is not a number") from None
    if wanted is int:
        if not value.is_integer():
            raise UserError(f"--range {text!r}: this key is an integer, {part!r} is not")
        return int(value)
    return value


def search_space(defaults, ranges, fixed):
    """{key: Param}: the default ranges less keys fixed with --set, then every --range."""
    space = {k: parse_range(f"{k}={v}", defaults) for k, v in DEFAULT_RANGES.items()
             if k in defaults and k not in fixed}
    for text in ranges:
        param = parse_range(text, defaults)
        if param.key in fixed:
            raise UserError(f"--range {text!r}: {param.key} is also fixed with --set; give one of the two")
        space[param.key] = param
    if not space:
        raise UserError("nothing to search: every tuned key is fixed with --set; add a --range")
    return space


def check_ranges(cfg, space):
    """Validate the config with each key at each end of its range, so no trial can be invalid."""
    for param in space.values():
        for value in param.ends():
            try:
                validate({**cfg, param.key: value})
            except UserError as e:
                raise UserError(f"--range {param.spec!r}: {e}") from None


# ---------------------------------------------------------------- storage and study


def sqlite_path(url):
    """The file of an sqlite:/// URL (relative ones: from the working directory), else None."""
    if not url.startswith("sqlite:///"):
        return None
    path = url[len("sqlite:///"):].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def shown_url(url):
    """The URL with any password hidden, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by open_storage; show it as given here
        return url


def open_storage(url, create):
    """An Optuna RDBStorage for url; with create False a missing SQLite file is an error, not created."""
    import optuna
    import sqlalchemy.exc

    path = sqlite_path(url)
    if path is not None and not create and not path.exists():
        raise UserError(f"no study database at {path}; run tune.py without --best first, or give --storage")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    # SQLite: wait for a busy database instead of failing ("database is locked") with several workers.
    engine_kwargs = {"connect_args": {"timeout": 30}} if path is not None else {"pool_pre_ping": True}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                                  heartbeat_interval=HEARTBEAT_S, grace_period=3 * HEARTBEAT_S)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError) as e:
            # Workers starting together race to create the tables (IntegrityError); the loser retries.
            if attempt == 4:
                raise UserError(f"cannot open --storage {shown_url(url)}: {first_line(e)}") from None
            time.sleep(1 + attempt)
        except (ImportError, ValueError, sqlalchemy.exc.SQLAlchemyError) as e:
            raise UserError(f"cannot open --storage {shown_url(url)}: {first_line(e)}") from None


def first_line(error):
    """The first line of an exception's message (SQLAlchemy appends background links)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def open_study(storage, args):
    """Create or load the study (maximising validation accuracy) with this worker's sampler and pruner."""
    import optuna

    pruner = (optuna.pruners.NopPruner() if args.no_prune else
              optuna.pruners.MedianPruner(n_startup_trials=args.prune_startup, n_warmup_steps=args.prune_from))
    study = optuna.create_study(study_name=args.study, storage=storage, direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=args.sampler_seed),
                                pruner=pruner, load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UserError(f"study {args.study!r} minimises; it was not made by tune.py, choose another --study")
    return study


def load_existing_study(storage, name):
    """The named study, or a UserError listing the studies the storage holds."""
    import optuna

    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise UserError(f"no study {name!r} in this storage; it holds: {', '.join(names) or 'none'}") from None


def check_study_matches(study, dataset, demo, record=True):
    """Refuse to mix datasets in one study; with record, note the dataset on the study's first use."""
    attrs = study.user_attrs
    if "dataset" not in attrs:
        if not record:
            return
        study.set_user_attr("dataset", dataset)
        study.set_user_attr("demo", demo)
    elif (attrs["dataset"], attrs.get("demo", False)) != (dataset, demo):
        was = attrs["dataset"] + (" --demo" if attrs.get("demo") else "")
        raise UserError(f"study {study.study_name!r} tunes {was}; give that dataset, or another --study")


def trial_counts(study):
    """Counter of trial state names (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def finished(counts):
    """Trials that count towards --n-trials."""
    return counts["COMPLETE"] + counts["PRUNED"]


# ---------------------------------------------------------------- one trial


class Objective:
    """One Optuna trial: sample the space, train with run_trial on the validation split, report each epoch."""

    def __init__(self, base, space, device, received):
        self.base, self.space, self.device, self.received = base, space, device, received
        self._cached = (None, None, None)  # (loader key, loaders, generator)

    def __call__(self, trial):
        params = {key: param.suggest(trial) for key, param in self.space.items()}
        cfg = {**self.base, **params, "exp_name": f"trial_{trial.number}"}
        run_dir = self.prepare_folder(cfg, trial)
        print(f"optuna trial {trial.number}: " + ", ".join(f"{k}={format_value(v)}" for k, v in params.items())
              + f" (logs in {run_dir})", flush=True)
        return self.train(cfg, trial, run_dir)

    def prepare_folder(self, cfg, trial):
        """Create the trial's run folder with its config.json; remember it on the trial."""
        from . import runlog

        run_dir = runlog.run_folder(cfg)
        if run_dir.exists() and any(run_dir.iterdir()):
            # Happens when a study is recreated under the same name: its numbering starts again.
            print(f"warning: {run_dir} exists; its logs are replaced by trial {trial.number}", file=sys.stderr)
        run_dir.mkdir(parents=True, exist_ok=True)
        runlog.write_run_config(run_dir, cfg, self.device)
        trial.set_user_attr("run_dir", str(run_dir))
        return run_dir

    def loaders(self, cfg):
        """Loaders and their shuffling generator, rebuilt only when a batching key changes."""
        import torch

        from .data import make_loaders

        key = tuple(cfg.get(k) for k in LOADER_KEYS)
        if self._cached[0] != key:
            generator = torch.Generator()
            self._cached = (key, make_loaders(cfg, self.device, generator), generator)
        return self._cached[1], self._cached[2]

    def train(self, cfg, trial, run_dir):
        """Best validation accuracy of the trial; raises TrialPruned, or Interrupted on a signal."""
        import optuna

        from . import runlog
        from .experiment import Interrupted
        from .train import NonFiniteLoss, StopRequested, run_trial

        def on_epoch(epoch, score):
            trial.report(score, epoch)
            # After the last epoch pruning saves nothing and would only hide a complete result.
            if epoch < cfg["epochs"] and trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {score:.2f}% after epoch {epoch} "
                                         "is below the median of earlier trials")

        loaders, generator = self.loaders(cfg)
        try:
            # k=0 for every trial: all see the same seed, so they differ only by their parameters.
            state = run_trial(cfg, 0, loaders, generator, run_dir, self.device, lambda: bool(self.received),
                              on_epoch=on_epoch)
        except optuna.TrialPruned as e:
            runlog.update_status(run_dir, 0, state="finished", reason="pruned", detail=str(e))
            raise
        except NonFiniteLoss as e:
            # A diverging setting is a bad one, not a broken study: prune it so TPE learns to avoid it.
            raise optuna.TrialPruned(str(e)) from None
        except StopRequested:
            raise Interrupted(interrupt_message(self.received[0], trial.number)) from None
        trial.set_user_attr("best_epoch", state.best_epoch)
        return state.best_score


def format_value(value):
    """Short display of a parameter value."""
    return f"{value:.4g}" if isinstance(value, float) else repr(value)


def interrupt_message(signal_name, trial_number=None):
    """What a stopped worker says: what is kept, and how to continue."""
    where = f"in Optuna trial {trial_number} (marked failed)" if trial_number is not None else "between trials"
    return (f"stopped by {signal_name} {where}; finished trials are kept in the study. "
            "Rerun the same command to continue it.")


# ---------------------------------------------------------------- the search and its result


class _NoInterruptTraceback(logging.Filter):
    """Optuna logs a traceback for a trial that raised; for a Ctrl-C our one-line message suffices."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, (KeyboardInterrupt, UserError)):
            record.exc_info, record.exc_text = None, None
        return True


@contextmanager
def quiet_interrupt_tracebacks():
    """Install _NoInterruptTraceback on the logger of Optuna's optimize loop while searching."""
    logger, quiet = logging.getLogger("optuna.study._optimize"), _NoInterruptTraceback()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def optimize(study, objective, n_trials, received):
    """Run one trial at a time until the study holds n_trials finished ones (others' running ones count)."""
    import optuna

    from .experiment import Interrupted

    while not received:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # trials of hard-killed workers stop counting
        counts = trial_counts(study)
        if finished(counts) + counts["RUNNING"] >= n_trials:
            return
        study.optimize(objective, n_trials=1, gc_after_trial=False)
    raise Interrupted(interrupt_message(received[0]))


def best_config(run_py_cfg, params):
    """run.py's own config (full protocol, val_split as in run.py) with the tuned values put in."""
    cfg = dict(run_py_cfg)
    for key, value in params.items():
        cfg[key] = check_type(key, value, run_py_cfg[key])
    return cfg


def write_json(path, data):
    """Write data as indented JSON, replacing the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    runlog.write_text(path, json.dumps(data, indent=2) + "\n")


def report(study, url, run_py_cfg, out, overrides, run_py):
    """Print the study's counts and best trial; write the best config JSON. Returns the best trial or None."""
    counts = trial_counts(study)
    print(f"study {study.study_name} ({shown_url(url)}): {sum(counts.values())} trials: "
          f"{counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed, "
          f"{counts['RUNNING']} running")
    if not counts["COMPLETE"]:
        print("no complete trial yet: nothing to report")
        return None
    best = study.best_trial
    epoch = f" at epoch {best.user_attrs['best_epoch']}" if "best_epoch" in best.user_attrs else ""
    print(f"best trial {best.number}: validation accuracy {best.value:.2f}%{epoch}"
          + (f"; logs in {best.user_attrs['run_dir']}" if "run_dir" in best.user_attrs else ""))
    for key, value in best.params.items():
        print(f"  {key} = {value!r}")
    write_json(out, best_config(run_py_cfg, best.params))
    print(f"best config written to {out}; train it with the full protocol:\n  python {run_py} --config {out}")
    if counts["RUNNING"]:
        print(f"{counts['RUNNING']} trial(s) still running elsewhere: run with --best when they finish")
    kept_out = {k: v for k, v in overrides.items() if k not in RUN_ONLY_KEYS}
    if kept_out:
        shown = " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in kept_out.items())
        print(f"(search-only --set values are not in that file; add them if the final run should use them: {shown})")
    return best


# ---------------------------------------------------------------- entry point


def prepare(args):
    """Everything both modes need: (run.py config, trial base config, space, overrides, storage URL, out)."""
    defaults, preset = load_run_py(args.dataset, args.demo)
    if args.demo and preset is None:
        raise UserError(f"{args.dataset}/run.py has no demo preset")
    run_py_cfg, cfg, overrides = base_config(defaults, preset, args.set)
    space = search_space(defaults, args.range, set(overrides))
    tune_root = resolve_path(cfg["output_dir"]) / "tune"
    trial_base = {**cfg, "epochs": args.epochs, "val_split": args.val_split, "num_trials": 1,
                  "output_dir": str(tune_root / args.study)}
    url = args.storage or f"sqlite:///{tune_root / (args.study + '.db')}"
    out = Path(args.out) if args.out else tune_root / f"{args.study}_best.json"
    return run_py_cfg, trial_base, space, overrides, url, out


def run_search(args, trial_base, space, overrides, url):
    """Validate, open the study, run trials until it holds --n-trials finished ones; returns the study."""
    from .experiment import resolve_device, stop_on_signals
    from .memory import keep_freed_memory

    validate(trial_base)
    check_ranges(trial_base, space)
    study = open_study(open_storage(url, create=True), args)
    check_study_matches(study, args.dataset, args.demo)
    study.set_user_attr("search_space", [p.spec for p in space.values()])
    study.set_user_attr("overrides", overrides)  # for --best's note on what the best config leaves out
    counts = trial_counts(study)
    print(f"study {args.study} ({shown_url(url)}): {finished(counts)} of {args.n_trials} trials finished, "
          f"{counts['RUNNING']} running elsewhere; searching " + ", ".join(p.describe() for p in space.values()))
    device = resolve_device(trial_base["device"])
    keep_freed_memory()  # as training does (see qsnn/memory.py)
    with stop_on_signals() as received, quiet_interrupt_tracebacks():
        optimize(study, Objective(trial_base, space, device, received), args.n_trials, received)
    return study


def main(argv=None):
    """tune.py: returns the exit code (0, 2 for a user mistake, 130 when interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        run_py_cfg, trial_base, space, overrides, url, out = prepare(args)
        if args.best:
            study = load_existing_study(open_storage(url, create=False), args.study)
            check_study_matches(study, args.dataset, args.demo, record=False)
            overrides = study.user_attrs.get("overrides", {})
        else:
            study = run_search(args, trial_base, space, overrides, url)
        report(study, url, run_py_cfg, out, overrides, f"{args.dataset}/run.py")
    except UserError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: aborted by a second Ctrl-C; the running trial is marked failed, finished trials are "
              "kept in the study. Rerun the same command to continue it.", file=sys.stderr)
        return 130
    return 0
