"""Hyperparameter search with Optuna over a dataset's run.py config (the library behind tune.py's command line).

Each trial trains one network, scored by its best accuracy on a validation split of the training set
(never the test set). The study lives in a database, so reruns and workers on several machines share it.
"""
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote, urlsplit

from qsnn.runs import runlog, schema
from qsnn.runs.config import check_type, coerce, parse_args, run_py_defaults, type_text, validate, value_type
from qsnn.files import write_text
from qsnn.errors import MESSAGE_VALUE_CHARS, UserError, shorten

# The keys the paper tuned; each range holds the published values of all three datasets.
DEFAULT_RANGES = {"lr": "1e-4:1e-2:log", "beta": "0.5:0.999", "threshold": "0.1:5:log",
                  "slope": "1:25:log", "dropout": "0:0.5"}
# Keys tune.py sets for every trial itself (--set/--range on them would be silently lost), with what to use
# instead; keys that change the batches (trials that agree on them share loaders); keys that change where or
# how fast a run goes, not its result (left out of the --set reminder). All from qsnn/runs/schema.py.
RESERVED = schema.TUNE_SETS
LOADER_KEYS = schema.LOADER_KEYS
RUN_ONLY_KEYS = schema.RUN_ONLY_KEYS
# What counts towards --n-trials: others' running trials too, so workers overshoot only if they finish together.
COUNTED = ("COMPLETE", "PRUNED", "RUNNING")
HEARTBEAT_S = 60  # a worker killed hard leaves a RUNNING trial; Optuna fails it after 3 missed beats
# The pip package of a database driver module SQLAlchemy may fail to import, where the names differ.
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "psycopg": "'psycopg[binary]'", "MySQLdb": "mysqlclient"}
KEPT = "finished trials are kept in the study. Rerun the same command to continue it."
# SQLite URI filenames (sqlite:///file:path?mode=ro&uri=true): query values that open without writing.
READ_ONLY_URI = {"mode": ("ro",), "immutable": ("1", "true", "yes")}
LONG_TEXT_CHARS = 4 * MESSAGE_VALUE_CHARS  # paths, URLs and drivers' reasons in messages: cut beyond this


def brief(text):
    """text as is up to a long path's length, else cut by shorten (a URL or a driver's reason can be any length)."""
    return text if len(text) <= LONG_TEXT_CHARS else shorten(text, LONG_TEXT_CHARS)


