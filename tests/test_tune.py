"""Tests of tune.py (qsnn/runs/tuning.py): a tiny real study on scikit-learn digits, two workers sharing
one SQLite study, --best, pruning and Ctrl-C with a stand-in trainer, and one-line user errors."""

import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tune  # noqa: E402
from qsnn.runs import tuning  # noqa: E402
from qsnn.runs.config import parse_args, read_config_file, validate  # noqa: E402

MNIST = runpy.run_path(str(REPO / "mnist" / "run.py"))
TINY = ["--set", "num_steps=4", "--set", "batch_size=128", "--set", "device=cpu"]


def tune_argv(root, study, *extra):
    """tune.py arguments for a demo study whose database, trial folders and best JSON live under root."""
    return ["mnist", "--demo", "--study", study, "--set", f"output_dir={root}", *TINY, *extra]


def load(root, study):
    """The study at tune.py's default storage for output_dir=root."""
    return optuna.load_study(study_name=study, storage=f"sqlite:///{root / 'tune' / (study + '.db')}")


def states(study):
    """Trial state names in trial-number order."""
    return [t.state.name for t in sorted(study.trials, key=lambda t: t.number)]


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory):
    """A real 3-trial study (2 epochs each) on the digits demo; returns (root, exit code)."""
    import torch

    root = tmp_path_factory.mktemp("tune")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches on shared cores: more threads only wait on each other
    try:
        code = tune.main(tune_argv(root, "demo", "--n-trials", "3", "--epochs", "2", "--sampler-seed", "0"))
    finally:
        torch.set_num_threads(threads)
    return root, code


def test_study_finishes_and_writes_a_config_run_py_accepts(demo_study):
    root, code = demo_study
    assert code == 0
    study = load(root, "demo")
    assert states(study).count("COMPLETE") + states(study).count("PRUNED") == 3
    out = root / "tune" / "demo_best.json"
    values = read_config_file(out, MNIST["config"])  # what `python mnist/run.py --config out` reads
    cfg, _ = parse_args(MNIST["config"], ["--config", str(out)], MNIST["demo"])
    assert cfg == {**MNIST["config"], **values}
    validate({**cfg, "output_dir": str(root)})  # output_dir only so the writable probe stays in tmp
    assert values["dataset"] == "digits"
    # The full protocol, not the search's: run.py's val_split, the demo's epochs and num_steps.
    assert values["val_split"] == MNIST["config"]["val_split"]
    assert values["epochs"] == MNIST["demo"]["epochs"]
    assert values["num_steps"] == MNIST["demo"]["num_steps"]
    assert {k: values[k] for k in study.best_params} == study.best_params


def test_each_trial_logs_validation_accuracy_in_its_run_folder(demo_study):
    root, _ = demo_study
    for trial in load(root, "demo").trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir == root / "tune" / "demo" / f"trial_{trial.number}"
        header = (run_dir / f"acc_trial_{trial.number}_t{trial.number}.csv").read_text().splitlines()[0]
        assert "val_acc" in header.split(",")
        assert json.loads((run_dir / "config.json").read_text())["config"]["val_split"] == 0.1


def test_best_only_reads_the_study(demo_study, monkeypatch, capsys):
    root, _ = demo_study
    monkeypatch.setattr("qsnn.runs.trial.run_trial", lambda *a, **k: pytest.fail("--best must not train"))
    before = load(root, "demo")
    out = root / "again.json"
    assert tune.main(tune_argv(root, "demo", "--best", "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert f"best trial {before.best_trial.number}: validation accuracy {before.best_value:.2f}%" in text
    assert "3 trials:" in text
    assert json.loads(out.read_text()) == json.loads((root / "tune" / "demo_best.json").read_text())
    assert len(load(root, "demo").trials) == len(before.trials)


def test_two_workers_share_one_study(tmp_path):
    argv = [sys.executable, str(REPO / "tune.py"), *tune_argv(tmp_path, "shared", "--n-trials", "2", "--epochs", "2")]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two workers on few cores: don't oversubscribe
    workers = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for _ in range(2)]
    outputs = [w.communicate(timeout=300) for w in workers]
    for worker, (out, err) in zip(workers, outputs):
        assert worker.returncode == 0, err[-2000:]
    ran = [{int(line.split()[2].rstrip(":")) for line in out.splitlines() if line.startswith("optuna trial ")}
           for out, _ in outputs]
    assert all(ran), "each worker should have run a trial"
    assert ran[0].isdisjoint(ran[1]) and ran[0] | ran[1] == {0, 1}
    for numbers, (out, _) in zip(ran, outputs):  # each trial's epoch lines carry its study trial number
        assert {int(line.split()[1]) for line in out.splitlines() if " epoch " in line and line.startswith("trial ")} \
            == numbers
    assert states(load(tmp_path, "shared")) == ["COMPLETE", "COMPLETE"]


def fake_trainer(score_of, interrupt_trial=None):
    """A stand-in for qsnn.runs.trial.run_trial: reports score_of(trial number) each epoch, no training.

    On interrupt_trial it sends itself SIGINT and stops the way run_trial does once should_stop is set.
    """
    from qsnn.core.loop import StopRequested

    def run_trial(cfg, k, loaders, generator, run_dir, device, should_stop, resume=False, on_epoch=None):
        number = int(cfg["exp_name"].split("_")[1])
        assert k == number and run_dir.name == f"trial_{number}"  # lines and files name the study's trial
        if number == interrupt_trial:
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(200):
                if should_stop():
                    raise StopRequested
                time.sleep(0.01)
            pytest.fail("SIGINT did not reach should_stop")
        for epoch in range(1, cfg["epochs"] + 1):
            on_epoch(epoch, score_of(number))
        return SimpleNamespace(best_score=score_of(number), best_epoch=cfg["epochs"], epoch=cfg["epochs"])

    return run_trial


@pytest.fixture
def no_data(monkeypatch):
    """Skip loading digits for tests whose trainer is a stand-in."""
    monkeypatch.setattr("qsnn.data.loaders.make_loaders", lambda cfg, device, generator: {})


def test_poor_trials_are_pruned_and_count_towards_n_trials(tmp_path, monkeypatch, no_data, capsys):
    monkeypatch.setattr("qsnn.runs.trial.run_trial", fake_trainer(lambda n: 80.0 if n < 2 else 10.0))
    argv = tune_argv(tmp_path, "prune", "--n-trials", "4", "--epochs", "3", "--prune-startup", "2")
    assert tune.main(argv) == 0
    assert states(load(tmp_path, "prune")) == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]
    status = json.loads((tmp_path / "tune" / "prune" / "trial_2" / "status.json").read_text())
    assert status["trials"]["2"]["reason"] == "pruned"
    assert "2 complete, 2 pruned" in capsys.readouterr().out


