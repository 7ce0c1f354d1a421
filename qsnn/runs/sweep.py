"""A grid of run.py settings trained as a sweep that scales out (the library behind sweep.py's command line).

A grid file (JSON) names a run.py, fixed overrides, axes of named variants and the run folders' name pattern:

    {"run": "fashion_mnist/run.py",
     "fixed": {"output_dir": "results/minima", "epochs": 18},
     "axes": {"seed": [0, 1, 2],
              "precision": {"4bit": {"num_bits": 4}, "fp32": {"num_bits": null}}},
     "name": "fashion_mnist_{precision}_s{seed}"}

Each variant is a dict of run.py keys; a list is short for variants of the run.py key named like the axis. A
cell (one variant of every axis) is one run, `python RUN.py --exp_name NAME <overrides> --resume`, started as a
subprocess: a crash of one run does not stop its worker, and every run continues from its last saved epoch.
Cells go in priority order, the product of the axes with the first axis slowest: every cell of seed 0 comes
before any of seed 1.

Sharing. Every worker (sweep.py on one machine, or on several GPUs or machines with one --storage) works from
one table, qsnn_sweep_cells, in the database of the Optuna RDB storage that tune.py uses (opened by
qsnn.runs.tuning.open_storage: SQLite by default, PostgreSQL across machines). A row per cell holds its state
(pending, running, done, failed), the worker holding it, that worker's heartbeat and the run's outcome.

Each cell is trained once:
1. A worker claims a cell with one conditional UPDATE (state pending, or running with a stale heartbeat, or
   failed before this worker started). The database applies a single UPDATE atomically, so of two workers
   racing for a cell exactly one changes the row; the other sees 0 rows changed and tries the next cell.
2. A claim is a lease: its worker renews the heartbeat every HEARTBEAT_S seconds, on the database's clock
   (one clock for all machines). A heartbeat older than GRACE_BEATS beats means the worker died (killed,
   machine lost): the next worker that looks takes the cell over with the same UPDATE, and run.py --resume
   continues from the last saved epoch. A worker whose lease was taken over stops its run.
3. run.py locks its run folder: a second process on the same folder fails with 'another run (process N) is
   writing to ...'. The worker checks that lock before claiming, and treats that failure as the cell running
   elsewhere (released, not failed), so runs started outside the sweep on the same disk are not doubled.
4. A cell whose folder already holds its finished trials (status.json) is recorded done without a run.

Optuna's GridSampler was not used: in Optuna 5.0 it shuffles the grid (no priority order), counts a failed
trial as visited (a killed worker's cell would never be retried), its heartbeat runs only inside
Study.optimize, and its docs say concurrent workers may be given the same configuration (as it also does once
the grid is exhausted).
"""
import ctypes
import itertools
import json
import os
import runpy
import shlex
import signal
import socket
import string
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

from qsnn.runs import runlog
from qsnn.paths import path_base, resolve_path
from qsnn.runs.config import parse_args, validate
from qsnn.errors import UserError, shorten
from qsnn.runs.tuning import HEARTBEAT_S, open_storage

GRACE_BEATS = 3  # as tune.py: a lease is stale after 3 missed heartbeats
GRID_KEYS = ("run", "fixed", "axes", "name")
REQUIRED_KEYS = ("run", "axes", "name")
SET_BY_SWEEP = {"exp_name": "the name pattern sets it"}
NOT_PER_CELL = {"output_dir": "all cells share one output_dir: put it in fixed"}
BUSY = "another run (process"  # the start of run.py's message when a run folder is locked
STOPPED_CODES = {130, -signal.SIGINT, -signal.SIGTERM}  # run.py stopped by a signal, its epochs saved
PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for the child when its parent dies
ERROR_TAIL = 20  # lines of a run's stderr kept to name why it failed