def base_config(defaults, preset, sets):
    """(run.py config with the demo preset, the same with --set overrides, {key: value} of those)."""
    defaults, overrides = run_py_defaults(defaults, preset), {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--set {shorten(item)}: expected KEY=VALUE, e.g. --set num_steps=10")
        if key in RESERVED:
            raise UserError(f"--set {shorten(item)}: tune.py sets {key} itself; {RESERVED[key]}")
        if key not in defaults:
            raise UserError(f"--set {shorten(item)}: unknown config key; valid keys: {', '.join(defaults)}")
        try:
            typed_value(key, text, defaults[key])
        except UserError as e:
            raise UserError(f"--set {shorten(item)}: {e}, e.g. --set {key}={defaults[key]}") from None
        overrides[key] = text
    demo_flag = ["--demo"] if preset is not None else []
    run_py_cfg, _ = parse_args(defaults, demo_flag, preset)
    cfg, _ = parse_args(defaults, demo_flag + [f"--{k}={v}" for k, v in overrides.items()], preset)
    return run_py_cfg, cfg, {k: cfg[k] for k in overrides}


def typed_value(key, text, default):
    """coerce's value of a command-line text for key; its UserError names the type, never the (long) text."""
    try:
        return coerce(key, text, default)
    except UserError:
        raise UserError(f"{key} expects {type_text(key, default)}") from None


def parse_range(text, defaults):
    """(key, Optuna distribution) from 'KEY=LOW:HIGH[:log]' or 'KEY=A,B,C', checked against the defaults."""
    import optuna.distributions as od

    key, _, spec = text.partition("=")
    defaults = run_py_defaults(defaults)
    parts, wanted = spec.split(":"), value_type(key, defaults.get(key))
    try:
        if key not in defaults:
            raise UserError(f"unknown config key; valid keys: {', '.join(defaults)}")  # the key is in --range's text
        if key not in schema.SEARCHABLE_KEYS:
            why = RESERVED.get(key) or f"{schema.SCHEMA[key].role} keys are not searched"
            raise UserError(f"{key} cannot be searched ({why})")
        if "," in spec:
            return key, od.CategoricalDistribution([typed_value(key, c, defaults[key]) for c in spec.split(",")])
        if wanted not in (int, float):
            raise UserError(f"{key} is not numeric; give choices instead, e.g. {key}=A,B")
        if len(parts) not in (2, 3) or parts[2:] not in ([], ["log"]):
            raise UserError("expected KEY=LOW:HIGH, KEY=LOW:HIGH:log or KEY=A,B,C")
        low, high = (typed_value(key, end, defaults[key]) for end in parts[:2])  # ints for integer keys
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise UserError("LOW and HIGH must be finite numbers, LOW below HIGH")
        return key, (od.IntDistribution if wanted is int else od.FloatDistribution)(low, high, log=len(parts) == 3)
    except (UserError, ValueError) as e:  # ValueError: Optuna's, e.g. a log range from 0
        raise UserError(f"--range {shorten(text)}: {e}") from None


def search_space(defaults, ranges, fixed):
    """{key: Optuna distribution}: the default ranges less keys fixed with --set, then every --range."""
    space = dict(parse_range(f"{k}={v}", defaults) for k, v in DEFAULT_RANGES.items() if k not in fixed)
    for text in ranges:
        key, distribution = parse_range(text, defaults)
        if key in fixed:
            raise UserError(f"--range {shorten(text)}: {key} is also fixed with --set; give one of the two")
        space[key] = distribution
    if not space:
        raise UserError("nothing to search: every tuned key is fixed with --set; add a --range")
    return space


def range_text(key, distribution):
    """The --range text of a distribution, e.g. 'lr=0.0001:0.01:log' or 'scheduler=cosine,cyclic'."""
    if hasattr(distribution, "choices"):
        return f"{key}=" + ",".join(map(str, distribution.choices))
    return f"{key}={distribution.low:g}:{distribution.high:g}" + (":log" if distribution.log else "")


def check_ranges(cfg, space):
    """Validate the config with each key at each end of its range, so no trial can be invalid."""
    for key, distribution in space.items():
        for value in getattr(distribution, "choices", None) or (distribution.low, distribution.high):
            try:
                validate({**cfg, key: value})
            except UserError as e:
                raise UserError(f"--range {range_text(key, distribution)!r}: {e}") from None


def suggest(trial, key, distribution):
    """Ask the Optuna trial for key's value from its distribution."""
    if hasattr(distribution, "choices"):
        return trial.suggest_categorical(key, distribution.choices)
    ask = trial.suggest_int if isinstance(distribution.low, int) else trial.suggest_float
    return ask(key, distribution.low, distribution.high, log=distribution.log)


def open_storage(url, create):
    """Optuna's RDBStorage for url, heartbeats on; with create False a missing SQLite file is an error.

    A SQLite file is checked first: present for --best (create False), writable with its folder for a
    search (SQLite writes a journal beside the database), so that a search never starts on a database
    it cannot record trials in. SQLite URI filenames (sqlite:///file:PATH?mode=ro&uri=true) are read
    the same way; their read-only modes serve --best only.
    """
    import optuna
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    shown, parsed = brief(url), None
    try:
        parsed = make_url(url)
        # as written unless it holds a password (rendering would also escape a URI filename's "file:")
        shown = brief(url if parsed.password is None else parsed.render_as_string(hide_password=True))
        database = sqlite_file(parsed, create, shown)
        if database is not None:
            check_sqlite_file(database, create, shown)
        # SQLite: wait for a busy database instead of failing ("database is locked") with several workers.
        engine_kwargs = {"connect_args": {"timeout": 30}} if parsed.get_backend_name() == "sqlite" \
            else {"pool_pre_ping": True}
        for attempt in range(3):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S,
                                                      grace_period=3 * HEARTBEAT_S)
            except sqlalchemy.exc.DBAPIError:
                if attempt == 2:  # before: workers starting on a new database race to create its tables
                    raise
                time.sleep(0.5 + attempt)
    except ImportError as e:
        module = getattr(e.__cause__, "name", None) or "its database driver"
        hint = (", or pip install psycopg2-binary and write postgresql+psycopg2://..."
                if parsed.get_backend_name() == "postgresql" and module != "psycopg2" else "")
        raise UserError(f"cannot open --storage {shown}: the driver {brief(module)} is not installed: "
                        f"pip install {DRIVER_PACKAGES.get(module, brief(module))}{hint}") from None
    except (OSError, ValueError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        raise UserError(f"cannot open --storage {shown}: {storage_reason(e)}") from None


def sqlite_file(parsed, create, shown):
    """The file of a SQLite URL (a URI filename's path included), or None for memory and other databases."""
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    query = {key: value[-1] if isinstance(value, tuple) else value for key, value in parsed.query.items()}
    if query.get("uri", "").lower() not in ("true", "1") or not parsed.database.startswith("file:"):
        return Path(parsed.database)
    if not create and query.get("mode") == "memory":
        raise UserError(f"cannot open --storage {shown}: mode=memory holds no study to read; give the database "
                        "file the search wrote")
    if create and any(query.get(key, "").lower() in values for key, values in READ_ONLY_URI.items()):
        raise UserError(f"cannot open --storage {shown}: it opens the database read-only (mode=ro or immutable=1), "
                        "but a search records its trials there; drop that option (it suits --best only)")
    path = unquote(urlsplit(parsed.database).path)  # file:rel, file:/abs, file:///abs, file://localhost/abs
    return None if query.get("mode") == "memory" or path in ("", ":memory:") else Path(path)


def check_sqlite_file(database, create, shown):
    """Refuse a SQLite file that --best cannot read (absent) or a search cannot write (read-only, or its folder)."""
    if not create:
        if not database.is_file():
            what = "is a folder" if database.is_dir() else "does not exist"
            raise UserError(f"no study database at {brief(str(database))} (it {what}); run without --best first, "
                            "or give --storage")
        return
    if database.is_dir():
        raise UserError(f"cannot open --storage {shown}: {brief(str(database))} is a folder; give a database file, "
                        "e.g. sqlite:///path/study.db")
    database.parent.mkdir(parents=True, exist_ok=True)
    # Real attempts, not permission bits: root ignores those, but not a read-only mount or chattr +i.
    if database.exists():
        try:
            open(database, "r+b").close()  # opened for writing, nothing written
        except OSError as e:
            raise UserError(f"cannot open --storage {shown}: the database file {brief(str(database))} is read-only "
                            f"({e.strerror}), so no trial could be recorded; make it writable or give another "
                            "--storage") from None
    problem = folder_write_problem(database.parent)
    if problem:
        raise UserError(f"cannot open --storage {shown}: its folder {brief(str(database.parent))} {problem}, and "
                        "SQLite writes its journal beside the database; make the folder writable or give another "
                        "--storage")


def folder_write_problem(folder):
    """None if a new file can be created in folder (tried, then removed), else why not, in a few words."""
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write_test_")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        return f"takes no new files ({e.strerror})"
    return None


def check_out_file(out, explicit):
    """Refuse, before any work, a best-config file that could not be written; `explicit`: given as --out."""
    out = Path(out)
    name = f"--out {brief(str(out))}" if explicit else f"the best config's file {brief(str(out))}"
    try:
        if out.is_dir():
            raise UserError(f"{name} is a folder; give the JSON file to write, e.g. "
                            f"--out {brief(str(out / 'best.json'))}")
        if out.exists() and not out.is_file():  # a device or a pipe: the atomic write would replace it
            raise UserError(f"{name} is not a regular file; give a JSON file to write, e.g. --out best.json")
        if out.exists() and not os.access(out, os.W_OK):
            raise UserError(f"{name} is read-only; make it writable or give another --out")
        if not out.parent.is_dir():
            if not explicit:
                return  # tune.py's own folder: report creates it
            what = "is not a folder" if out.parent.exists() else "does not exist"
            raise UserError(f"{name}: its folder {brief(str(out.parent))} {what}; create it first "
                            f"(mkdir -p {brief(str(out.parent))}) or give another --out")
    except OSError as e:  # a name too long for the file system, say
        raise UserError(f"{name}: {e.strerror}; give another --out") from None
    problem = folder_write_problem(out.parent)
    if problem:
        raise UserError(f"{name}: its folder {brief(str(out.parent))} {problem}; give another --out")


def storage_reason(error):
    """Why a database could not be used, in one short line (driver messages can be long or echo the URL)."""
    import sqlalchemy.exc

    if isinstance(error, OSError):
        # a long file name is the --storage value again: it is shown once already
        where = f": {error.filename}" if error.filename and len(str(error.filename)) <= LONG_TEXT_CHARS else ""
        return f"{error.strerror or brief(str(error))}{where}"
    if isinstance(error, sqlalchemy.exc.NoSuchModuleError):  # its message would repeat the URL's dialect
        return "Can't load plugin for its dialect; use sqlite:///..., postgresql+psycopg2://... or mysql://..."
    if isinstance(error, sqlalchemy.exc.ArgumentError):  # its message would repeat the whole URL
        return ("Could not parse SQLAlchemy URL; write dialect+driver://user:password@host/database or "
                "sqlite:///path/study.db")
    cause = root_cause(error)
    text = (str(cause).strip().splitlines() or [type(cause).__name__])[0]  # SQLAlchemy's adds a background link
    if "readonly database" in text or "read-only" in text:
        text += " (the database or its folder is read-only: make them writable or give another --storage)"
    return brief(text)


def root_cause(error):
    """The driver's own error under SQLAlchemy's and Optuna's wrappers (StorageInternalError, DBAPIError)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "orig", None) or error.__cause__
        if inner is None:
            break
        error = inner
    return error


@contextmanager
def storage_errors(shown):
    """Turn a database failure during the study (read-only, full, gone) into one UserError line."""
    import optuna
    import sqlalchemy.exc

    try:
        yield
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as e:
        raise storage_failure(e, shown) from None


def storage_failure(error, shown):
    """A UserError for a database that failed during the study (it became read-only, full, unreachable...)."""
    return UserError(f"the study database {brief(shown)} failed: {storage_reason(error)}; {KEPT}")


def get_study(storage, args):
    """The study of a search (created if new, with this worker's sampler and pruner) or of --best (must exist)."""
    import optuna

    if args.best:
        try:
            study = optuna.load_study(study_name=args.study, storage=storage)
        except KeyError:
            names = ", ".join(optuna.get_all_study_names(storage)) or "none"
            raise UserError(f"no study {shorten(args.study)} in this storage; it holds: {brief(names)}") from None
    else:
        pruner = optuna.pruners.NopPruner() if args.no_prune else optuna.pruners.MedianPruner(
            n_startup_trials=args.prune_startup, n_warmup_steps=args.prune_from)
        study = optuna.create_study(study_name=args.study, storage=storage, direction="maximize", pruner=pruner,
                                    sampler=optuna.samplers.TPESampler(seed=args.sampler_seed), load_if_exists=True)
    attrs = study.user_attrs
    if "dataset" in attrs and (attrs["dataset"], attrs.get("demo", False)) != (args.dataset, args.demo):
        was = f"{attrs['dataset']}" + (" --demo" if attrs.get("demo") else "")
        raise UserError(f"study {shorten(args.study)} tunes {brief(str(was))}; give that dataset, or another --study")
    if study.direction != optuna.study.StudyDirection.MAXIMIZE:
        raise UserError(f"study {shorten(args.study)} minimises; it was not made by tune.py, choose another --study")
    return study


def make_objective(base, space, device, received):
    """The Optuna objective: train one sampled config, report each epoch's validation accuracy, return the best."""
    import optuna
    import torch

    from qsnn.data.loaders import make_loaders
    from qsnn.runs.experiment import Interrupted, prepare_run_folder
    from qsnn.core.loop import NonFiniteLoss, StopRequested
    from qsnn.runs.trial import run_trial

    cache = {}  # {loader keys: (loaders, generator)}: trials that agree on them share loaders

    def objective(trial):
        params = {key: suggest(trial, key, distribution) for key, distribution in space.items()}
        cfg = {**base, **params, "exp_name": f"trial_{trial.number}"}
        batching = tuple(cfg.get(k) for k in LOADER_KEYS)
        if batching not in cache:
            cache.clear()
            cache[batching] = make_loaders(cfg, device, generator := torch.Generator()), generator
        if runlog.run_folder(cfg).exists():  # left by a study that was deleted and started again
            print(f"warning: replacing {runlog.run_folder(cfg)} with trial {trial.number}", file=sys.stderr)
        run_dir, _, lock = prepare_run_folder(cfg, resume=False, overwrite=True)
        try:
            return run_sampled_trial(trial, cfg, params, run_dir)
        finally:
            lock.close()

    def run_sampled_trial(trial, cfg, params, run_dir):
        """Train the trial's config in its locked run folder; returns its best validation accuracy."""
        batching = tuple(cfg.get(k) for k in LOADER_KEYS)
        runlog.write_run_config(run_dir, cfg, device)
        trial.set_user_attr("run_dir", str(run_dir))
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}" for k, v in params.items())
        print(f"optuna trial {trial.number}: {shown} (logs in {run_dir})", flush=True)

        def on_epoch(epoch, score):
            trial.report(score, epoch)
            # After the last epoch pruning saves nothing and would only hide a complete result.
            if epoch < cfg["epochs"] and trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {score:.2f}% after epoch {epoch} "
                                         "is below the median of earlier trials")

        try:
            # k = the study's trial number: it names the trial's lines and files, and seeds it (seed + k).
            state = run_trial(cfg, trial.number, *cache[batching], run_dir, device, lambda: bool(received),
                              on_epoch=on_epoch)
        except optuna.TrialPruned as e:
            runlog.update_status(run_dir, trial.number, state="finished", reason="pruned", detail=str(e))
            raise
        except NonFiniteLoss as e:
            # A diverging setting is a bad one, not a broken study: prune it so TPE learns to avoid it.
            raise optuna.TrialPruned(str(e)) from None
        except StopRequested:
            stopped = f"stopped by {received[0]} in Optuna trial {trial.number} (marked failed); {KEPT}"
            raise Interrupted(stopped) from None
        trial.set_user_attr("best_epoch", state.best_epoch)
        return state.best_score

    return objective