def test_ctrl_c_fails_the_running_trial_and_a_rerun_continues(tmp_path, monkeypatch, no_data, capsys):
    argv = tune_argv(tmp_path, "stop", "--n-trials", "3", "--epochs", "1")
    monkeypatch.setattr("qsnn.runs.trial.run_trial", fake_trainer(lambda n: 50.0 + n, interrupt_trial=1))
    handler = signal.getsignal(signal.SIGINT)
    assert tune.main(argv) == 130
    assert states(load(tmp_path, "stop")) == ["COMPLETE", "FAIL"]
    assert "Rerun the same command" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is handler  # the Ctrl-C handler is restored
    monkeypatch.setattr("qsnn.runs.trial.run_trial", fake_trainer(lambda n: 50.0 + n))
    assert tune.main(argv) == 0
    assert states(load(tmp_path, "stop")) == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert tune.main(argv) == 0  # already 3 finished: nothing more runs
    assert len(load(tmp_path, "stop").trials) == 4
    assert "best trial 3" in capsys.readouterr().out


def test_a_hard_killed_workers_trial_stops_counting(tmp_path, monkeypatch, no_data):
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)  # Optuna fails a RUNNING trial whose heartbeat is > 3 s old
    url = f"sqlite:///{tmp_path / 'tune' / 'killed.db'}"
    storage = tuning.open_storage(url, create=True)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna expects heartbeats from optimize, not ask
        abandoned = optuna.create_study(study_name="killed", storage=storage, direction="maximize").ask()
    storage.record_heartbeat(abandoned._trial_id)  # then its worker dies: no more heartbeats
    time.sleep(4.2)  # > 3 s even where the database keeps whole seconds (SQLite)
    monkeypatch.setattr("qsnn.runs.trial.run_trial", fake_trainer(lambda n: 50.0))
    assert tune.main(tune_argv(tmp_path, "killed", "--n-trials", "1", "--epochs", "1")) == 0
    assert states(load(tmp_path, "killed")) == ["FAIL", "COMPLETE"]