CELLS = sa.Table(
    "qsnn_sweep_cells", sa.MetaData(),
    sa.Column("sweep", sa.String(200), primary_key=True),
    sa.Column("cell", sa.String(255), primary_key=True),  # the run folder's name
    sa.Column("position", sa.Integer, nullable=False),  # priority order, from 1
    sa.Column("command", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),  # pending | running | done | failed
    sa.Column("worker", sa.String(255)),  # host:pid holding the cell (running) or that last ran it
    sa.Column("heartbeat", sa.Float),  # database clock, seconds since 1970: last renewal or change
    sa.Column("attempts", sa.Integer, nullable=False),  # claims so far
    sa.Column("exit_code", sa.Integer),
    sa.Column("best_score", sa.Float),  # best accuracy in the run folder's status.json
    sa.Column("detail", sa.Text),  # why it failed, or how it was recorded
)
# The database's clock, so that workers on machines whose clocks differ agree on what is stale.
CLOCK_SQL = {"sqlite": "SELECT (julianday('now') - 2440587.5) * 86400.0",
             "postgresql": "SELECT extract(epoch from clock_timestamp())",
             "mysql": "SELECT UNIX_TIMESTAMP(NOW(6))", "mariadb": "SELECT UNIX_TIMESTAMP(NOW(6))"}


class Interrupted(UserError):
    """The worker stopped on SIGINT/SIGTERM after its running cell saved and was released."""
    exit_code = 130


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its place in the priority order, folder name, variants, arguments and config."""
    position: int
    name: str
    variants: dict
    argv: tuple
    cfg: dict

    @property
    def run_dir(self):
        """The cell's run folder."""
        return runlog.run_folder(self.cfg)


@dataclass(frozen=True)
class Grid:
    """A grid file's cells in priority order and the run.py that trains them."""
    path: Path
    run: str
    run_py: Path
    cells: tuple

    def command(self, cell):
        """The cell's command line as a person would type it."""
        return "python " + shlex.join([self.run, *cell.argv])


def say(line):
    """One line of the worker's log, flushed so a log file shows it at once."""
    print(line, flush=True)


# ---- the grid file -------------------------------------------------------------------------------------------