def hide_interrupt_traceback(record):
    """Logging filter: Optuna logs a traceback for a trial that raised; our one-line message suffices."""
    if record.exc_info and isinstance(record.exc_info[1], (KeyboardInterrupt, UserError)):
        record.exc_info, record.exc_text = None, None
    return True


def optimize(study, trial_base, space, n_trials):
    """Run trials until the study holds n_trials COUNTED ones (Optuna's MaxTrialsCallback), or a signal."""
    import optuna

    from qsnn.runs.experiment import Interrupted, resolve_device, stop_on_signals
    from qsnn.runs.memory import keep_freed_memory

    counted = tuple(optuna.trial.TrialState[name] for name in COUNTED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # hard-killed workers' trials stop counting
    # MaxTrialsCallback looks after each trial; a study that is already done must not start one.
    if len(study.get_trials(deepcopy=False, states=counted)) >= n_trials:
        return
    device = resolve_device(trial_base["device"])
    keep_freed_memory()  # as training does (see qsnn/runs/memory.py)
    logger = logging.getLogger("optuna.study._optimize")
    with stop_on_signals() as received:
        def stop_on_signal(study, trial):
            if received:  # the signal came after the trial's last epoch: stop before the next one
                study.stop()

        logger.addFilter(hide_interrupt_traceback)
        try:
            study.optimize(make_objective(trial_base, space, device, received),
                           callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=counted), stop_on_signal])
        finally:
            logger.removeFilter(hide_interrupt_traceback)
    if received:
        raise Interrupted(f"stopped by {received[0]} between trials; {KEPT}")


