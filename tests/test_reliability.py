"""Resume after SIGKILL or Ctrl-C with identical logs, clear errors, non-finite losses."""
import csv
import signal
import subprocess
import sys
import time

import pytest
import snntorch.functional as SF
import torch

from conftest import ROOT, as_argv
from qsnn.runs import runlog
from qsnn.runs.experiment import run_experiment

SLOW = dict(num_steps=30, batch_size=16, epochs=4, t_max=20)  # ~15 iterations per epoch
EXP = "mnist_4bit_cosine"


def start_run(cfg, *flags):
    """mnist/run.py in a subprocess with cfg's values as command-line overrides."""
    keys = ("data_dir", "output_dir", "num_steps", "batch_size", "test_batch_size", "epochs", "patience",
            "num_trials", "t_max", "lr", "device")
    argv = [sys.executable, str(ROOT / "mnist" / "run.py"), *as_argv({k: cfg[k] for k in keys}), *flags]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def acc_rows(folder):
    path = folder / f"acc_{EXP}_t0.csv"
    return len(path.read_text().splitlines()) - 1 if path.exists() else 0


def wait_for_epochs(process, folder, epochs, timeout=120):
    deadline = time.time() + timeout
    while acc_rows(folder) < epochs:
        assert process.poll() is None, process.communicate()
        assert time.time() < deadline, "training did not progress"
        time.sleep(0.02)


def logs(folder):
    """Every log of trial 0 without the timing column."""
    result = {kind: (folder / f"{kind}_{EXP}_t0.csv").read_text() for kind in ("loss", "lr")}
    with open(folder / f"acc_{EXP}_t0.csv", newline="") as f:
        result["acc"] = [{k: v for k, v in row.items() if k != "train_time"} for row in csv.DictReader(f)]
    return result


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    """An uninterrupted run of the SLOW config on the fixture (shared by the resume tests)."""
    from torchvision_fixture import write_mnist_fixture

    root = tmp_path_factory.mktemp("baseline")
    cfg = dict(data_dir=str(write_mnist_fixture(root / "data", "MNIST", 240, 120)),
               output_dir=str(root / "runs"), test_batch_size=120, patience=10, num_trials=1,
               lr=1e-2, device="cpu", **SLOW)
    process = start_run(cfg)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return cfg, logs(root / "runs" / EXP)


def start_like_baseline(baseline, tmp_path):
    """The baseline's run started afresh in tmp_path: (cfg, expected logs, run folder, process)."""
    cfg, expected = baseline
    cfg = {**cfg, "output_dir": str(tmp_path / "runs")}
    return cfg, expected, tmp_path / "runs" / EXP, start_run(cfg)


def test_sigkill_mid_epoch_then_resume_gives_identical_logs(baseline, tmp_path):
    cfg, expected, folder, process = start_like_baseline(baseline, tmp_path)
    wait_for_epochs(process, folder, 2)
    time.sleep(0.3)  # into epoch 3
    process.kill()
    process.communicate()
    assert acc_rows(folder) in (2, 3)  # only completed epochs are in the logs
    assert runlog.read_status(folder)["0"]["state"] == "running"
    resumed = start_run(cfg, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "trial 0: resuming after epoch" in out
    assert logs(folder) == expected
    assert runlog.read_status(folder)["0"]["state"] == "finished"


def test_ctrl_c_stops_safely_and_prints_the_resume_command(baseline, tmp_path):
    cfg, expected, folder, process = start_like_baseline(baseline, tmp_path)
    wait_for_epochs(process, folder, 1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGINT in trial 0") and last.endswith("--resume")
    assert "Traceback" not in err
    assert runlog.read_status(folder)["0"]["state"] == "interrupted"
    command = last.split("Resume with: python ")[1].split()
    resumed = subprocess.run([sys.executable, *command], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert logs(folder) == expected


def test_resume_skips_finished_trials_and_keeps_the_saved_architecture(tiny_config, capsys):
    run_experiment({**tiny_config, "epochs": 1})
    folder = runlog.run_folder(tiny_config)
    first = (folder / f"loss_{EXP}_t0.csv").read_text()
    run_experiment({**tiny_config, "epochs": 1, "num_trials": 2, "beta": 0.5}, resume=True)
    captured = capsys.readouterr()
    assert "trial 0: already finished, skipped" in captured.out
    assert "resuming with the saved values of beta=0.994" in captured.err
    assert (folder / f"loss_{EXP}_t0.csv").read_text() == first
    saved = runlog.read_run_config(folder)["config"]
    assert saved["beta"] == 0.994 and saved["num_trials"] == 2
    assert runlog.read_status(folder)["1"]["state"] == "finished"


def test_non_finite_loss_fails_the_trial_keeps_its_files_and_continues(tiny_config, monkeypatch, capsys):
    real_loss, calls = SF.mse_count_loss, []

    def loss_with_a_nan_at_call_8(**kwargs):
        loss_fn = real_loss(**kwargs)

        def loss(spikes, targets):
            calls.append(1)
            value = loss_fn(spikes, targets)
            return value * float("nan") if len(calls) == 8 else value
        return loss

    monkeypatch.setattr(SF, "mse_count_loss", loss_with_a_nan_at_call_8)
    results = run_experiment({**tiny_config, "num_trials": 2})
    folder = runlog.run_folder(tiny_config)
    status = runlog.read_status(folder)
    assert status["0"]["state"] == "failed" and "epoch 2, iteration 2" in status["0"]["reason"]
    assert "non-finite loss (nan) at epoch 2, iteration 2" in capsys.readouterr().err
    assert acc_rows(folder) == 1 and (folder / f"{EXP}_t0.pt").exists()  # epoch 1 kept
    assert results[0] is None and status["1"]["state"] == "finished" and results[1] > 0


def test_missing_data_ends_in_one_line_without_traceback(tmp_path):
    cfg = dict(data_dir=str(tmp_path / "nothing"), output_dir=str(tmp_path / "runs"), num_steps=2,
               batch_size=8, test_batch_size=8, epochs=1, patience=1, num_trials=1, t_max=5, lr=0.01,
               device="cpu")
    process = start_run(cfg)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 2
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: MNIST is not in ") and "train-images-idx3-ubyte.gz" in line


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "log.csv"
    runlog.write_text(path, "epoch,value\n1,0.5\n")
    with pytest.raises(RuntimeError):
        runlog.atomic_write(path, lambda f: (f.write(b"half"), (_ for _ in ()).throw(RuntimeError())))
    assert path.read_text() == "epoch,value\n1,0.5\n" and list(tmp_path.iterdir()) == [path]
    runlog.save_checkpoint({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert torch.equal(torch.load(tmp_path / "x.pt")["a"], torch.ones(2))
