"""What a run reads back or writes beside it is untrusted: links, foreign checkpoints, damaged logs and configs.

Each case must end in one UserError line before anything in the folder is cut or rewritten.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT
from qsnn.runs import runlog
from qsnn.errors import UserError, shorten
from qsnn.runs.experiment import run_experiment

EXP = "mnist_4bit_cosine"


def one_epoch(cfg, **changes):
    return {**cfg, "epochs": 1, "patience": 1, **changes}


def folder_bytes(folder):
    """{name: bytes} of every file in a run folder (to prove nothing changed)."""
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture
def finished_run(tiny_config):
    """A 4-bit run folder with one finished epoch, marked interrupted so --resume loads its checkpoint."""
    cfg = one_epoch(tiny_config)
    run_experiment(cfg)
    folder = runlog.run_folder(cfg)
    runlog.update_status(folder, 0, state="interrupted")
    return cfg, folder


@pytest.mark.parametrize("make", ["link", "dir"])
def test_a_lock_path_that_is_a_link_or_a_folder_is_refused_and_its_target_untouched(tiny_config, tmp_path, make):
    outside = tmp_path / "thesis.tex"
    outside.write_text("years of work")
    folder = runlog.run_folder(tiny_config)
    folder.parent.mkdir(parents=True)
    lock = folder.parent / f".{folder.name}.lock"
    lock.symlink_to(outside) if make == "link" else lock.mkdir()
    with pytest.raises(UserError, match="lock file .* is a (link|folder)"):
        run_experiment(one_epoch(tiny_config))
    assert outside.read_text() == "years of work"
    assert not folder.exists()


@pytest.mark.parametrize("foreign", [dict(num_bits=None, exp_name=EXP), dict(lr=3e-3, seed=7, exp_name=EXP)])
def test_a_foreign_checkpoint_is_refused_before_anything_is_cut(finished_run, foreign, capsys):
    cfg, folder = finished_run
    run_experiment({**cfg, "epochs": 2}, resume=True)  # the folder now holds 2 epochs, its own best
    runlog.update_status(folder, 0, state="interrupted")
    other = {**cfg, **foreign, "output_dir": str(folder.parent.parent / "other")}
    run_experiment(other)
    shutil.copy(runlog.run_folder(other) / f"last_{EXP}_t0.pt", folder / f"last_{EXP}_t0.pt")
    before = folder_bytes(folder)
    with pytest.raises(UserError, match="belongs to another experiment .*move it out") as e:
        run_experiment({**cfg, "epochs": 3}, resume=True)
    assert "\n" not in str(e.value)
    assert folder_bytes(folder) == before  # logs, best checkpoint, config.json and status untouched


@pytest.mark.parametrize("damage", [
    lambda p: p.write_text(p.read_text() + "1,garbage,row\n"),
    lambda p: p.write_text(p.read_text() + "1,0.5\n"),  # too few columns
    lambda p: p.write_bytes(p.read_bytes() + b"\xff\xfe\x00\n"),
    lambda p: p.write_text(p.read_text().replace("epoch", "\x00", 1) + "x\n"),
])
def test_a_damaged_log_row_is_one_line_on_resume_and_nothing_is_rewritten(finished_run, damage):
    cfg, folder = finished_run
    damage(folder / f"acc_{EXP}_t0.csv")
    before = folder_bytes(folder)
    with pytest.raises(UserError, match=r"acc_mnist_4bit_cosine_t0\.csv .*(line \d+ is not a log row|"
                                        r"undecodable bytes).*--overwrite"):
        run_experiment({**cfg, "epochs": 2}, resume=True)
    assert folder_bytes(folder) == before


def test_a_config_json_from_an_older_version_lacking_keys_resumes_with_todays_values(finished_run, capsys):
    cfg, folder = finished_run
    record = json.loads((folder / "config.json").read_text())
    del record["config"]["snapshots"], record["config"]["state_bits"]
    (folder / "config.json").write_text(json.dumps(record))
    run_experiment({**cfg, "epochs": 2}, resume=True)
    assert "predates the key(s) state_bits, snapshots" in capsys.readouterr().err
    assert runlog.read_status(folder)["0"]["epochs_completed"] == 2


@pytest.mark.parametrize("key,value,message", [
    ("lr", -1.0, "--lr -1.0 is not allowed"),
    ("lr", "fast", "--lr expects float"),
    ("scheduler", "sgdr", "--scheduler 'sgdr' is not allowed"),
    ("num_bits", 2.5, "--num_bits expects int or a list of ints"),
    ("correct_rate", 0.1, "--correct_rate 0.1 is not allowed"),
])
def test_a_config_json_whose_values_no_longer_validate_is_one_line(finished_run, key, value, message):
    cfg, folder = finished_run
    record = json.loads((folder / "config.json").read_text())
    record["config"][key] = value
    (folder / "config.json").write_text(json.dumps(record))
    before = folder_bytes(folder)
    with pytest.raises(UserError, match="config.json holds values this version does not accept") as e:
        run_experiment({**cfg, "epochs": 2}, resume=True)
    assert message in str(e.value) and "\n" not in str(e.value)
    assert folder_bytes(folder) == before


@pytest.mark.parametrize("length", [240, 300])
def test_an_exp_name_too_long_for_the_runs_files_leaves_nothing_behind(tiny_config, length):
    cfg = one_epoch(tiny_config, exp_name="x" * length)
    with pytest.raises(UserError, match=f"--exp_name of {length} characters is too long.*at most \\d+ characters"):
        run_experiment(cfg)
    out = runlog.resolve_path(cfg["output_dir"])
    assert not out.exists() or not any(out.iterdir())


def test_the_longest_allowed_exp_name_runs(tiny_config):
    longest = runlog.longest_file_name("", 1)
    cfg = one_epoch(tiny_config, exp_name="y" * (runlog.NAME_MAX - longest))
    run_experiment(cfg)
    assert runlog.read_status(runlog.run_folder(cfg))["0"]["state"] == "finished"


@pytest.mark.parametrize("make", ["file", "link"])
def test_a_run_folder_path_that_is_a_file_or_a_link_is_one_line(tiny_config, tmp_path, make):
    folder = runlog.run_folder(tiny_config)
    folder.parent.mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    folder.write_text("notes") if make == "file" else folder.symlink_to(elsewhere)
    for resume in (False, True):
        with pytest.raises(UserError, match=f"is a {make}, not a folder"):
            run_experiment(one_epoch(tiny_config), resume=resume)
    assert not any(elsewhere.iterdir())


def test_a_run_file_that_is_a_link_is_never_read_through(finished_run, tmp_path):
    cfg, folder = finished_run
    outside = tmp_path / "status_elsewhere.json"
    outside.write_text((folder / "status.json").read_text())
    (folder / "status.json").unlink()
    (folder / "status.json").symlink_to(outside)
    with pytest.raises(UserError, match="status.json is a link"):
        run_experiment({**cfg, "epochs": 2}, resume=True)


@pytest.mark.skipif(shutil.which("chattr") is None, reason="needs chattr to make a folder read-only for root")
def test_a_read_only_run_folder_on_resume_is_one_line(finished_run):
    cfg, folder = finished_run
    if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
        pytest.skip("this file system does not support the immutable attribute")
    try:
        with pytest.raises(UserError, match="run folder .* is not writable"):
            run_experiment({**cfg, "epochs": 2}, resume=True)
    finally:
        subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_long_values_are_cut_in_messages():
    text = shorten("v" * 5_000_000)
    assert len(text) < 120 and "5,000,002 characters" in text
    assert shorten(0.5) == "0.5"


def test_the_command_line_prints_one_error_line_for_a_foreign_checkpoint(finished_run):
    cfg, folder = finished_run
    payload = runlog.load_checkpoint(folder / f"last_{EXP}_t0.pt", ("model",))
    payload["config"] = {**payload["config"], "lr": 0.5}
    import torch

    torch.save(payload, folder / f"last_{EXP}_t0.pt")
    args = [sys.executable, str(ROOT / "mnist" / "run.py"), "--data_dir", cfg["data_dir"], "--output_dir",
            cfg["output_dir"], "--num_steps", "6", "--batch_size", "40", "--test_batch_size", "120", "--epochs", "2",
            "--num_trials", "1", "--t_max", "12", "--lr", "0.01", "--device", "cpu", "--resume"]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "lr=0.5 (config.json: 0.01)" in errors[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("argv", [["--" + "q" * 100_000, "1"], ["--lr", "9" * 100_000 + "x"]])
def test_a_huge_key_or_value_on_the_command_line_is_cut_in_its_one_error_line(argv):
    done = subprocess.run([sys.executable, str(ROOT / "mnist" / "run.py"), *argv], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and len(done.stderr) < 1500
    assert "characters)" in done.stderr


def test_a_config_file_with_a_huge_unknown_key_is_cut(tmp_path):
    (tmp_path / "big.json").write_text(json.dumps({"k" * 5_000_000: 1}))
    done = subprocess.run([sys.executable, str(ROOT / "mnist" / "run.py"), "--config", str(tmp_path / "big.json")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr) < 1500 and "characters)" in done.stderr
