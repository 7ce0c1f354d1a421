"""One worker of a sweep that scales out: claims cells of a grid and trains each in a run.py subprocess (the
library behind sweep.py's command line).

The grid file and its cells: qsnn.runs.sweep_grid. Every worker (sweep.py on one machine, or on several GPUs or
machines with one --storage) works from one table of cells in a shared database: qsnn.runs.sweep_store. A cell's
run is `python RUN.py --exp_name NAME <overrides> --resume`, started as a subprocess (qsnn.runs.sweep_process): a
crash of one run does not stop its worker, and every run continues from its last saved epoch.

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
import os
import signal
import socket
import threading
import time

import sqlalchemy as sa

from qsnn.errors import UserError
from qsnn.runs.sweep_folders import BUSY, folder_holder, folder_progress, folder_result, trial_done
from qsnn.runs.sweep_grid import Cell, Grid, default_storage, load_grid
from qsnn.runs.sweep_process import StopSignals, error_line, forward_stderr, start_run
from qsnn.runs.sweep_store import CELLS, SweepStore
from qsnn.runs.tuning import HEARTBEAT_S

# The sweep's public names, all importable from here as they were before the grid, its folders and the table had
# modules of their own (tests/test_sweep.py reads CELLS and calls load_grid and trial_done through this module).
__all__ = ["CELLS", "Cell", "Grid", "Interrupted", "SweepStore", "default_storage", "load_grid", "print_cells",
           "run_sweep", "trial_done"]

GRACE_BEATS = 3  # as tune.py: a lease is stale after 3 missed heartbeats
STOPPED_CODES = {130, -signal.SIGINT, -signal.SIGTERM}  # run.py stopped by a signal, its epochs saved


class Interrupted(UserError):
    """The worker stopped on SIGINT/SIGTERM after its running cell saved and was released."""
    exit_code = 130


def say(line):
    """One line of the worker's log, flushed so a log file shows it at once."""
    print(line, flush=True)


def grace_s():
    """Seconds without a heartbeat after which a running cell's worker counts as dead."""
    return GRACE_BEATS * HEARTBEAT_S


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
        store = SweepStore(url, study, grace_s())
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
