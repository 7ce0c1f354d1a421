"""Tests of sweep.py (qsnn/runs/sweep.py): two workers share a real 2x2 grid on the digits demo and train each cell
once; a finished folder is recorded without training; a killed worker's cell is taken over; failures, folders
held elsewhere and Ctrl-C are recorded as such (with a stand-in run.py that starts in a fraction of a second);
bad grid files are one error line each; results/sweeps/minima.json is the study reproduce.sh ran before."""
import fcntl
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sweep  # noqa: E402
from qsnn.runs import runlog  # noqa: E402
from qsnn.runs import sweep as sweeplib  # noqa: E402
from qsnn.runs.config import parse_args  # noqa: E402

# run.py's own --demo is 10 epochs at 25 steps; a cell here is the digits data at its cheapest.
DIGITS = {"dataset": "digits", "num_steps": 2, "epochs": 1, "patience": 1, "num_trials": 1, "batch_size": 256,
          "device": "cpu"}
AXES = {"seed": [0, 1], "precision": {"4bit": {"num_bits": 4}, "fp32": {"num_bits": None}}}
NAMES = ["digits_4bit_s0", "digits_fp32_s0", "digits_4bit_s1", "digits_fp32_s1"]  # the priority order
# A run.py stand-in: locks its folder as run.py does, logs each start, sleeps on its first start only (a later
# start is a resume), then writes status.json as finished, or fails as configured.
FAKE_RUN = '''"""A stand-in run.py for the sweep tests."""
import os
import sys
import time

sys.path.insert(0, REPO)
from qsnn.runs import runlog
from qsnn.runs.config import parse_args
from qsnn.errors import UserError

config = {"dataset": "digits", "exp_name": "", "output_dir": "runs", "data_dir": "data", "device": "cpu",
          "epochs": 1, "num_trials": 1, "seed": 0, "num_bits": 4, "first_seconds": 0.0, "exit_code": 0,
          "busy": False}

if __name__ == "__main__":
    cfg, _ = parse_args(config, sys.argv[1:])
    run_dir = runlog.run_folder(cfg)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        lock = runlog.lock_run_folder(run_dir)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    if cfg["busy"]:
        print(f"error: another run (process 1) is writing to {run_dir}; wait for it to end", file=sys.stderr)
        sys.exit(2)
    run_dir.mkdir(exist_ok=True)
    first = not (run_dir / "starts.log").exists()
    with open(run_dir / "starts.log", "a") as f:
        f.write(f"{os.getpid()}\\n")
    runlog.update_status(run_dir, 0, state="running", epochs_completed=0)
    time.sleep(cfg["first_seconds"] if first else 0)
    if cfg["exit_code"]:
        print("error: boom", file=sys.stderr)
        sys.exit(cfg["exit_code"])
    runlog.update_status(run_dir, 0, state="finished", reason="max_epochs", epochs_completed=cfg["epochs"],
                         best_score=50.0 + cfg["seed"])
    print(f"fake run {cfg['exp_name']} finished")
'''


def write_grid(folder, run="mnist/run.py", fixed=None, axes=None, name="digits_{precision}_s{seed}", **extra):
    """A grid file in folder whose runs go to folder/runs (default: the real 2x2 digits grid)."""
    grid = {"run": run, "fixed": {**(DIGITS if fixed is None else fixed), "output_dir": str(folder / "runs")},
            "axes": AXES if axes is None else axes, "name": name, **extra}
    path = folder / "grid.json"
    path.write_text(json.dumps(grid))
    return path


def write_fake_grid(folder, axes=None, name="fake_s{seed}", **fixed):
    """A grid over the stand-in run.py (written into folder) with the given fixed keys."""
    run = folder / "fake" / "run.py"
    run.parent.mkdir(parents=True, exist_ok=True)
    run.write_text(FAKE_RUN.replace("sys.path.insert(0, REPO)", f"sys.path.insert(0, {str(REPO)!r})"))
    return write_grid(folder, run=str(run), fixed=fixed, axes=axes or {"seed": [0]}, name=name)