def report(study, shown_url, run_py_cfg, out, overrides, run_py):
    """Print the study's counts and best trial; write the best config JSON."""
    counts = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    print(f"study {study.study_name} ({shown_url}): {sum(counts.values())} trials: {counts['COMPLETE']} complete, "
          f"{counts['PRUNED']} pruned, {counts['FAIL']} failed, {counts['RUNNING']} running")
    if not counts["COMPLETE"]:
        print("no complete trial yet: nothing to report")
        return
    best = study.best_trial
    epoch = f" at epoch {best.user_attrs['best_epoch']}" if "best_epoch" in best.user_attrs else ""
    print(f"best trial {best.number}: validation accuracy {best.value:.2f}%{epoch}"
          + (f"; logs in {best.user_attrs['run_dir']}" if "run_dir" in best.user_attrs else ""))
    for key, value in best.params.items():
        print(f"  {key} = {value!r}")
    # run.py's own config (its full protocol and val_split) with only the tuned values put in
    unknown = [key for key in best.params if key not in run_py_cfg]
    if unknown:  # the database is read back: a study another program wrote can hold anything
        raise UserError(f"study {shorten(study.study_name)}'s best trial sets {brief(', '.join(unknown))}, which "
                        f"{run_py} does not have; it was not made by tune.py for this dataset: choose another --study")
    cfg = dict(run_py_cfg)
    for key, value in best.params.items():
        try:
            cfg[key] = check_type(key, value, run_py_cfg[key])
        except UserError:
            raise UserError(f"study {shorten(study.study_name)}'s best trial sets {key} to {shorten(value)}, which "
                            f"{run_py} cannot take; it was not made by tune.py for this dataset: choose another "
                            "--study") from None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text(out, json.dumps(cfg, indent=2) + "\n")
    except OSError as e:
        raise UserError(f"cannot write the best config to {brief(str(out))}: {e.strerror}; the study keeps its "
                        "trials: rerun with --best --out FILE") from None
    print(f"best config written to {out}; train it with the full protocol:\n  python {run_py} --config {out}")
    if counts["RUNNING"]:
        print(f"{counts['RUNNING']} trial(s) still running elsewhere: run with --best when they finish")
    kept_out = " ".join(f"--{k} {shlex.quote(str(v))}" for k, v in overrides.items() if k not in RUN_ONLY_KEYS)
    if kept_out:
        print(f"(search-only --set values are not in that file; add them if the final run should use them: {kept_out})")
