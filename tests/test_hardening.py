"""Bad inputs and faults: nothing deleted outside the run folder, one line instead of a traceback."""
import errno
import json
import os
import runpy

import pytest
import torch

from conftest import ROOT
from qsnn.runs import runlog
from qsnn.core import loop
from qsnn.runs import trial
from qsnn.runs.cli import main
from qsnn.runs.config import parse_args, validate
from qsnn.errors import UserError
from qsnn.runs.experiment import run_experiment

EXP = "mnist_4bit_cosine"
MNIST = runpy.run_path(str(ROOT / "mnist" / "run.py"))


def quick(cfg, **changes):
    return {**cfg, "epochs": 1, **changes}


@pytest.mark.parametrize("name", ["/tmp/v", "..", "/", "a/b", ".hidden"])
def test_run_folder_names_cannot_reach_outside_output_dir(tiny_config, tmp_path, name):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    with pytest.raises(UserError, match="is not allowed; use a plain folder name"):
        run_experiment({**tiny_config, "exp_name": name}, overwrite=True)
    assert (victim / "keep.txt").read_text() == "precious"


def test_overwrite_only_deletes_folders_this_program_made(tiny_config):
    folder = runlog.run_folder(tiny_config)
    folder.mkdir(parents=True)
    (folder / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="was not made by this program"):
        run_experiment(tiny_config, overwrite=True)
    assert (folder / "thesis.tex").exists()


def test_a_second_run_into_a_locked_folder_is_refused(tiny_config):
    folder = runlog.run_folder(tiny_config)
    folder.parent.mkdir(parents=True)
    lock = runlog.lock_run_folder(folder)  # as a live run holds it
    try:
        with pytest.raises(UserError, match=f"another run \\(process {os.getpid()}\\) is writing to"):
            run_experiment(tiny_config, overwrite=True)
    finally:
        lock.close()
    run_experiment(quick(tiny_config))  # released: the next run goes ahead


def test_stale_temp_files_are_removed_and_files_respect_the_umask(tiny_config):
    folder = runlog.run_folder(tiny_config)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"config": tiny_config}))
    stale = [folder / f".last_{EXP}_t0.pt.ab12cd_3.pt", folder / ".status.json.x1y2z3w4.json"]
    for path in stale:
        path.write_bytes(b"half written")
    (folder / ".notes").write_text("not ours")
    old = os.umask(0o022)
    try:
        run_experiment(quick(tiny_config))
    finally:
        os.umask(old)
    assert not any(p.exists() for p in stale) and (folder / ".notes").exists()
    for name in ("config.json", "status.json", f"acc_{EXP}_t0.csv", f"last_{EXP}_t0.pt"):
        assert (folder / name).stat().st_mode & 0o777 == 0o644, name


