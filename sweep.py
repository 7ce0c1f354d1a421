"""Train a grid of run.py settings (e.g. schedule x precision x seed) as a sweep that scales out.

    python sweep.py results/sweeps/minima.json --dry-run     # the cells, in order, and their run.py commands
    python sweep.py results/sweeps/minima.json               # train them; rerun after a crash to continue
    python sweep.py GRID.json --storage postgresql+psycopg2://user:pw@host/qsnn   # same command on every machine
    python sweep.py --help                                   # every option

This file is the command line; the sweep lives in qsnn/runs/: sweep.py (a worker), sweep_grid.py (the grid file),
sweep_store.py (the shared table of cells), sweep_folders.py and sweep_process.py (a cell's folder and run).
"""
import argparse
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere without installing
from qsnn.runs.cli import ArgumentParser  # noqa: E402
from qsnn.errors import UserError  # noqa: E402
from qsnn.runs.sweep import print_cells, run_sweep  # noqa: E402
from qsnn.runs.sweep_grid import default_storage, load_grid  # noqa: E402

EPILOG = """\
grid file (JSON), e.g. results/sweeps/minima.json:
  {"run": "fashion_mnist/run.py",                  the run.py to train (from the repository root)
   "fixed": {"output_dir": "results/minima", ...},   run.py keys every cell gets
   "axes": {"seed": [0, 1, 2],                      a list: values of the run.py key of that name
            "precision": {"4bit": {"num_bits": 4}, "fp32": {"num_bits": null}}},   named variants
   "name": "fashion_mnist_{precision}_s{seed}"}     each cell's run folder (--exp_name)
Cells run in priority order, the first axis slowest; each is `python RUN.py --exp_name NAME ... --resume`.

several GPUs or machines: start the same command on each (CUDA_VISIBLE_DEVICES=N for a GPU), with one
database for all of them (pip install psycopg2-binary), e.g.
  --storage postgresql+psycopg2://user:password@dbhost/qsnn
Each cell is claimed by one worker; a worker that dies (no heartbeat for 3 minutes) leaves its cell to the
next worker started, which resumes it. A changed grid is a new sweep: give it another --study."""


def build_parser():
    """The sweep.py command line."""
    p = ArgumentParser(prog="sweep.py", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                description="Train every cell of a grid of run.py settings once, shared by every worker started "
                            "with the same storage.")
    p.add_argument("grid", metavar="GRID.json", help="the grid file")
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy database URL shared by all workers "
                   "(default sqlite:///<output_dir>.sweep.db, beside the grid's output_dir)")
    p.add_argument("--study", metavar="NAME", help="the sweep's name in the storage (default: the grid file's name)")
    p.add_argument("--data_dir", metavar="DIR", help="run.py's data_dir for every cell")
    p.add_argument("--output_dir", metavar="DIR", help="run.py's output_dir for every cell, instead of the grid's")
    p.add_argument("--dry-run", action="store_true", help="print the cells and their commands; train nothing")
    p.add_argument("--max-cells", type=int, metavar="N", help="stop after training N cells")
    return p


def check_args(args):
    """Raise UserError for values argparse cannot check by type alone."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UserError("run sweep.py without torchrun: start one sweep.py per GPU (CUDA_VISIBLE_DEVICES) "
                        "with a shared --storage instead")
    if args.max_cells is not None and args.max_cells < 1:
        raise UserError(f"--max-cells {args.max_cells} is not allowed; must be >= 1")
    if args.study is not None and not re.fullmatch(r"[A-Za-z0-9_.-]+", args.study):
        raise UserError(f"--study {args.study!r}: use letters, digits, '_', '.' and '-'")


def main(argv=None):
    """sweep.py: returns the exit code (0, 1 if a cell failed, 2 for a user mistake, 130 when interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        check_args(args)
        grid = load_grid(args.grid, data_dir=args.data_dir, output_dir=args.output_dir)
        study = args.study or re.sub(r"[^A-Za-z0-9_.-]", "_", grid.path.stem)
        url = args.storage or default_storage(grid)
        if args.dry_run:
            print_cells(grid, study, url)
            return 0
        return run_sweep(grid, study, url, args.max_cells)
    except UserError as e:
        for line in str(e).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; rerun the command to continue (finished cells are kept)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
