"""sweep.py against a real PostgreSQL server, as several machines would share a grid: two workers split it, and
a killed worker's cell is taken over on the database's clock.

The server is tests/test_tune_postgres.py's throw-away one on 127.0.0.1 (PostgreSQL's initdb and pg_ctl); the
tests are skipped with the reason when no server can run or psycopg2 is missing. The cells use test_sweep.py's
stand-in run.py: what is tested here is the sharing, test_sweep.py trains real cells.
"""
import socket
import time

from test_sweep import lock_is_free, rows, sweep, sweeplib, trained, wait_for, worker, write_fake_grid
from test_tune_postgres import postgres_url  # noqa: F401  (the fixture: a fresh server for this file)

AXES = {"seed": [0, 1], "bits": {"4": {"num_bits": 4}, "8": {"num_bits": 8}}}
NAMES = ["fake_4bit_s0", "fake_8bit_s0", "fake_4bit_s1", "fake_8bit_s1"]


def test_two_workers_share_a_grid_in_postgresql(postgres_url, tmp_path):  # noqa: F811
    grid = write_fake_grid(tmp_path, axes=AXES, name="fake_{bits}bit_s{seed}", first_seconds=1.0)
    workers = [worker(grid, "--storage", postgres_url, "--study", "shared") for _ in range(2)]
    outputs = [w.communicate(timeout=120) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[-3000:]
    started = [trained(out) for out, _ in outputs]
    assert all(started) and not set(started[0]) & set(started[1]), started
    assert sorted(started[0] + started[1]) == sorted(NAMES)
    table = rows(postgres_url, "shared")
    for name in NAMES:
        assert len((tmp_path / "runs" / name / "starts.log").read_text().split()) == 1  # run once
        assert (table[name].state, table[name].attempts, table[name].exit_code) == ("done", 1, 0)
    assert "4 cells: 4 done, 0 running elsewhere, 0 failed, 0 left" in outputs[0][0] + outputs[1][0]


def test_a_killed_worker_s_cell_is_taken_over_in_postgresql(postgres_url, tmp_path, capfd, monkeypatch):  # noqa: F811
    grid = write_fake_grid(tmp_path, first_seconds=60.0)
    run_dir = tmp_path / "runs" / "fake_s0"
    first = worker(grid, "--storage", postgres_url, "--study", "killed")
    wait_for(lambda: (run_dir / "starts.log").exists(), what="the first worker's run to start")
    first.kill()
    first.communicate()
    wait_for(lambda: lock_is_free(run_dir), timeout=10, what="the killed worker's run to stop")
    assert rows(postgres_url, "killed")["fake_s0"].state == "running"
    monkeypatch.setattr(sweeplib, "HEARTBEAT_S", 0.2)  # stale after 0.6 s on the server's clock
    time.sleep(1)
    assert sweep.main([str(grid), "--storage", postgres_url, "--study", "killed"]) == 0
    out = capfd.readouterr().out
    assert f"worker {socket.gethostname()}:{first.pid} sent no heartbeat" in out and "training (attempt 2)" in out
    row = rows(postgres_url, "killed")["fake_s0"]
    assert (row.state, row.attempts, row.best_score) == ("done", 2, 50.0)


def test_a_live_worker_s_cell_is_not_taken_over(postgres_url, tmp_path, capfd):  # noqa: F811
    grid = write_fake_grid(tmp_path, first_seconds=3.0)
    run_dir = tmp_path / "runs" / "fake_s0"
    first = worker(grid, "--storage", postgres_url, "--study", "live")
    wait_for(lambda: (run_dir / "starts.log").exists(), what="the first worker's run to start")
    assert sweep.main([str(grid), "--storage", postgres_url, "--study", "live"]) == 0  # heartbeat is fresh
    out = capfd.readouterr().out
    assert "1 cells: 0 done, 1 running elsewhere" in out and ": training" not in out
    first.communicate(timeout=60)
    assert first.returncode == 0
    assert rows(postgres_url, "live")["fake_s0"].attempts == 1

