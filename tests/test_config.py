"""Command-line overrides, --help, and validation of config values."""
import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from qsnn.runs.cli import main
from qsnn.runs.config import parse_args, read_key_comments, validate
from qsnn.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MNIST_RUN = str(ROOT / "mnist" / "run.py")


@pytest.fixture
def defaults(tmp_path):
    cfg = runpy.run_path(MNIST_RUN)["config"]
    return {**cfg, "output_dir": str(tmp_path / "runs")}


def test_overrides_keep_the_type_of_the_default(defaults):
    cfg, flags = parse_args(defaults, ["--num_bits", "8", "--scheduler", "cyclic", "--num_trials=1",
                                       "--lr", "1", "--batch_norm", "false", "--grad_clip", "0.5"])
    assert cfg["num_bits"] == 8 and cfg["scheduler"] == "cyclic" and cfg["num_trials"] == 1
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["batch_norm"] is False and cfg["grad_clip"] == 0.5
    assert flags == {"demo": False, "resume": False, "overwrite": False, "help": False}


def test_none_and_bare_boolean_flags(defaults):
    cfg, flags = parse_args(defaults, ["--num_bits", "None", "--batch_norm", "--resume"])
    assert cfg["num_bits"] is None and cfg["batch_norm"] is True and flags["resume"]


def test_demo_preset_then_overrides(defaults):
    demo = runpy.run_path(MNIST_RUN)["demo"]
    cfg, flags = parse_args(defaults, ["--demo", "--epochs", "2"], demo)
    assert flags["demo"] and cfg["dataset"] == "digits" and cfg["epochs"] == 2
    assert cfg["num_steps"] == demo["num_steps"]


@pytest.mark.parametrize("argv, fragment", [
    (["--learning_rate", "0.1"], "unknown config key --learning_rate; valid keys: dataset"),
    (["--num_trials", "two"], "--num_trials expects int, got 'two'; valid keys: dataset"),
    (["--num_trials", "1.5"], "--num_trials expects int"),
    (["--batch_norm", "3"], "--batch_norm expects bool"),
    (["--lr"], "--lr needs a value"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_overrides_are_refused_in_one_line(defaults, argv, fragment):
    with pytest.raises(UserError) as err:
        parse_args(defaults, argv)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_config_file_is_read_before_command_line_overrides(defaults, tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps({"lr": 0.001, "beta": 0.5}))
    cfg, _ = parse_args(defaults, ["--config", str(path), "--beta", "0.7"])
    assert cfg["lr"] == 0.001 and cfg["beta"] == 0.7
    path.write_text(json.dumps({"bogus": 1}))
    with pytest.raises(UserError, match="unknown keys"):
        parse_args(defaults, ["--config", str(path)])


def test_every_key_of_every_run_py_has_a_comment():
    for run in (ROOT / "mnist/run.py", ROOT / "fashion_mnist/run.py", ROOT / "dvs128_gesture/run.py"):
        comments = read_key_comments(run)
        assert set(comments) >= set(runpy.run_path(run)["config"]), run


@pytest.mark.parametrize("cwd, script", [(".", "mnist/run.py"), ("mnist", "run.py")])
def test_help_lists_every_key_with_default_and_comment(cwd, script):
    # Also checks that run.py works from the repository root and from inside its folder.
    out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT / cwd, capture_output=True,
                         text=True, check=True).stdout
    config = runpy.run_path(MNIST_RUN)["config"]
    for key, value in config.items():
        line = next(l for l in out.splitlines() if l.strip().startswith(f"--{key} "))
        assert repr(value) in line
    assert "learning rate (the peak of the periodic schedules)" in out.split("--lr ")[1].splitlines()[0]
    assert "--resume" in out and "--demo" in out


@pytest.mark.parametrize("key, value, allowed", [
    ("num_bits", 0, "None (full precision) or 1..16"),
    ("num_bits", 17, "None (full precision) or 1..16"),
    ("lr", -1.0, "> 0"),
    ("dropout", 1.0, "within [0, 1)"),
    ("beta", 1.5, "within [0, 1]"),
    ("num_trials", 0, "> 0"),
    ("scheduler", "linear", "choose one of cosine, cosine_restarts, cyclic, step, constant"),
    ("device", "tpu", "use auto, cpu, cuda or cuda:N"),
])
def test_validation_names_key_value_and_what_is_allowed(defaults, key, value, allowed):
    with pytest.raises(UserError) as err:
        validate({**defaults, key: value})
    assert f"--{key} {value!r}" in str(err.value) and allowed in str(err.value)


def test_validation_reports_every_problem_on_its_own_line(defaults):
    with pytest.raises(UserError) as err:
        validate({**defaults, "lr": 0.0, "patience": -1, "val_split": 1.0})
    assert len(str(err.value).splitlines()) == 3


def test_missing_cuda_is_refused(defaults):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal of a missing device cannot be seen here")
    with pytest.raises(UserError, match="no CUDA device is available"):
        validate({**defaults, "device": "cuda"})


def test_unwritable_output_is_refused(defaults, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="--output_dir .* is not writable"):
        validate({**defaults, "output_dir": str(blocker / "runs")})


def test_cli_exits_2_with_one_error_line_before_touching_data(defaults, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(defaults, argv=["--lr", "-1", "--data_dir", str(tmp_path / "nowhere")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --lr -1.0 is not allowed; must be > 0"]
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("argv, message", [
    (["--bogus", "1"], "error: unknown config key --bogus; valid keys: dataset"),
    (["--epochs", "many"], "error: --epochs expects int, got 'many'; valid keys: dataset"),
    (["--num_bits", "0"], "error: --num_bits 0 is not allowed; must be None (full precision) or 1..16"),
    (["--resume", "--overwrite"], "error: give either --resume or --overwrite, not both"),
])
def test_every_user_error_exits_2_with_its_message(defaults, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(defaults, argv=argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


def test_an_existing_run_is_refused_with_exit_2(tiny_config, capsys):
    from qsnn.runs import runlog

    folder = runlog.run_folder(tiny_config)
    folder.mkdir(parents=True)
    (folder / "status.json").write_text('{"trials": {}}')
    with pytest.raises(SystemExit) as exit_info:
        main(tiny_config, argv=[])
    assert exit_info.value.code == 2
    assert "add --resume to continue it or --overwrite" in capsys.readouterr().err


def test_sync_batch_norm_needs_cuda(defaults):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: SyncBatchNorm is allowed here")
    with pytest.raises(UserError, match="--sync_batch_norm True needs CUDA"):
        validate({**defaults, "sync_batch_norm": True})