def read_grid_file(path):
    """The JSON object in a grid file; unreadable, not JSON or a key given twice is one UserError line."""
    def refuse_repeats(pairs):
        keys = [key for key, _ in pairs]
        repeated = next((key for key in keys if keys.count(key) > 1), None)
        if repeated is not None:  # json.loads would keep the last one silently
            raise UserError(f"grid {path}: key {repeated!r} is given twice")
        return dict(pairs)

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=refuse_repeats)
    except OSError as e:
        raise UserError(f"cannot read grid {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"grid {path} is not JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except ValueError as e:  # not UTF-8 text
        raise UserError(f"grid {path} is not JSON text ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"grid {path} must hold a JSON object with the keys {', '.join(GRID_KEYS)}")
    return data


def check_grid_keys(path, data):
    """Refuse a grid that lacks run, axes or name, or holds a key the sweep does not know."""
    missing = [key for key in REQUIRED_KEYS if key not in data]
    unknown = sorted(set(data) - set(GRID_KEYS))
    if missing or unknown:
        what = (f"lacks {', '.join(missing)}" if missing else "") + \
               ("; " if missing and unknown else "") + (f"has unknown keys {', '.join(unknown)}" if unknown else "")
        raise UserError(f"grid {path} {what}; a grid holds run, fixed (optional), axes and name "
                        "(see python sweep.py --help)")
    for key, kind in (("run", str), ("fixed", dict), ("axes", dict), ("name", str)):
        if key in data and not isinstance(data[key], kind):
            raise UserError(f"grid {path}: {key} must be a JSON {'string' if kind is str else 'object'}")


def load_run_py(path, run):
    """(run.py's path, its config dict, the datasets it runs), as its own command line would check them."""
    run_py = resolve_path(run)
    if not run_py.is_file():
        raise UserError(f"grid {path}: run {run!r} is not a file (relative paths are from {path_base()})")
    try:
        namespace = runpy.run_path(str(run_py))
    except Exception as e:  # a broken run.py: its own error, in one line
        raise UserError(f"grid {path}: cannot load {run}: {type(e).__name__}: {e}") from None
    config, demo = namespace.get("config"), namespace.get("demo")
    if not isinstance(config, dict):
        raise UserError(f"grid {path}: {run} has no config dict; name a run.py such as mnist/run.py")
    datasets = tuple(dict.fromkeys([config["dataset"], *([demo["dataset"]] if isinstance(demo, dict) else [])]))
    return run_py, config, datasets


def check_run_keys(path, where, values, defaults, run):
    """values: a dict of run.py keys with plain values (number, text, true/false, null); returns a copy."""
    if not isinstance(values, dict):
        raise UserError(f"grid {path}: {where} must be an object of run.py keys, e.g. {{\"epochs\": 18}}")
    for key, value in values.items():
        if key not in defaults:
            raise UserError(f"grid {path}: {where} sets {key!r}, which is not a key of {run}; "
                            f"valid keys: {', '.join(defaults)}")
        if key in SET_BY_SWEEP:
            raise UserError(f"grid {path}: {where} sets {key}: {SET_BY_SWEEP[key]}")
        if isinstance(value, (list, dict)):
            raise UserError(f"grid {path}: {where} sets {key} to {json.dumps(value)}; "
                            "a value is a number, text, true/false or null")
    return dict(values)


def axis_variants(path, axis, spec, defaults, run):
    """{variant name: {run.py key: value}} of one axis; a list is short for values of the key named like the axis."""
    if isinstance(spec, list):
        if axis not in defaults:
            raise UserError(f"grid {path}: axis {axis!r} is a list, which stands for values of the run.py key "
                            f"{axis!r}, and {run} has no such key; write {{\"VARIANT\": {{\"KEY\": VALUE}}}}")
        names = [str(value) for value in spec]  # as run.py's command line prints them: 0, None, True
        if len(set(names)) < len(names):
            raise UserError(f"grid {path}: axis {axis!r} lists a value twice")
        spec = dict(zip(names, ({axis: value} for value in spec)))
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"grid {path}: axis {axis!r} must be a non-empty list of values or object of variants")
    return {name: check_run_keys(path, f"variant {name!r} of axis {axis!r}", keys, defaults, run)
            for name, keys in spec.items()}


def check_keys_set_once(path, fixed, axes):
    """Refuse a run.py key set by fixed and an axis, or by two axes: which value wins would be a guess."""
    setters = {key: ["fixed"] for key in fixed}
    for axis, variants in axes.items():
        for key in dict.fromkeys(k for keys in variants.values() for k in keys):
            if key in NOT_PER_CELL:
                raise UserError(f"grid {path}: axis {axis!r} sets {key}; {NOT_PER_CELL[key]}")
            setters.setdefault(key, []).append(f"axis {axis!r}")
    twice = next(((key, where) for key, where in setters.items() if len(where) > 1), None)
    if twice:
        raise UserError(f"grid {path}: {twice[0]} is set by both {' and '.join(twice[1])}; set it in one place")


def check_pattern(path, pattern, axes):
    """Refuse a name pattern that is not '{axis}' fields of known axes, or that leaves out a varying axis."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(pattern)
                  if name is not None]
    except ValueError as e:
        raise UserError(f"grid {path}: name {pattern!r} is not a valid pattern ({e}); "
                        "write axes as {axis}, a literal brace as {{ or }}") from None
    for name, spec, conversion in fields:
        if name not in axes:
            raise UserError(f"grid {path}: name {pattern!r} names {{{name}}}, which is not an axis; "
                            f"axes: {', '.join(axes)}")
        if spec or conversion:
            raise UserError(f"grid {path}: name {pattern!r}: write {{{name}}} plainly (no ! or : parts)")
    left_out = [axis for axis, variants in axes.items() if len(variants) > 1 and axis not in {f[0] for f in fields}]
    if left_out:
        raise UserError(f"grid {path}: name {pattern!r} leaves out axis {left_out[0]!r}, so its cells would share "
                        "run folders; put {" + left_out[0] + "} in it")


def make_cell(path, position, combination, fixed, pattern, defaults, datasets):
    """The cell of one (axis, variant name, keys) combination, its config checked as run.py checks it."""
    variants = {axis: name for axis, name, _ in combination}
    name = pattern.format(**variants)
    overrides = dict(fixed)
    for _, _, keys in combination:
        overrides.update(keys)
    argv = ("--exp_name", name, *[item for key, value in overrides.items() for item in (f"--{key}", str(value))],
            "--resume")
    try:
        cfg, _ = parse_args(defaults, list(argv))
        runlog.run_folder(cfg)  # run.py's rules for a folder name: plain, not too long
        validate(cfg, datasets=datasets)
    except UserError as e:
        where = f"grid {path}: cell {shorten(name)} (name {pattern!r})"
        raise UserError("\n".join(f"{where}: {line}" for line in str(e).splitlines())) from None
    return Cell(position, name, variants, argv, cfg)


def load_grid(path, data_dir=None, output_dir=None):
    """The grid file's cells in priority order (first axis slowest), each config checked as run.py would."""
    path = Path(path)
    data = read_grid_file(path)
    check_grid_keys(path, data)
    run_py, defaults, datasets = load_run_py(path, data["run"])
    fixed = check_run_keys(path, "fixed", data.get("fixed", {}), defaults, data["run"])
    for key, value in (("output_dir", output_dir), ("data_dir", data_dir)):
        if value is not None:  # where, not what: the command line may move them
            fixed[key] = value
    if not data["axes"]:
        raise UserError(f"grid {path}: axes is empty; give at least one axis, e.g. \"seed\": [0, 1, 2]")
    axes = {axis: axis_variants(path, axis, spec, defaults, data["run"]) for axis, spec in data["axes"].items()}
    check_keys_set_once(path, fixed, axes)
    check_pattern(path, data["name"], axes)
    choices = [[(axis, name, keys) for name, keys in variants.items()] for axis, variants in axes.items()]
    cells = tuple(make_cell(path, position, combination, fixed, data["name"], defaults, datasets)
                  for position, combination in enumerate(itertools.product(*choices), 1))
    seen = {}
    for cell in cells:
        if cell.name in seen:
            raise UserError(f"grid {path}: cells {seen[cell.name]} and {cell.variants} both get run folder "
                            f"{cell.name}; change the name pattern or the variant names")
        seen[cell.name] = cell.variants
    return Grid(path, data["run"], run_py, cells)


def default_storage(grid):
    """sqlite:///<output_dir>.sweep.db: a SQLite file beside the cells' output_dir."""
    output_dir = resolve_path(grid.cells[0].cfg["output_dir"])
    return f"sqlite:///{output_dir.parent / (output_dir.name + '.sweep.db')}"


# ---- run folders ---------------------------------------------------------------------------------------------

def trial_done(status, cfg):
    """qsnn.runs.experiment.is_done without importing torch: failed, or finished and not extended by a larger epochs."""
    extendable = status.get("reason") == "max_epochs" and status.get("epochs_completed", 0) < cfg["epochs"]
    return status.get("state") == "failed" or (status.get("state") == "finished" and not extendable)


def folder_result(cell):
    """(True when run.py --resume would find every trial of the cell done, best accuracy in status.json or None)."""
    try:
        status = runlog.read_status(cell.run_dir)
    except UserError:  # a damaged status.json: run.py --resume says what is wrong with it
        return False, None
    scores = [t["best_score"] for t in status.values() if isinstance(t.get("best_score"), (int, float))]
    done = all(trial_done(status.get(str(k), {}), cell.cfg) for k in range(cell.cfg["num_trials"]))
    return done, max(scores, default=None)


def folder_progress(cell):
    """A few words on the cell's folder for --dry-run: finished, epochs done so far, or not started."""
    done, _ = folder_result(cell)
    if done:
        return "finished"
    try:
        epochs = sum(t.get("epochs_completed", 0) for t in runlog.read_status(cell.run_dir).values())
    except UserError as e:
        return f"unreadable: {str(e).split(';')[0]}"
    total = cell.cfg["epochs"] * cell.cfg["num_trials"]
    return f"{epochs} of {total} epochs" if epochs else "not started"


def folder_holder(cell):
    """None if no process holds the cell's run folder, else run.py's message naming the process that does."""
    if not cell.run_dir.parent.is_dir():
        return None
    try:
        runlog.lock_run_folder(cell.run_dir).close()
    except UserError as e:
        message = str(e)
        return message.split(";")[0] if message.startswith(BUSY) else None  # other problems: run.py says them
    return None


# ---- the shared table ----------------------------------------------------------------------------------------

def db_now(conn):
    """The database's clock in seconds since 1970 (the local clock for a database without a known query)."""
    query = CLOCK_SQL.get(conn.dialect.name)
    return time.time() if query is None else float(conn.exec_driver_sql(query).scalar())


def grace_s():
    """Seconds without a heartbeat after which a running cell's worker counts as dead."""
    return GRACE_BEATS * HEARTBEAT_S


def create_table(engine):
    """Create qsnn_sweep_cells if the database lacks it (workers starting together may race to)."""
    for attempt in range(3):
        try:
            CELLS.metadata.create_all(engine)
            return
        except sa.exc.DBAPIError:  # another worker created it between the check and the CREATE
            if attempt == 2:
                raise
            time.sleep(0.5 + attempt)


class SweepStore:
    """The sweep's rows in the shared database: each cell's state, holder, heartbeat and outcome."""

    def __init__(self, url, sweep):
        self.storage = open_storage(url, create=True)  # tune.py's URL, driver and SQLite busy-wait handling
        self.engine, self.sweep = self.storage.engine, sweep
        self.shown = self.engine.url.render_as_string(hide_password=True)
        create_table(self.engine)

    def where(self, name):
        """The SQL condition selecting one cell's row."""
        return sa.and_(CELLS.c.sweep == self.sweep, CELLS.c.cell == name)

    def claimable(self, now, since):
        """SQL: pending, or running without a heartbeat for the grace period, or failed before `since`."""
        return sa.or_(CELLS.c.state == "pending",
                      sa.and_(CELLS.c.state == "running", CELLS.c.heartbeat < now - grace_s()),
                      sa.and_(CELLS.c.state == "failed", CELLS.c.heartbeat < since))

    def clock(self):
        """The database's clock now."""
        with self.engine.connect() as conn:
            return db_now(conn)

    def add_cells(self, cells, command):
        """Insert the grid's cells the table lacks, as pending; rows of earlier runs keep their state."""
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    now = db_now(conn)
                    have = set(conn.execute(sa.select(CELLS.c.cell).where(CELLS.c.sweep == self.sweep)).scalars())
                    new = [{"sweep": self.sweep, "cell": c.name, "position": c.position, "command": command(c),
                            "state": "pending", "attempts": 0, "heartbeat": now} for c in cells if c.name not in have]
                    if new:
                        conn.execute(sa.insert(CELLS), new)
                return
            except sa.exc.IntegrityError:  # another worker inserted them at the same moment: read again
                if attempt == 2:
                    raise

    def rows(self):
        """{cell name: row} of this sweep."""
        with self.engine.connect() as conn:
            return {row.cell: row for row in conn.execute(sa.select(CELLS).where(CELLS.c.sweep == self.sweep))}

    def candidates(self, since):
        """(database clock, {cell name: row} of the cells a worker started at `since` may claim now)."""
        with self.engine.connect() as conn:
            now = db_now(conn)
            rows = conn.execute(sa.select(CELLS).where(CELLS.c.sweep == self.sweep, self.claimable(now, since)))
            return now, {row.cell: row for row in rows}

    def update_if(self, name, condition, **values):
        """Apply values to a cell's row if condition holds, in one atomic UPDATE; True if it did."""
        with self.engine.begin() as conn:
            now = db_now(conn)
            changed = conn.execute(sa.update(CELLS).where(self.where(name), condition(now))
                                   .values(heartbeat=now, **values)).rowcount
        return changed == 1

    def claim(self, name, worker, since):
        """Take a cell for worker if it is still claimable: exactly one of racing workers gets True."""
        return self.update_if(name, lambda now: self.claimable(now, since), state="running", worker=worker,
                              attempts=CELLS.c.attempts + 1, exit_code=None, detail=None)

    def record_finished(self, name, best, since):
        """Record a cell whose folder already holds its finished trials as done, if no live worker holds it."""
        return self.update_if(name, lambda now: self.claimable(now, since), state="done", best_score=best,
                              exit_code=None, detail="found finished in its run folder")

    def renew(self, name, worker):
        """Renew worker's lease on a cell; False if another worker has taken it over."""
        return self.update_if(name, lambda now: self.held_by(worker))

    def finish(self, name, worker, state, exit_code, best, detail):
        """Record a claimed cell's outcome (or give it back as pending); False if the lease was lost meanwhile."""
        return self.update_if(name, lambda now: self.held_by(worker), state=state, exit_code=exit_code,
                              best_score=best, detail=detail)

    def held_by(self, worker):
        """SQL: the row is running under worker's lease."""
        return sa.and_(CELLS.c.state == "running", CELLS.c.worker == worker)


# ---- one worker ----------------------------------------------------------------------------------------------

class StopSignals:
    """SIGINT/SIGTERM for a worker: passed on once to the running run.py (it saves and stops), a second aborts it.

    The run has its own process group, so a Ctrl-C in the terminal reaches it only through this handler: once
    per press, as run.py's own first-signal (stop after this iteration) and second-signal (abort) handling expects.
    """

    def __init__(self):
        self.received, self.child, self.previous = [], None, {}

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        """Note the signal; pass SIGINT on to the running cell."""
        self.received.append(signal.Signals(signum).name)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGINT)
            then = "again to abort it now" if len(self.received) == 1 else "aborting it"
            print(f"\n{self.received[-1]} received: the running cell saves and stops ({then})", file=sys.stderr)
        else:
            print(f"\n{self.received[-1]} received: stopping before the next cell", file=sys.stderr)


