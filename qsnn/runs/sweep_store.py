"""The sweep's shared table: a row per cell in the database of the Optuna RDB storage that tune.py uses.

Every worker (sweep.py on one machine, or on several GPUs or machines with one --storage) works from one table,
qsnn_sweep_cells, opened by qsnn.runs.tuning.open_storage (SQLite by default, PostgreSQL across machines). A row
holds the cell's state (pending, running, done, failed), the worker holding it, that worker's heartbeat and the
run's outcome. Every change is one conditional UPDATE, which the database applies atomically: of two workers
racing for a cell exactly one changes the row. Times are on the database's clock, one clock for all machines.
"""
import time

import sqlalchemy as sa

from qsnn.runs.tuning import open_storage

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


def db_now(conn):
    """The database's clock in seconds since 1970 (the local clock for a database without a known query)."""
    query = CLOCK_SQL.get(conn.dialect.name)
    return time.time() if query is None else float(conn.exec_driver_sql(query).scalar())


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

    def __init__(self, url, sweep, grace_s):
        """Open the table at url, creating it if need be; a running cell without a heartbeat for grace_s s is stale."""
        self.storage = open_storage(url, create=True)  # tune.py's URL, driver and SQLite busy-wait handling
        self.engine, self.sweep, self.grace_s = self.storage.engine, sweep, grace_s
        self.shown = self.engine.url.render_as_string(hide_password=True)
        create_table(self.engine)

    def where(self, name):
        """The SQL condition selecting one cell's row."""
        return sa.and_(CELLS.c.sweep == self.sweep, CELLS.c.cell == name)

    def claimable(self, now, since):
        """SQL: pending, or running without a heartbeat for the grace period, or failed before `since`."""
        return sa.or_(CELLS.c.state == "pending",
                      sa.and_(CELLS.c.state == "running", CELLS.c.heartbeat < now - self.grace_s),
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
