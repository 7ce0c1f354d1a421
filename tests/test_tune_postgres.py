"""tune.py against a real PostgreSQL server: two workers share one study, as in the README's multi-machine search.

A throw-away server (PostgreSQL's own initdb and pg_ctl, e.g. Debian's `postgresql` package) runs on 127.0.0.1
for this file only; the tests are skipped with the reason when no server can run or psycopg2 is missing.
"""
import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]
pytest.importorskip("psycopg2", reason="psycopg2 is missing: pip install psycopg2-binary")
sys.path.insert(0, str(REPO))

import tune  # noqa: E402


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_programs():
    """The folder holding initdb and pg_ctl: PATH's, else the newest under /usr/lib/postgresql; None if none."""
    on_path = shutil.which("initdb")
    folders = [str(Path(on_path).resolve().parent)] if on_path else []
    folders += sorted((str(Path(p).parent) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")),
                      key=lambda f: int(Path(f).parent.name) if Path(f).parent.name.isdigit() else 0, reverse=True)
    return next((f for f in folders if os.access(Path(f) / "pg_ctl", os.X_OK)), None)


def as_server_user(folder):
    """A command prefix that runs PostgreSQL's programs as a user they accept, owning folder.

    The server refuses to run as root, so under root the programs run as `postgres` (or `nobody`).
    """
    if os.geteuid() != 0:
        return []
    import pwd

    user = next((name for name in ("postgres", "nobody") if name in {p.pw_name for p in pwd.getpwall()}), None)
    runuser = shutil.which("runuser")
    if user is None or runuser is None:
        pytest.skip("running as root without a 'postgres' or 'nobody' user and runuser to start PostgreSQL with")
    entry = pwd.getpwnam(user)
    for path in [folder, *Path(folder).rglob("*")]:
        os.chown(path, entry.pw_uid, entry.pw_gid)
    return [runuser, "-u", user, "--"]


@pytest.fixture(scope="module")
def postgres_url():
    """The URL of database qsnn on a fresh server that is stopped and deleted after this file's tests."""
    programs = server_programs()
    if programs is None:
        pytest.skip("no PostgreSQL server programs (initdb, pg_ctl): apt-get install postgresql")
    # Under root, a folder the server user can reach: pytest's tmp folders are private to root.
    folder = Path(tempfile.mkdtemp(prefix="qsnn-pg-"))
    try:
        prefix = as_server_user(folder)
        data, port = folder / "data", free_port()
        run = [*prefix, f"{programs}/initdb", "-D", str(data), "-U", "qsnn", "-A", "trust", "-E", "UTF8", "--no-sync"]
        done = subprocess.run(run, capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"initdb failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
        # TCP on 127.0.0.1 only (no Unix socket), no fsync: a throw-away server.
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off"
        start = [*prefix, f"{programs}/pg_ctl", "-D", str(data), "-l", str(folder / "server.log"), "-w", "-t", "30",
                 "-o", options, "start"]
        if subprocess.run(start, capture_output=True, text=True).returncode:
            log = (folder / "server.log").read_text() if (folder / "server.log").exists() else ""
            pytest.skip(f"PostgreSQL did not start: {log.strip().splitlines()[-1:]}")
        try:
            import psycopg2

            connection = psycopg2.connect(host="127.0.0.1", port=port, user="qsnn", dbname="postgres")
            connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
            connection.cursor().execute("CREATE DATABASE qsnn")
            connection.close()
            yield f"postgresql+psycopg2://qsnn@127.0.0.1:{port}/qsnn"
        finally:
            subprocess.run([*prefix, f"{programs}/pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"],
                           capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def tune_argv(root, url, *extra):
    """tune.py arguments of a tiny digits-demo study 'pg' in the database at url."""
    return ["mnist", "--demo", "--study", "pg", "--storage", url, "--set", f"output_dir={root}",
            "--set", "num_steps=2", "--set", "batch_size=256", "--set", "device=cpu", *extra]


def test_two_workers_share_a_postgresql_study(postgres_url, tmp_path, capsys):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on few cores: don't oversubscribe
    argv = [sys.executable, str(REPO / "tune.py"),
            *tune_argv(tmp_path, postgres_url, "--n-trials", "4", "--epochs", "1")]
    workers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-2000:]
    ran = [{int(line.split()[2].rstrip(":")) for line in out.splitlines() if line.startswith("optuna trial ")}
           for out, _ in outputs]
    trials = optuna.load_study(study_name="pg", storage=postgres_url).trials
    # 4 trials; a 5th only when both workers finish a trial at the same moment and each starts one more
    # (Optuna's MaxTrialsCallback counts, then asks: not one step).
    assert len(trials) in (4, 5) and [t.state.name for t in trials] == ["COMPLETE"] * len(trials)
    assert all(ran) and ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == set(range(len(trials))), ran
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({tuple(sorted(t.params.items())) for t in trials}) == len(trials)  # no setting trained twice

    out = tmp_path / "best.json"
    assert tune.main(tune_argv(tmp_path, postgres_url, "--best", "--out", str(out))) == 0
    shown = capsys.readouterr().out
    assert f"{len(trials)} trials: {len(trials)} complete" in shown
    best = trials[int(shown.split("best trial ")[1].split(":")[0])]  # ties: any trial with the best value
    assert best.value == max(t.value for t in trials)
    assert f"validation accuracy {best.value:.2f}%" in shown
    assert {k: json.loads(out.read_text())[k] for k in best.params} == best.params