class Lease:
    """A claimed cell's heartbeat, renewed every HEARTBEAT_S seconds in a thread; a lost lease stops the run."""

    def __init__(self, store, name, worker, proc):
        self.store, self.name, self.worker, self.proc = store, name, worker, proc
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lease {name}", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _beat(self):
        """Renew until stopped; if another worker has taken the cell over, stop the run (it saves its epochs)."""
        while not self._stop.wait(HEARTBEAT_S):
            try:
                if not self.store.renew(self.name, self.worker):
                    self.lost = True
                    say(f"sweep: cell {self.name}: another worker took it over (this worker's heartbeat lapsed); "
                        "stopping its run here")
                    self.proc.terminate()
                    return
            except sa.exc.SQLAlchemyError as e:  # the database briefly unreachable: the next beat tries again
                say(f"warning: cell {self.name}: heartbeat not recorded ({short_reason(e)}); "
                    f"trying again in {HEARTBEAT_S} s")


def short_reason(error):
    """The first line of a database error, without SQLAlchemy's background link."""
    return str(getattr(error, "orig", None) or error).strip().splitlines()[0]


def stop_with_worker():
    """A preexec_fn for Linux: the run gets SIGTERM (run.py saves and stops) when its worker dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    prctl, worker_pid = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def in_child():
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != worker_pid:  # the worker died before the call above
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def start_run(grid, cell):
    """`python RUN.py ARGS` in its own process group, stderr piped through the worker, output unbuffered."""
    return subprocess.Popen([sys.executable, str(grid.run_py), *cell.argv], stderr=subprocess.PIPE, text=True,
                            errors="replace", bufsize=1, start_new_session=True, preexec_fn=stop_with_worker(),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # log lines in the order they happen


def forward_stderr(proc):
    """Copy the run's stderr to the worker's, line by line; returns its last ERROR_TAIL lines."""
    last = deque(maxlen=ERROR_TAIL)
    for line in proc.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
        last.append(line.rstrip("\n"))
    return list(last)


def error_line(lines):
    """The run's last 'error:' line, else its last non-empty line, else None."""
    errors = [line for line in lines if line.startswith("error:")]
    rest = [line for line in lines if line.strip()]
    return (errors or rest or [None])[-1]