def worker(grid, *extra, **popen):
    """A sweep.py worker process on grid, its output piped."""
    return subprocess.Popen([sys.executable, str(REPO / "sweep.py"), str(grid), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


def trained(out):
    """The cells a worker's output says it started training."""
    return [line.split()[3].rstrip(":") for line in out.splitlines() if ": training (attempt" in line]


def rows(url, study="grid"):
    """{cell: row} of a sweep in the database at url."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            table = sweeplib.CELLS
            return {r.cell: r for r in conn.execute(sa.select(table).where(table.c.sweep == study))}
    finally:
        engine.dispose()


def sqlite_url(folder):
    """sweep.py's default storage for a grid whose output_dir is folder/runs."""
    return f"sqlite:///{folder / 'runs.sweep.db'}"


def wait_for(test, timeout=60, what="a condition"):
    """Poll test() until it is true."""
    end = time.monotonic() + timeout
    while not test():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


def lock_is_free(run_dir):
    """True if no process holds run.py's lock on run_dir (the lock file beside it)."""
    path = run_dir.parent / f".{run_dir.name}.lock"
    if not path.exists():
        return True
    with open(path) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
    return True


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory):
    """Two sweep.py workers started at once on the real 2x2 digits grid: (folder, [(code, out, err)] per worker)."""
    folder = tmp_path_factory.mktemp("sweep")
    grid = write_grid(folder)
    workers = [worker(grid) for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    return folder, [(w.returncode, out, err) for w, (out, err) in zip(workers, outputs)]


def test_two_workers_train_every_cell_exactly_once(two_workers):
    folder, results = two_workers
    for code, out, err in results:
        assert code == 0, err[-3000:]
    started = [trained(out) for _, out, _ in results]
    assert all(started) and not set(started[0]) & set(started[1]), started  # both worked, never on one cell
    assert sorted(started[0] + started[1]) == sorted(NAMES)
    for out in (out for _, out, _ in results):  # each worker took cells in priority order
        assert trained(out) == [name for name in NAMES if name in trained(out)]
    table = rows(sqlite_url(folder))
    for name in NAMES:
        run_dir = folder / "runs" / name
        status = runlog.read_status(run_dir)["0"]
        assert status["state"] == "finished" and status["epochs_completed"] == 1
        assert "resumes" not in runlog.read_run_config(run_dir)  # one run.py run made the folder and finished it
        row = table[name]
        assert (row.state, row.attempts, row.exit_code) == ("done", 1, 0)
        assert row.best_score == status["best_score"]
    assert [r.cell for r in sorted(table.values(), key=lambda r: r.position)] == NAMES
    assert "4 cells: 4 done, 0 running elsewhere, 0 failed, 0 left" in results[0][1] + results[1][1]


def test_finished_cells_are_recorded_done_without_training(two_workers, capsys):
    folder, _ = two_workers
    grid = folder / "grid.json"
    configs = {name: (folder / "runs" / name / "config.json").read_text() for name in NAMES}
    assert sweep.main([str(grid)]) == 0  # the same sweep: nothing left to claim
    out = capsys.readouterr().out
    assert "4 cells: 4 done" in out and "this worker trained 0" in out and ": training" not in out
    assert sweep.main([str(grid), "--study", "fresh"]) == 0  # a new sweep over the same folders
    out = capsys.readouterr().out
    assert ": training" not in out
    assert out.count("recorded as done") == 4 and "already finished in" in out
    assert all(r.state == "done" and r.attempts == 0 for r in rows(sqlite_url(folder), "fresh").values())
    assert {name: (folder / "runs" / name / "config.json").read_text() for name in NAMES} == configs


def test_dry_run_lists_the_cells_in_priority_order_and_opens_nothing(tmp_path, capsys):
    grid = write_grid(tmp_path)
    assert sweep.main([str(grid), "--dry-run", "--data_dir", "elsewhere"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "4 cells of mnist/run.py in priority order" in lines[0] and "dry run" in lines[0]
    assert [line.split()[1] for line in lines[1:]] == NAMES
    assert lines[2].endswith(f"[not started]: python mnist/run.py --exp_name digits_fp32_s0 --dataset digits "
                             f"--num_steps 2 --epochs 1 --patience 1 --num_trials 1 --batch_size 256 --device cpu "
                             f"--output_dir {tmp_path / 'runs'} --data_dir elsewhere --seed 0 --num_bits None --resume")
    assert not (tmp_path / "runs.sweep.db").exists() and not any((tmp_path / "runs").iterdir())


def test_a_killed_worker_leaves_its_cell_to_the_next_worker(tmp_path, capfd, monkeypatch):
    grid = write_fake_grid(tmp_path, first_seconds=60.0)
    run_dir = tmp_path / "runs" / "fake_s0"
    first = worker(grid)
    wait_for(lambda: (run_dir / "starts.log").exists(), what="the first worker's run to start")
    first.kill()  # SIGKILL: no chance to release the cell or stop its run
    first.communicate()
    # Linux stops the run when its worker dies (it would otherwise keep the folder's lock for a minute).
    wait_for(lambda: lock_is_free(run_dir), timeout=10, what="the killed worker's run to stop")
    assert rows(sqlite_url(tmp_path))["fake_s0"].state == "running"  # the dead worker's claim is left behind
    monkeypatch.setattr(sweeplib, "HEARTBEAT_S", 0.2)  # so its lease is stale after 0.6 s, not 3 minutes
    time.sleep(1)
    assert sweep.main([str(grid)]) == 0
    out = capfd.readouterr().out
    assert f"worker {socket.gethostname()}:{first.pid} sent no heartbeat" in out and "taking it over" in out
    assert "training (attempt 2)" in out and "1 cells: 1 done" in out
    row = rows(sqlite_url(tmp_path))["fake_s0"]
    assert (row.state, row.attempts, row.exit_code, row.best_score) == ("done", 2, 0, 50.0)
    assert len((run_dir / "starts.log").read_text().split()) == 2  # the killed run, then its resume
    assert runlog.read_status(run_dir)["0"]["state"] == "finished"


def test_a_failed_run_is_recorded_and_retried_only_by_a_later_worker(tmp_path):
    grid = write_fake_grid(tmp_path, exit_code=3)
    done = worker(grid)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 1, err
    assert "fake_s0: failed with exit code 3: error: boom" in out and trained(out) == ["fake_s0"]  # tried once
    assert "1 cells: 0 done, 0 running elsewhere, 1 failed" in out
    assert "failed: fake_s0 (exit code 3): error: boom" in out
    row = rows(sqlite_url(tmp_path))["fake_s0"]
    assert (row.state, row.attempts, row.exit_code, row.detail) == ("failed", 1, 3, "error: boom")
    again = worker(grid)
    out, _ = again.communicate(timeout=60)
    assert "failed before (exit code 3); trying again" in out and "training (attempt 2)" in out
    assert rows(sqlite_url(tmp_path))["fake_s0"].attempts == 2


def test_a_folder_held_by_another_process_is_left_to_it(tmp_path):
    grid = write_fake_grid(tmp_path)
    run_dir = tmp_path / "runs" / "fake_s0"
    run_dir.parent.mkdir()
    lock = runlog.lock_run_folder(run_dir)  # as a run.py started outside the sweep holds it
    try:
        held = worker(grid)
        out, err = held.communicate(timeout=60)
    finally:
        lock.close()
    assert held.returncode == 0, err
    assert f"running elsewhere: another run (process {os.getpid()}) is writing to {run_dir}" in out
    assert "1 cells: 0 done, 1 running elsewhere, 0 failed, 0 left" in out and not trained(out)
    assert rows(sqlite_url(tmp_path))["fake_s0"].state == "pending" and not run_dir.exists()
    free = worker(grid)
    out, _ = free.communicate(timeout=60)
    assert trained(out) == ["fake_s0"] and "1 cells: 1 done" in out


def test_a_run_that_finds_its_folder_taken_gives_the_cell_back(tmp_path):
    grid = write_fake_grid(tmp_path, busy=True)  # the lock was taken between the worker's check and the run
    busy = worker(grid)
    out, err = busy.communicate(timeout=60)
    assert busy.returncode == 0, err
    assert "fake_s0: running elsewhere: another run (process 1) is writing to" in out
    assert "1 running elsewhere" in out
    row = rows(sqlite_url(tmp_path))["fake_s0"]
    assert (row.state, row.attempts) == ("pending", 1)


def test_ctrl_c_stops_the_running_cell_once_and_gives_it_back(tmp_path):
    grid = write_fake_grid(tmp_path, first_seconds=60.0)
    stopped = worker(grid)
    wait_for(lambda: (tmp_path / "runs" / "fake_s0" / "starts.log").exists(), what="the run to start")
    stopped.send_signal(signal.SIGINT)
    out, err = stopped.communicate(timeout=60)
    assert stopped.returncode == 130, err
    assert "SIGINT received: the running cell saves and stops" in err
    assert "fake_s0: stopped; its completed epochs are saved" in out
    assert err.strip().splitlines()[-1].startswith("error: stopped by SIGINT")
    assert rows(sqlite_url(tmp_path))["fake_s0"].state == "pending"


@pytest.mark.parametrize("grid_text, message", [
    ("{\"run\": ", "is not JSON: Expecting value at line 1, column 9"),
    ("[1, 2]", "must hold a JSON object"),
    (json.dumps({"run": "mnist/run.py", "axes": AXES}), "lacks name"),
    (json.dumps({"run": "mnist/run.py", "axes": AXES, "name": "x_{seed}_{precision}", "seeds": [1]}),
     "has unknown keys seeds"),
    ('{"run": "mnist/run.py", "axes": {}, "name": "a", "name": "b"}', "key 'name' is given twice"),
    (json.dumps({"run": "nowhere/run.py", "axes": AXES, "name": "x"}), "run 'nowhere/run.py' is not a file"),
    (json.dumps({"run": "mnist/run.py", "fixed": {"epochz": 1}, "axes": AXES, "name": "{seed}{precision}"}),
     "fixed sets 'epochz', which is not a key of mnist/run.py; valid keys: dataset, exp_name"),
    (json.dumps({"run": "mnist/run.py", "axes": {"seed": [0], "p": {"a": {"bitz": 4}}}, "name": "{seed}{p}"}),
     "variant 'a' of axis 'p' sets 'bitz', which is not a key of mnist/run.py"),
    (json.dumps({"run": "mnist/run.py", "fixed": {"exp_name": "x"}, "axes": AXES, "name": "{seed}{precision}"}),
     "fixed sets exp_name: the name pattern sets it"),
    (json.dumps({"run": "mnist/run.py", "axes": {"seeds": [0, 1]}, "name": "s{seeds}"}),
     "axis 'seeds' is a list, which stands for values of the run.py key 'seeds'"),
    (json.dumps({"run": "mnist/run.py", "axes": AXES, "name": "x_{precision"}), "is not a valid pattern"),
    (json.dumps({"run": "mnist/run.py", "axes": AXES, "name": "x_{precision}_{seeds}"}),
     "names {seeds}, which is not an axis; axes: seed, precision"),
    (json.dumps({"run": "mnist/run.py", "axes": AXES, "name": "x_{precision}"}), "leaves out axis 'seed'"),
    (json.dumps({"run": "mnist/run.py", "axes": AXES, "name": "x/{precision}_{seed}"}),
     "cell 'x/4bit_0' (name 'x/{precision}_{seed}'): --exp_name 'x/4bit_0' is not allowed; use a plain folder"),
    (json.dumps({"run": "mnist/run.py", "axes": AXES, "name": "x" * 300 + "{precision}_{seed}"}),
     "characters is too long"),
    (json.dumps({"run": "mnist/run.py", "fixed": {"num_bits": 8}, "axes": AXES, "name": "{seed}{precision}"}),
     "num_bits is set by both fixed and axis 'precision'"),
    (json.dumps({"run": "mnist/run.py", "axes": {"seed": [0], "p": {"a": {"num_bits": "four"}}},
                 "name": "s{seed}{p}"}),
     "cell 's0a' (name 's{seed}{p}'): --num_bits expects int or a list of ints, one per layer (e.g. 8,4,4,4) or None, got 'four'"),
])
def test_a_bad_grid_file_is_one_error_line(tmp_path, capsys, grid_text, message):
    grid = tmp_path / "grid.json"
    grid.write_text(grid_text)
    assert sweep.main([str(grid), "--output_dir", str(tmp_path / "runs")]) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith(f"error: grid {grid}") and message in captured.err, captured.err
    assert len(captured.err.splitlines()) == 1 and not captured.out


def test_the_script_reports_mistakes_in_one_line_without_a_traceback(tmp_path):
    (tmp_path / "bad.json").write_text("not json")
    good = str(write_grid(tmp_path))
    for argv, message in [([str(tmp_path / "bad.json")], "is not JSON"),
                          ([str(tmp_path / "missing.json")], "cannot read grid"),
                          ([good, "--max-cells", "0"], "--max-cells 0 is not allowed"),
                          ([good, "--bogus"], "unrecognized arguments: --bogus")]:
        done = subprocess.run([sys.executable, str(REPO / "sweep.py"), *argv], capture_output=True, text=True)
        assert done.returncode == 2 and done.stderr.startswith("error: ") and message in done.stderr, done.stderr
        assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr


def test_the_minima_grid_is_the_study_reproduce_sh_started(tmp_path):
    """results/sweeps/minima.json gives the 18 runs of reproduce.sh's former for-loops, in their order."""
    defaults = runpy.run_path(str(REPO / "fashion_mnist" / "run.py"))["config"]
    grid = sweeplib.load_grid(REPO / "results" / "sweeps" / "minima.json", data_dir="D", output_dir=str(tmp_path))
    loops = []
    for seed in (0, 1, 2):
        for bits in ("4", "None"):
            for schedule, args in [("periodic", ["--scheduler", "cosine", "--t_max", "938"]),
                                   ("monotone", ["--scheduler", "cosine", "--t_max", "8442"]),
                                   ("constant", ["--scheduler", "constant"])]:
                precision = "fp32" if bits == "None" else f"{bits}bit"
                name = f"fashion_mnist_T10_{precision}_{schedule}_s{seed}"
                argv = ["--data_dir", "D", "--output_dir", str(tmp_path), "--exp_name", name, "--seed", str(seed),
                        "--num_trials", "1", "--num_bits", bits, "--num_steps", "10", "--epochs", "18",
                        "--patience", "18", "--snapshots", "epoch", *args, "--resume"]
                loops.append((name, parse_args(defaults, argv)[0]))
    assert [(cell.name, cell.cfg) for cell in grid.cells] == loops
    assert all(cell.argv[-1] == "--resume" for cell in grid.cells)


def test_trial_done_is_run_py_s_rule():
    from qsnn.runs.experiment import is_done

    cfg = {"epochs": 5}
    for status in [{}, {"state": "running", "epochs_completed": 3}, {"state": "failed"},
                   {"state": "finished", "reason": "max_epochs", "epochs_completed": 5},
                   {"state": "finished", "reason": "max_epochs", "epochs_completed": 3},
                   {"state": "finished", "reason": "patience", "epochs_completed": 3},
                   {"state": "interrupted", "epochs_completed": 2}]:
        assert sweeplib.trial_done(status, cfg) == is_done(status, cfg), status
