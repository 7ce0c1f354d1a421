"""Tune a dataset's QSNN hyperparameters with Optuna; the winning config is written for run.py --config.

    python tune.py mnist --demo --n-trials 6 --epochs 3 --set num_steps=10   # offline, a few minutes
    python tune.py mnist --n-trials 50 --storage postgresql+psycopg2://user:pw@host/qsnn   # pip install psycopg2-binary
    python tune.py mnist --best          # print the best trial, write runs/tune/mnist_best.json
    python tune.py --help                # every option

This file is the command line; the search itself lives in qsnn/runs/tuning.py.
"""
import argparse
import os
import re
import runpy
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere without installing
from qsnn.data import registry  # noqa: E402
from qsnn.paths import REPO_ROOT, resolve_path  # noqa: E402
from qsnn.runs.config import validate  # noqa: E402
from qsnn.runs.cli import ArgumentParser  # noqa: E402
from qsnn.errors import UserError, shorten  # noqa: E402
from qsnn.runs.tuning import (DEFAULT_RANGES, KEPT, base_config, check_out_file,  # noqa: E402
                         check_ranges, get_study, open_storage, optimize, range_text, report, search_space,
                         storage_errors)

EPILOG = """\
several machines: the same command on each, with one database (pip install psycopg2-binary), e.g.
  --storage postgresql+psycopg2://user:password@dbhost/qsnn
Ctrl-C marks the running trial failed and keeps the finished ones; rerun the command to continue."""
SAMPLER_SEEDS = 2**32  # TPESampler seeds numpy's RandomState: 0..2**32-1
STUDY_NAME_CHARS = 200  # it names files (<study>.db, <study>_best.json): well within 255 bytes


def number(kind):
    """argparse type for int or float whose error cuts the text (argparse's would echo it whole)."""
    def parse(text):
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {shorten(text)}") from None

    parse.__name__ = kind.__name__
    return parse


def build_parser():
    """The tune.py command line."""
    p = ArgumentParser(prog="tune.py", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter, description=
                "Search a run.py config's QSNN hyperparameters with Optuna, scored on a validation split.")
    p.add_argument("dataset", metavar="DATASET", help=f"whose run.py config to tune: {' | '.join(registry.own_run_py())}")
    p.add_argument("--demo", action="store_true", help="tune mnist's offline demo preset (scikit-learn digits)")
    p.add_argument("--n-trials", type=number(int), default=50, metavar="N",
                   help="stop once the study holds N complete + pruned trials, counting earlier runs and other "
                        "workers' running ones (default 50)")
    p.add_argument("--epochs", type=number(int), default=10, metavar="N",
                   help="epoch budget of each trial (default 10)")
    p.add_argument("--val-split", type=number(float), default=0.1, metavar="F",
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
    p.add_argument("--sampler-seed", type=number(int), metavar="N",
                   help="seed the TPE sampler, 0..2**32-1 (single-worker runs)")
    p.add_argument("--no-prune", action="store_true", help="train every trial for its whole epoch budget")
    p.add_argument("--prune-startup", type=number(int), default=3, metavar="N",
                   help="complete trials before pruning (3)")
    p.add_argument("--prune-from", type=number(int), default=1, metavar="EPOCH", help="first epoch that may prune (1)")
    p.add_argument("--best", action="store_true", help="only read the study: print its best trial, write its config")
    p.add_argument("--out", metavar="FILE", help="the best config's file (default <output_dir>/tune/<study>_best.json)")
    return p


def check_args(args):
    """Raise UserError for values argparse cannot check by type alone."""
    if args.dataset not in registry.own_run_py():
        raise UserError(f"unknown dataset {shorten(args.dataset)}; choose one of {', '.join(registry.own_run_py())}")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("run tune.py without torchrun: each rank would start its own trials; "
                        "start one tune.py per GPU (CUDA_VISIBLE_DEVICES) with a shared --storage instead")
    for flag, value, low in [("--n-trials", args.n_trials, 1), ("--epochs", args.epochs, 1),
                             ("--prune-startup", args.prune_startup, 0), ("--prune-from", args.prune_from, 1)]:
        if value < low:
            raise UserError(f"{flag} {shorten(value)} is not allowed; must be >= {low}")
    if not 0 < args.val_split < 1:
        raise UserError(f"--val-split {args.val_split} is not allowed; must be within (0, 1): "
                        "trials are scored on held-out training data, never on the test set")
    if args.sampler_seed is not None and not 0 <= args.sampler_seed < SAMPLER_SEEDS:
        raise UserError(f"--sampler-seed {shorten(args.sampler_seed)} is not allowed; must be within "
                        f"0..{SAMPLER_SEEDS - 1} (2**32-1), e.g. --sampler-seed 0")
    args.study = args.study or (f"{args.dataset}_demo" if args.demo else args.dataset)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.study) or len(args.study) > STUDY_NAME_CHARS:
        raise UserError(f"--study {shorten(args.study)}: use up to {STUDY_NAME_CHARS} letters, digits, '_', '.' "
                        "and '-' (it names files)")


def study_overrides(study):
    """The --set values the study's search used (what the best config leaves out); {} if it holds none."""
    overrides = study.user_attrs.get("overrides", {})
    return overrides if isinstance(overrides, dict) else {}  # read back from the database: trust no shape


def main(argv=None):
    """tune.py: returns the exit code (0, 2 for a user mistake, 130 when interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        run_py = runpy.run_path(str(REPO_ROOT / args.dataset / "run.py"))
        preset = run_py.get("demo") if args.demo else None
        if args.demo and preset is None:
            raise UserError(f"{args.dataset}/run.py has no --demo preset; mnist has: python tune.py mnist --demo")
        run_py_cfg, cfg, overrides = base_config(run_py["config"], preset, args.set)
        space = search_space(run_py["config"], args.range, set(overrides))
        tune_root = resolve_path(cfg["output_dir"]) / "tune"
        trial_base = {**cfg, "epochs": args.epochs, "val_split": args.val_split, "num_trials": 1,
                      "output_dir": str(tune_root / args.study)}
        out = Path(args.out) if args.out else tune_root / f"{args.study}_best.json"
        if not args.best:  # before the database is touched
            validate(trial_base)
            check_ranges(trial_base, space)
        check_out_file(out, explicit=args.out is not None)  # before any trial: a search can take days
        storage = open_storage(args.storage or f"sqlite:///{tune_root / (args.study + '.db')}", create=not args.best)
        shown_url = storage.engine.url.render_as_string(hide_password=True)
        with storage_errors(shown_url):
            study = get_study(storage, args)
            if args.best:
                overrides = study_overrides(study)
            else:
                # "dataset" last: another worker checks demo/overrides only once it sees dataset (no race).
                for name, value in {"demo": args.demo, "overrides": overrides, "dataset": args.dataset}.items():
                    study.set_user_attr(name, value)
                print(f"study {args.study}: searching " + " ".join(range_text(k, d) for k, d in space.items()))
                optimize(study, trial_base, space, args.n_trials)
            report(study, shown_url, run_py_cfg, out, overrides, f"{args.dataset}/run.py")
    except UserError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"error: aborted by a second Ctrl-C; the running trial is marked failed, {KEPT}", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