def duration(seconds):
    """h:mm:ss."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def accuracy(best):
    """'best accuracy 87.48%', or a note that status.json has none."""
    return "no accuracy in status.json" if best is None else f"best accuracy {best:.2f}%"


def run_cell(grid, store, cell, worker, stop, busy):
    """Train one claimed cell in a run.py subprocess under a renewed lease, then record its outcome."""
    label = f"sweep: cell {cell.position}/{len(grid.cells)} {cell.name}"
    started = time.monotonic()
    proc = start_run(grid, cell)
    stop.child = proc
    try:
        with Lease(store, cell.name, worker, proc) as lease:
            tail = forward_stderr(proc)
            code = proc.wait()
    finally:
        stop.child = None
    _, best = folder_result(cell)
    reason = error_line(tail)
    if lease.lost:
        return
    if code == 0:
        state, line = "done", f"done in {duration(time.monotonic() - started)}, {accuracy(best)}"
    elif code == 2 and reason and reason.startswith(f"error: {BUSY}"):
        busy[cell.name] = reason[len("error: "):].split(";")[0]
        state, line = "pending", f"running elsewhere: {busy[cell.name]}"
    elif code in STOPPED_CODES or stop.received:
        state, line = "pending", "stopped; its completed epochs are saved and the next worker resumes it"
    else:
        state, line = "failed", f"failed with exit code {code}" + (f": {reason}" if reason else "")
    if not store.finish(cell.name, worker, state, code, best, None if state == "done" else reason):
        line += " (another worker had taken the cell over; its record stands)"
    say(f"{label}: {line}")


def next_cell(grid, store, worker, since, busy):
    """Claim the first claimable cell in priority order, recording finished folders as done; None if none is left."""
    now, rows = store.candidates(since)
    for cell in grid.cells:
        row = rows.get(cell.name)
        if row is None or cell.name in busy:
            continue
        label = f"sweep: cell {cell.position}/{len(grid.cells)} {cell.name}"
        finished, best = folder_result(cell)
        if finished:
            if store.record_finished(cell.name, best, since):
                say(f"{label}: already finished in {cell.run_dir} ({accuracy(best)}): recorded as done")
            continue
        holder = folder_holder(cell)
        if holder:
            busy[cell.name] = holder
            say(f"{label}: running elsewhere: {holder}")
            continue
        if store.claim(cell.name, worker, since):
            if row.state == "running":
                say(f"{label}: worker {row.worker} sent no heartbeat for {now - row.heartbeat:.0f} s: taking it over")
            elif row.state == "failed":
                say(f"{label}: failed before (exit code {row.exit_code}); trying again")
            say(f"{label}: training (attempt {row.attempts + 1}) on {worker}: {grid.command(cell)}")
            return cell
    return None


def work(grid, store, worker, max_cells, stop):
    """Claim and train cells until none is left, max_cells were trained, or a signal; returns (trained, busy)."""
    since = store.clock()  # cells that fail from now on are not retried by this worker
    trained, busy = [], {}
    while (max_cells is None or len(trained) < max_cells) and not stop.received:
        cell = next_cell(grid, store, worker, since, busy)
        if cell is None:
            break
        trained.append(cell.name)
        run_cell(grid, store, cell, worker, stop, busy)
    return trained, busy


def summarize(grid, store, trained, busy):
    """Print the grid's counts (done / running elsewhere / failed / left) and failures; returns the exit code."""
    rows = store.rows()
    states = {cell.name: rows[cell.name].state if cell.name in rows else "pending" for cell in grid.cells}
    elsewhere = [name for name, state in states.items() if state == "running" or (state == "pending" and name in busy)]
    failed = [name for name, state in states.items() if state == "failed"]
    done = sum(state == "done" for state in states.values())
    left = len(states) - done - len(elsewhere) - len(failed)
    say(f"sweep {store.sweep}: {len(states)} cells: {done} done, {len(elsewhere)} running elsewhere, "
        f"{len(failed)} failed, {left} left; this worker trained {len(trained)} ({store.shown})")
    for name in failed:
        say(f"  failed: {name} (exit code {rows[name].exit_code}): {rows[name].detail or 'no error line'}")
    if failed or elsewhere or left:
        say("rerun the command later to retry failed cells, take over a cell whose worker stopped (no heartbeat "
            f"for {grace_s():g} s) and train what is left; every run resumes from its saved epochs")
    return 1 if failed else 0