def one_error_line(capsys):
    """stderr of the last call, which must be exactly one 'error: ...' line."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_bad_dataset_exits_2_with_one_line():
    result = subprocess.run([sys.executable, str(REPO / "tune.py"), "cifar10"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown dataset 'cifar10'; choose one of mnist, fashion_mnist, dvs128_gesture"]


@pytest.mark.parametrize("spec", ["lr", "lr=abc:1", "lr=1e-3", "nokey=1:2", "beta=0.9:0.5", "lr=0:1:log",
                                  "lr=1e-4:1e-2:ln", "beta=0.5:2", "dropout=0:1", "epochs=1:5", "scheduler=1:2",
                                  "num_steps=2.5:8", "lr=1e-4:inf:log", "lr=nan:1e-2", "beta=0.5:nan",
                                  "lr=1e-4:1e999", "num_steps=2:inf", "lr=0.01,nan", "beta=-inf:0.9"])
def test_bad_range_exits_2_with_one_line(tmp_path, spec, capsys):
    assert tune.main(tune_argv(tmp_path, "bad", "--range", spec)) == 2
    assert spec in one_error_line(capsys)
    assert not (tmp_path / "tune" / "bad.db").exists()


@pytest.mark.parametrize("extra", [["--val-split", "0"], ["--set", "epochs=3"], ["--set", "nokey=1"],
                                   ["--set", "lr=0.01", "--range", "lr=1e-4:1e-2"], ["--epochs", "x"],
                                   ["--study", "a/b"], ["--set", "lr=inf"], ["--set", "lr=nan"],
                                   ["--set", "lr=1e999"], ["--set", "beta=-1e999"]])
def test_other_mistakes_exit_2_with_one_line(tmp_path, extra, capsys):
    assert tune.main(tune_argv(tmp_path, "bad", *extra)) == 2
    one_error_line(capsys)
    assert not (tmp_path / "tune" / "bad.db").exists()


@pytest.mark.parametrize("storage, blocked, says", [
    ("sqlite:////proc/q/x.db", None, "cannot open --storage sqlite:////proc/q/x.db: No such file or directory"),
    ("sqlite:////proc/x.db", None, "cannot open --storage sqlite:////proc/x.db: its folder /proc takes no new files"),
    ("not a url", None, "cannot open --storage not a url: Could not parse SQLAlchemy URL"),
    ("nosuchdb://h/x", None, "cannot open --storage nosuchdb://h/x: Can't load plugin"),
    ("postgresql+psycopg2://me:secret@127.0.0.1:1/qsnn", "psycopg2",
     "cannot open --storage postgresql+psycopg2://me:***@127.0.0.1:1/qsnn: the driver psycopg2 is not installed: "
     "pip install psycopg2-binary"),
    ("postgresql+pg8000://h/x", "pg8000", "the driver pg8000 is not installed: pip install pg8000, or pip install "
     "psycopg2-binary and write postgresql+psycopg2://..."),
    ("mysql://h/x", "MySQLdb", "the driver MySQLdb is not installed: pip install mysqlclient")])
def test_storage_that_cannot_be_opened_exits_2_with_one_line(tmp_path, monkeypatch, capsys, storage, blocked, says):
    if blocked:
        monkeypatch.setitem(sys.modules, blocked, None)  # as if the driver were not installed
    assert tune.main(tune_argv(tmp_path, "bad", "--storage", storage)) == 2
    assert says in one_error_line(capsys)


def test_default_postgresql_driver_missing_names_both_fixes(tmp_path, monkeypatch, capsys):
    from sqlalchemy.engine import make_url

    driver = make_url("postgresql://h/x").get_dialect().driver  # psycopg2 in SQLAlchemy 2.0, psycopg in 2.1
    monkeypatch.setitem(sys.modules, driver, None)
    assert tune.main(tune_argv(tmp_path, "bad", "--storage", "postgresql://h/x")) == 2
    line = one_error_line(capsys)
    assert f"the driver {driver} is not installed: pip install " in line
    assert ("psycopg2-binary" in line) and (driver == "psycopg2" or "postgresql+psycopg2://" in line)


def test_unreachable_database_exits_2_with_one_line(tmp_path, capsys):
    pytest.importorskip("psycopg2")
    url = f"postgresql+psycopg2://me:secret@127.0.0.1:{free_port()}/qsnn"
    assert tune.main(tune_argv(tmp_path, "bad", "--storage", url)) == 2
    line = one_error_line(capsys)
    assert "Connection refused" in line and "secret" not in line


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (just now)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_best_of_a_missing_study_exits_2(demo_study, capsys):
    root, _ = demo_study
    argv = tune_argv(root, "nope", "--best", "--storage", f"sqlite:///{root / 'tune' / 'demo.db'}")
    assert tune.main(argv) == 2
    assert "it holds: demo" in one_error_line(capsys)
    assert tune.main(tune_argv(root, "nope", "--best")) == 2  # no database file: not created
    assert "no study database" in one_error_line(capsys)
    assert not (root / "tune" / "nope.db").exists()


def test_study_refuses_another_dataset(demo_study, capsys):
    root, _ = demo_study
    argv = ["mnist", "--study", "demo", "--set", f"output_dir={root}", "--best"]
    assert tune.main(argv) == 2
    assert "tunes mnist --demo" in one_error_line(capsys)


def test_search_space_defaults_ranges_and_fixed_keys():
    defaults = MNIST["config"]
    space = tuning.search_space(defaults, ["lr=1e-3:1e-1:log", "num_bits=2:8", "scheduler=cosine,cyclic"],
                                fixed={"beta"})
    assert set(space) == {"lr", "threshold", "slope", "dropout", "num_bits", "scheduler"}
    assert space["lr"] == optuna.distributions.FloatDistribution(1e-3, 1e-1, log=True)
    assert space["num_bits"] == optuna.distributions.IntDistribution(2, 8)
    assert space["scheduler"].choices == ("cosine", "cyclic")
    assert tuning.range_text("lr", space["lr"]) == "lr=0.001:0.1:log"
    for key, distribution in tuning.search_space(defaults, [], set()).items():
        assert distribution.low <= MNIST["config"][key] <= distribution.high  # the paper's values are inside