@pytest.mark.parametrize("argv, message", [
    (["--lr", "1e999"], "--lr inf is not allowed; must be a finite number"),
    (["--grad_clip", "-1e999"], "--grad_clip -inf is not allowed; must be a finite number"),
    (["--eta_min", "0.1"], "--eta_min 0.1 is not allowed; it must not exceed lr"),
    (["--correct_rate", "0.2"], "--correct_rate 0.2 is not allowed; it must exceed incorrect_rate"),
    (["--seed", str(2**63)], "--seed 9223372036854775808 is not allowed; must be within 0..2**63-1"),
    (["--seed", "-1"], "--seed -1 is not allowed"),
    (["--demo=yes"], "--demo is a flag and takes no value"),
    (["--resume=later"], "--resume is a flag and takes no value"),
    (["--dataset", "dvs128_gesture"], "--dataset 'dvs128_gesture' is not for this run.py; it runs mnist or digits"),
    (["--exp_name", "../x"], "--exp_name '../x' is not allowed"),
    (["--num_steps", "100000"], "GiB of activations per training iteration"),
])
def test_nonsense_is_refused_in_one_line(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(MNIST["config"], MNIST["demo"], argv=[*argv, "--output_dir", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_dvs_run_py_refuses_mnist_and_h_shows_help(capsys):
    dvs = runpy.run_path(str(ROOT / "dvs128_gesture" / "run.py"))["config"]
    with pytest.raises(UserError, match="not for this run.py; it runs dvs128_gesture"):
        validate({**dvs, "dataset": "mnist"}, datasets=("dvs128_gesture",))
    assert parse_args(dvs, ["-h"])[1]["help"]


def test_validation_split_that_leaves_an_empty_set_is_refused(tiny_config):
    for fraction in (0.0001, 0.9999):
        with pytest.raises(UserError, match="leaves an empty"):
            run_experiment(quick(tiny_config, val_split=fraction))


def test_non_finite_weights_fail_the_trial(tiny_config, monkeypatch):
    real_step = torch.optim.Adam.step

    def step_that_breaks_a_weight(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        self.param_groups[0]["params"][0].data[0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", step_that_breaks_a_weight)
    assert run_experiment(quick(tiny_config)) == {0: None}
    status = runlog.read_status(runlog.run_folder(tiny_config))["0"]
    assert status["state"] == "failed" and "non-finite" in status["reason"]


def test_resume_of_a_missing_folder_says_it_starts_afresh(tiny_config, capsys):
    run_experiment(quick(tiny_config), resume=True)
    assert "nothing to resume in" in capsys.readouterr().out


def test_resume_without_config_json_uses_the_checkpoints_config(tiny_config, capsys):
    cfg = {**tiny_config, "exp_name": "kept"}
    run_experiment(quick(cfg, num_bits=2, batch_norm=False, threshold=0.5))
    folder = runlog.run_folder(cfg)
    (folder / "config.json").unlink()
    run_experiment({**cfg, "epochs": 2}, resume=True)  # the command line says 4-bit with BatchNorm
    saved = runlog.read_run_config(folder)["config"]
    assert saved["num_bits"] == 2 and saved["batch_norm"] is False and saved["epochs"] == 2
    assert runlog.read_status(folder)["0"]["epochs_completed"] == 2
    assert "resuming with the saved values of" in capsys.readouterr().err


def test_a_finished_trial_is_extended_by_more_epochs_but_epochs_never_shrink(tiny_config):
    run_experiment(quick(tiny_config, epochs=2))
    folder = runlog.run_folder(tiny_config)
    run_experiment(quick(tiny_config, epochs=3), resume=True)
    assert [r.split(",")[0] for r in (folder / f"acc_{EXP}_t0.csv").read_text().split()[1:]] == ["1", "2", "3"]
    record = runlog.read_run_config(folder)
    assert record["config"]["epochs"] == 3 and len(record["resumes"]) == 1  # the first run's record is kept
    assert {"git_commit", "created", "command", "versions"} <= set(record["resumes"][0])
    with pytest.raises(UserError, match="--epochs 1 is below the 3 epochs"):
        run_experiment(quick(tiny_config, epochs=1), resume=True)


@pytest.mark.parametrize("damage", [
    lambda f: (f / f"last_{EXP}_t0.pt").write_bytes((f / f"last_{EXP}_t0.pt").read_bytes()[:500]),
    lambda f: (f / f"last_{EXP}_t0.pt").write_bytes(b"not a torch file"),
    lambda f: (f / f"last_{EXP}_t0.pt").write_bytes((f / f"{EXP}_t0.pt").read_bytes()),  # the best model
    lambda f: (f / "status.json").write_text("{broken"),
    lambda f: (f / "status.json").write_text("[1, 2]"),
    lambda f: (f / "config.json").write_text("{broken"),
])
def test_damaged_run_files_are_one_line_and_overwrite_recovers(tiny_config, damage):
    cfg = quick(tiny_config, epochs=1, patience=1, num_trials=1)
    run_experiment({**cfg, "epochs": 1})
    folder = runlog.run_folder(cfg)
    runlog.update_status(folder, 0, state="interrupted")  # so that resume loads the checkpoint
    damage(folder)
    with pytest.raises(UserError, match="--overwrite"):
        run_experiment({**cfg, "epochs": 2}, resume=True)
    run_experiment(cfg, overwrite=True)
    assert runlog.read_status(folder)["0"]["state"] == "finished"


def test_a_failed_save_keeps_logs_checkpoint_and_status_consistent(tiny_config, monkeypatch):
    real_save, calls = runlog.save_checkpoint, []

    def save_fails_in_epoch_2(obj, path):
        calls.append(path)
        if "last_" in str(path) and sum("last_" in str(p) for p in calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, path)

    monkeypatch.setattr(runlog, "save_checkpoint", save_fails_in_epoch_2)
    with pytest.raises(UserError, match="could not save epoch 2 .*No space left on device.*--resume"):
        run_experiment(tiny_config)
    folder = runlog.run_folder(tiny_config)
    status = runlog.read_status(folder)["0"]
    assert status["epochs_completed"] == 1 and status["state"] == "interrupted"
    for kind in ("loss", "lr", "acc"):
        epochs = {line.split(",")[0] for line in (folder / f"{kind}_{EXP}_t0.csv").read_text().split()[1:]}
        assert epochs == {"1"}, kind
    monkeypatch.setattr(runlog, "save_checkpoint", real_save)
    run_experiment(tiny_config, resume=True)  # continues from epoch 1
    assert runlog.read_status(folder)["0"]["epochs_completed"] == 3


def test_ctrl_c_before_training_is_one_line(monkeypatch, capsys, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("qsnn.runs.experiment.run_experiment", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        main(MNIST["config"], MNIST["demo"], argv=["--demo", "--output_dir", str(tmp_path)])
    assert exit_info.value.code == 130 and capsys.readouterr().err.startswith("error: interrupted")


def test_a_second_ctrl_c_mid_epoch_leaves_status_interrupted(tiny_config, monkeypatch):
    def abort(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "check_health", abort)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(tiny_config)
    assert runlog.read_status(runlog.run_folder(tiny_config))["0"]["state"] == "interrupted"


def test_resume_reads_every_checkpoint_on_the_cpu(tiny_config, monkeypatch):
    run_experiment(quick(tiny_config))
    runlog.update_status(runlog.run_folder(tiny_config), 0, state="interrupted")
    real_load, real_set, seen = torch.load, trial.set_rng_states, []

    def load(*args, **kwargs):
        seen.append((kwargs.get("map_location"), kwargs.get("weights_only")))
        return real_load(*args, **kwargs)

    def set_states(states, generator):
        for tensor in (states["torch"], states["shuffle"]):
            assert tensor.device.type == "cpu" and tensor.dtype == torch.uint8
        real_set(states, generator)

    monkeypatch.setattr(torch, "load", load)
    monkeypatch.setattr(trial, "set_rng_states", set_states)
    run_experiment(quick(tiny_config, epochs=2), resume=True)
    assert seen and all(entry == ("cpu", True) for entry in seen)


def test_logs_are_cut_back_to_the_checkpoint_on_resume(tiny_config):
    run_experiment(quick(tiny_config))
    folder = runlog.run_folder(tiny_config)
    runlog.update_status(folder, 0, state="interrupted")
    acc = folder / f"acc_{EXP}_t0.csv"
    with open(acc, "a") as f:  # a row written before a crash that the checkpoint never saw
        f.write("2,99.0,0.1,1.0\n")
    run_experiment(quick(tiny_config, epochs=2), resume=True)
    assert [line.split(",")[0] for line in acc.read_text().split()[1:]] == ["1", "2"]
    assert float(acc.read_text().split()[2].split(",")[1]) != 99.0


def test_a_collision_names_the_keys_that_differ(tiny_config):
    run_experiment(quick(tiny_config))
    with pytest.raises(UserError, match=r"different experiment \(beta=0.5 \(saved: 0.994\)\).*--exp_name"):
        run_experiment(quick(tiny_config, beta=0.5))