def print_cells(grid, study, url):
    """--dry-run: the cells in priority order with their folders' progress and commands; nothing is opened."""
    try:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:  # not a URL: the real run says so when it opens it
        shown = url
    say(f"sweep {study}: {len(grid.cells)} cells of {grid.run} in priority order; storage {shown} "
        "(dry run: not opened, nothing trained)")
    for cell in grid.cells:
        say(f"  {cell.position}/{len(grid.cells)} {cell.name} [{folder_progress(cell)}]: {grid.command(cell)}")


def run_sweep(grid, study, url, max_cells=None):
    """Be one worker of the sweep: claim and train cells until none is left; returns 0, or 1 if a cell failed."""
    store = None
    try:
        store = SweepStore(url, study)
        store.add_cells(grid.cells, grid.command)
        worker = f"{socket.gethostname()}:{os.getpid()}"
        say(f"sweep {study}: {len(grid.cells)} cells of {grid.run}; worker {worker}; storage {store.shown}")
        with StopSignals() as stop:
            trained, busy = work(grid, store, worker, max_cells, stop)
        code = summarize(grid, store, trained, busy)
    except sa.exc.SQLAlchemyError as e:
        shown = store.shown if store else url
        raise UserError(f"storage {shown} failed: {short_reason(e)}; the run folders keep their results: "
                        "rerun the command to continue") from None
    if stop.received:
        raise Interrupted(f"stopped by {stop.received[0]}; a stopped cell is released and resumes from its saved "
                          "epochs when the command runs again")
    return code
