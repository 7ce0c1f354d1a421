"""Issue 21: everything read back is untrusted input. Checkpoints (evaluate.py), IDX files (qsnn/data/images.py),
study databases and output paths (tune.py), run folders and CSV logs (the results table): each class of
damage ends in one `error:` line and exit code 2, or is skipped with one `warning:` line, and writes nothing."""
import gzip
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tracemalloc
import warnings

import numpy as np
import optuna
import pytest
import torch

from conftest import ROOT
from torchvision_fixture import write_mnist_fixture

import evaluate  # noqa: E402
import extract_test_set_accuracy  # noqa: E402
import tune  # noqa: E402
from qsnn.analysis import results
from qsnn.runs import tuning  # noqa: E402
from qsnn.data.images import load_image_dataset  # noqa: E402
from qsnn.errors import UserError  # noqa: E402
from qsnn.core.models import build_model  # noqa: E402
from qsnn.runs.runlog import run_folder  # noqa: E402

EXP = "mnist_4bit_cosine"
HUGE = "x" * 5_000_000  # a value that must never be echoed in full
LONGEST_LINE = 1000  # characters: a message that echoes a huge value cut stays well below


def error_line(capsys):
    """The only stderr line of the last call, which must be an `error:` line of reasonable length."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines[:3]
    assert len(lines[0]) < LONGEST_LINE, lines[0][:300]
    return lines[0]


def snapshot(root):
    """{relative path: (size, mtime) of a file, None for a folder} under root: to show nothing was written.

    Folders' own times are left out: a write probe (created, then removed) changes them and nothing else.
    """
    root = os.fsencode(root)
    state = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            state[os.path.relpath(os.path.join(folder, name), root)] = None
        for name in files:
            info = os.lstat(os.path.join(folder, name))
            state[os.path.relpath(os.path.join(folder, name), root)] = (info.st_size, info.st_mtime_ns)
    return state


def runs_of_x(line):
    """How many times a cut HUGE value appears in line (each appearance is one run of x's)."""
    return len(re.findall("x{10,}", line))


# ---------------------------------------------------------------- evaluate.py: checkpoints ----------------

@pytest.fixture
def run_dir(tiny_config):
    """A run folder with config.json and a best checkpoint of the tiny config's (untrained) network."""
    folder = run_folder(tiny_config)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"exp_name": EXP, "config": tiny_config}))
    save(folder / f"{EXP}_t0.pt", tiny_config, weights(tiny_config))
    return folder


def weights(cfg):
    """The state dict of the (untrained) network cfg describes."""
    torch.manual_seed(0)
    return build_model(cfg).state_dict()


def save(path, cfg, model):
    """A checkpoint as training writes one: {"model": the weights, "config": cfg, "epoch": 1}."""
    torch.save({"model": model, "config": cfg, "epoch": 1}, path)
    return path


def evaluate_fails(capsys, *argv):
    """evaluate.main on argv must exit 2 with one error line; returns it."""
    assert evaluate.main([str(a) for a in argv]) == 2
    return error_line(capsys)


def test_a_good_checkpoint_is_evaluated_with_progress_over_the_test_batches(run_dir, capsys):
    assert evaluate.main([str(run_dir / f"{EXP}_t0.pt"), "--device", "cpu", "--test_batch_size", "40"]) == 0
    captured = capsys.readouterr()
    assert "test accuracy:" in captured.out
    assert "test batches: 100%" in captured.err and "3/3" in captured.err  # 120 test images in batches of 40


@pytest.mark.parametrize("drop, words", [
    (["beta"], "its config lacks beta, which evaluation needs"),
    (["num_steps", "dropout"], "its config lacks dropout, num_steps, which evaluation needs"),
    (["batch_norm", "time_chunk", "tensor_data"], "lacks batch_norm, time_chunk, tensor_data"),
    (["data_dir"], "lacks data_dir, which evaluation needs (give --data_dir on the command line)"),
    (["dataset"], "its config lacks dataset, so the network it holds is unknown"),
])
def test_a_config_without_keys_names_them_and_fills_nothing_in(run_dir, tiny_config, capsys, drop, words):
    path = save(run_dir / "hand_made.pt", {k: v for k, v in tiny_config.items() if k not in drop}, weights(tiny_config))
    (run_dir / "config.json").unlink()  # nothing to compare with: the config alone decides
    before = snapshot(run_dir.parent)
    assert words in evaluate_fails(capsys, path, "--device", "cpu")
    assert snapshot(run_dir.parent) == before


def test_a_missing_key_the_command_line_supplies_is_not_missing(run_dir, tiny_config, capsys):
    path = save(run_dir / "hand_made.pt", {k: v for k, v in tiny_config.items() if k != "data_dir"},
                weights(tiny_config))
    (run_dir / "config.json").unlink()
    assert evaluate.main([str(path), "--device", "cpu", "--data_dir", tiny_config["data_dir"]]) == 0
    assert "test accuracy:" in capsys.readouterr().out


@pytest.mark.parametrize("model, words", [
    ([1, 2, 3], "its \"model\" entry is a list, not a state dict"),
    ({"conv1.weight": 1.0}, "its \"model\" entry is a dict of other things, not a state dict"),
    ({}, "its \"model\" entry is an empty dict, not a state dict"),
    (torch.zeros(3), "its \"model\" entry is a Tensor, not a state dict"),
    ("weights.bin", "its \"model\" entry is a str, not a state dict"),
])
def test_a_model_entry_that_is_not_a_state_dict_is_one_line(run_dir, tiny_config, capsys, model, words):
    path = save(run_dir / f"{EXP}_t1.pt", tiny_config, model)
    assert words in evaluate_fails(capsys, path, "--device", "cpu")


def test_weights_of_another_network_are_one_line(run_dir, tiny_config, capsys):
    path = save(run_dir / f"{EXP}_t1.pt", tiny_config, weights({**tiny_config, "dataset": "dvs128_gesture"}))
    assert "its weights do not fit the network its config describes" in evaluate_fails(capsys, path, "--device", "cpu")


@pytest.mark.parametrize("change, words", [
    ({"beta": "abc"}, "its config's beta is 'abc', not float"),
    ({"batch_norm": 1}, "its config's batch_norm is 1, not bool"),
    ({"num_bits": 99}, "its config is not valid: --num_bits 99 is not allowed; must be None (full precision) or 1..16"),
    ({"threshold": float("nan")}, "its config is not valid: --threshold nan is not allowed; must be a finite number"),
    ({"dropout": 1.5, "slope": -1.0}, "--slope -1.0 is not allowed; must be > 0; --dropout 1.5 is not allowed"),
    ({"execution": "quantum"}, "its config's execution 'quantum' is not allowed; it must be one of fast, reference"),
    ({"num_steps": 10**30}, "its config's num_steps is an integer of 100 bits, far out of range"),
    ({"dataset": "cifar10"}, "its config's dataset 'cifar10' is not one of mnist, fashion_mnist, digits"),
    ({"dataset": HUGE}, "its config's dataset 'xxxxxxxx"),
    ({"beta": HUGE}, "(5,000,002 characters), not float"),
    ({"beta": [0.5]}, "its config's entry 'beta' holds a list, not a plain value"),
    ({"beta": torch.tensor(0.5)}, "its config's entry 'beta' holds a Tensor, not a plain value"),
])
def test_an_invalid_config_value_is_one_line(run_dir, tiny_config, capsys, change, words):
    path = save(run_dir / "odd.pt", {**tiny_config, **change}, weights(tiny_config))
    (run_dir / "config.json").unlink()
    line = evaluate_fails(capsys, path, "--device", "cpu")
    assert words in line and runs_of_x(line) <= 1


def test_a_config_that_is_not_a_dict_is_one_line(run_dir, capsys):
    path = run_dir / "odd.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "config": ["mnist", 4]}, path)
    assert "its \"config\" entry is a list, not a dict of config keys" in evaluate_fails(capsys, path)


def test_a_run_folder_instead_of_a_checkpoint_names_its_checkpoints(run_dir, tiny_config, capsys):
    shutil.copy(run_dir / f"{EXP}_t0.pt", run_dir / f"last_{EXP}_t0.pt")
    line = evaluate_fails(capsys, run_dir)
    assert line == (f"error: {run_dir} is a run folder; give one of its checkpoints, e.g. {run_dir / f'{EXP}_t0.pt'} "
                    f"(it holds {EXP}_t0.pt, last_{EXP}_t0.pt)")
    empty = run_dir.parent / "empty"
    empty.mkdir()
    assert f"{empty} is a folder without checkpoints (*.pt)" in evaluate_fails(capsys, empty)
    assert "/dev/null is not a regular file" in evaluate_fails(capsys, "/dev/null")
    assert "does not exist" in evaluate_fails(capsys, run_dir / "nope.pt")
    assert "(5,003 characters): File name too long" in evaluate_fails(capsys, "/" + "p" * 5000)


def test_the_real_command_exits_2_with_one_line_for_a_folder(run_dir):
    proc = subprocess.run([sys.executable, str(ROOT / "evaluate.py"), str(run_dir)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [proc.stderr.strip()] and "is a run folder; give one of" in proc.stderr


@pytest.mark.parametrize("folder_change, words", [
    ({"beta": 0.5}, "belongs to another experiment (beta=0.994 (config.json: 0.5))"),
    ({"num_bits": 8, "dataset": "fashion_mnist"}, "dataset='mnist' (config.json: 'fashion_mnist'), num_bits=4"),
])
def test_a_checkpoint_from_another_experiment_in_a_run_folder_is_refused(run_dir, tiny_config, capsys,
                                                                          folder_change, words):
    (run_dir / "config.json").write_text(json.dumps({"config": {**tiny_config, **folder_change}}))
    before = snapshot(run_dir)
    line = evaluate_fails(capsys, run_dir / f"{EXP}_t0.pt", "--device", "cpu")
    assert words in line and "move it out of the folder" in line
    assert snapshot(run_dir) == before


def test_a_damaged_config_json_beside_the_checkpoint_is_one_line(run_dir, capsys):
    (run_dir / "config.json").write_text('{"config": ')
    assert "config.json is not readable JSON" in evaluate_fails(capsys, run_dir / f"{EXP}_t0.pt", "--device", "cpu")


def test_a_run_time_key_may_differ_from_the_folders_config(run_dir, tiny_config, capsys):
    (run_dir / "config.json").write_text(json.dumps({"config": {**tiny_config, "epochs": 99, "device": "cuda"}}))
    assert evaluate.main([str(run_dir / f"{EXP}_t0.pt"), "--device", "cpu"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("argv, words", [
    (["--device", HUGE], "--device 'xxxxxxxx"),
    (["--device", "tpu"], "--device 'tpu' is not allowed; use auto, cpu, cuda or cuda:N"),
    (["--test_batch_size", "0"], "--test_batch_size 0 is not allowed; must be >= 1"),
    (["--test_batch_size", "9" * 6000], "argument --test_batch_size: invalid int value: '99999999"),
    (["--execution", "warp"], "--execution 'warp' is not allowed; choose one of fast, reference"),
    (["--bogus", HUGE], "unrecognized arguments: --bogus xxxx"),
])
def test_bad_command_line_values_are_one_cut_line(run_dir, capsys, argv, words):
    line = evaluate_fails(capsys, run_dir / f"{EXP}_t0.pt", *argv)
    assert words in line and runs_of_x(line) <= 1


# ---------------------------------------------------------------- qsnn/data/images.py: IDX files -----------------

def idx(shape, data=b"", kind=0x08, ndim=None, dims_format="i"):
    """IDX bytes exactly as on disk: 0, 0, type, ndim, big-endian 32-bit sizes, then the data."""
    ndim = len(shape) if ndim is None else ndim
    return bytes((0, 0, kind, ndim)) + struct.pack(f">{len(shape)}{dims_format}", *shape) + data


def write_raw(raw_dir, name, content, gz):
    """Write one IDX file, gzip-compressed under name.gz if gz; returns its path."""
    path = raw_dir / (name + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(content) if gz else content)
    return path


def fixture_raw(root, gz, n_train=30, n_test=10):
    """A good MNIST raw/ folder (optionally all .gz) to damage one file of."""
    raw = write_mnist_fixture(root, "MNIST", n_train=n_train, n_test=n_test) / "MNIST" / "raw"
    if gz:
        for path in list(raw.iterdir()):
            path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes()))
            path.unlink()
    return raw


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("n_train, n_test, empty, words", [
    (0, 10, "train-images-idx3-ubyte", "holds 0 images (its header says so): an empty training set; put the "
                                       "complete train-images-idx3-ubyte"),
    (30, 0, "t10k-images-idx3-ubyte", "holds 0 images (its header says so): an empty test set; put the "
                                      "complete t10k-images-idx3-ubyte"),
])
def test_an_empty_idx_file_says_which_and_what_to_put_there(tmp_path, gz, n_train, n_test, empty, words):
    raw = fixture_raw(tmp_path, gz, n_train, n_test)
    with pytest.raises(UserError) as err:
        load_image_dataset("mnist", tmp_path, download=False)
    message = str(err.value)
    assert str(raw / (empty + (".gz" if gz else ""))) in message and words in message
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in message and "\n" not in message


def test_a_data_dir_the_file_system_cannot_name_is_one_line():
    with pytest.raises(UserError, match=r"cannot look for MNIST in '/dddd.*characters\): File name too long; give "
                                        "another --data_dir"):
        load_image_dataset("mnist", "/" + "d" * 5000, download=False)


def test_an_empty_labels_file_is_named(tmp_path):
    raw = fixture_raw(tmp_path, gz=False)
    write_raw(raw, "train-labels-idx1-ubyte", idx((0,)), gz=False)
    with pytest.raises(UserError, match=r"train-labels-idx1-ubyte holds 0 labels .*an empty training set"):
        load_image_dataset("mnist", tmp_path, download=False)


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
@pytest.mark.parametrize("name, content, words", [
    ("train-images-idx3-ubyte", idx((2**31 - 1, 28, 28), bytes(784)),
     "should hold 1683627179248 bytes of data for shape (2147483647, 28, 28) but holds 784"),
    ("train-labels-idx1-ubyte", idx((2**31 - 1,), bytes(30)), "should hold 2147483647 bytes of data"),
    ("train-images-idx3-ubyte", idx((2**32 - 1, 28, 28), dims_format="I"), "has a negative size in its IDX header"),
    ("train-images-idx3-ubyte", idx((30, 0, 28)), "holds items of 0x28 values, not 28x28"),
    ("train-images-idx3-ubyte", idx((30, 2**31 - 1, 2**31 - 1)), "holds items of 2147483647x2147483647 values"),
    ("train-images-idx3-ubyte", idx((30, 28, 28), kind=0x0D), "is not an IDX file of uint8 (bad magic number)"),
    ("t10k-images-idx3-ubyte", idx((10, 28, 28), ndim=2), "is an IDX file with 2 dimension(s), not 3"),
    ("t10k-labels-idx1-ubyte", b"\x00\x00\x08\x01\x00\x00", "ends inside its IDX header"),
    ("t10k-labels-idx1-ubyte", idx((10,), bytes(11)), "should hold 10 bytes of data for shape (10,) but holds more"),
    ("t10k-labels-idx1-ubyte", b"", "bad magic number"),
])
def test_a_damaged_idx_header_is_one_line_without_allocating(tmp_path, gz, name, content, words):
    raw = fixture_raw(tmp_path, gz)
    for stale in raw.glob(name + "*"):
        stale.unlink()
    path = write_raw(raw, name, content, gz)
    tracemalloc.start()
    try:
        with pytest.raises(UserError) as err:
            load_image_dataset("mnist", tmp_path, download=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(path) in str(err.value) and words in str(err.value) and "\n" not in str(err.value)
    assert peak < 64 * 2**20  # read in chunks: what the file holds, never what its header announces


def test_a_damaged_data_file_through_evaluate_is_exit_2_and_one_line(run_dir, tiny_config, capsys):
    raw = fixture_raw(run_dir.parent / "data", gz=True)
    write_raw(raw, "t10k-images-idx3-ubyte", idx((2**31 - 1, 28, 28)), gz=True)
    line = evaluate_fails(capsys, run_dir / f"{EXP}_t0.pt", "--device", "cpu", "--data_dir", run_dir.parent / "data")
    assert f"{raw / 't10k-images-idx3-ubyte.gz'} should hold" in line


# ---------------------------------------------------------------- tune.py: seeds, databases, --out ---------

def tune_argv(root, study, *extra):
    """tune.py arguments for a demo study whose database and files live under root."""
    return ["mnist", "--demo", "--study", study, "--set", f"output_dir={root}", "--set", "num_steps=4",
            "--set", "device=cpu", *extra]


@pytest.fixture
def no_training(monkeypatch):
    """Any trial or data loading fails the test: every check here must come before them."""
    monkeypatch.setattr("qsnn.runs.trial.run_trial", lambda *a, **k: pytest.fail("a trial ran"))
    monkeypatch.setattr("qsnn.data.loaders.make_loaders", lambda *a, **k: pytest.fail("data was loaded"))


def tune_fails(capsys, argv):
    """tune.main on argv must exit 2 with one error line; returns it."""
    assert tune.main(argv) == 2
    return error_line(capsys)


@pytest.mark.parametrize("seed, words", [
    ("-1", "--sampler-seed -1 is not allowed; must be within 0..4294967295 (2**32-1), e.g. --sampler-seed 0"),
    ("4294967296", "--sampler-seed 4294967296 is not allowed; must be within 0..4294967295"),
    ("1" + "0" * 40, "--sampler-seed 10000000000000000000000000000000000000000 is not allowed"),
    ("9" * 6000, "argument --sampler-seed: invalid int value: '9999"),
    ("0.5", "argument --sampler-seed: invalid int value: '0.5'"),
])
def test_a_sampler_seed_outside_numpys_range_is_one_line(tmp_path, capsys, no_training, seed, words):
    assert words in tune_fails(capsys, tune_argv(tmp_path, "seed", "--sampler-seed", seed))
    assert not (tmp_path / "tune").exists()


def test_the_whole_sampler_seed_range_is_accepted():
    for seed in ("0", str(2**32 - 1)):
        args = tune.build_parser().parse_args(["mnist", "--sampler-seed", seed])
        tune.check_args(args)
        assert 0 <= args.sampler_seed < 2**32


@pytest.fixture
def read_only(request):
    """make(path): path read-only even for root (chmod, plus chattr +i as root), undone afterwards."""
    made = []

    def make(path):
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        made.append((path, mode))
        if os.geteuid() == 0:  # root ignores modes; the immutable attribute stops it
            done = shutil.which("chattr") and subprocess.run(["chattr", "+i", str(path)], capture_output=True)
            if not done or done.returncode:
                pytest.skip("running as root, where chmod does not stop writes, and chattr +i is not permitted")
        return path

    yield make
    for path, mode in reversed(made):
        if os.geteuid() == 0 and shutil.which("chattr"):
            subprocess.run(["chattr", "-i", str(path)], capture_output=True)
        path.chmod(mode)


def make_study(path, name="ro", complete=True):
    """A tune.py-like study of the mnist demo in a SQLite file, with one complete trial if asked."""
    storage = tuning.open_storage(f"sqlite:///{path}", create=True)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for key, value in {"demo": True, "overrides": {}, "dataset": "mnist"}.items():
        study.set_user_attr(key, value)
    if complete:
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.002}, distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
            value=50.0))
    storage.engine.dispose()
    return path


def test_a_read_only_database_file_is_one_line_before_any_trial(tmp_path, capsys, no_training, read_only):
    db = read_only(make_study(tmp_path / "tune" / "ro.db"))
    content = db.read_bytes()
    line = tune_fails(capsys, tune_argv(tmp_path, "ro", "--n-trials", "1"))
    assert f"the database file {db} is read-only" in line and "make it writable or give another --storage" in line
    assert db.read_bytes() == content


def test_a_read_only_database_folder_is_one_line(tmp_path, capsys, no_training, read_only):
    folder = tmp_path / "dbs"
    folder.mkdir()
    make_study(folder / "kept.db")
    read_only(folder)
    before = snapshot(folder)
    for name in ("kept.db", "new.db"):  # an existing database needs its journal there too
        line = tune_fails(capsys, tune_argv(tmp_path, "ro", "--storage", f"sqlite:///{folder / name}"))
        assert f"its folder {folder} takes no new files" in line and "SQLite writes its journal" in line
    assert snapshot(folder) == before


def test_a_read_only_database_can_still_be_read_with_best(tmp_path, capsys, read_only):
    db = read_only(make_study(tmp_path / "tune" / "ro.db"))
    out = tmp_path / "best.json"
    assert tune.main(tune_argv(tmp_path, "ro", "--best", "--out", str(out))) == 0
    assert json.loads(out.read_text())["lr"] == 0.002 and "best trial 0" in capsys.readouterr().out


def test_a_database_that_turns_read_only_during_the_study_is_one_line(tmp_path, capsys, no_training, read_only,
                                                                      monkeypatch):
    db = read_only(make_study(tmp_path / "tune" / "ro.db"))
    monkeypatch.setattr(tuning, "check_sqlite_file", lambda *a: None)  # as if it changed after the checks
    line = tune_fails(capsys, tune_argv(tmp_path, "ro", "--n-trials", "2"))
    assert f"the study database sqlite:///{db} failed: " in line and "readonly database" in line
    assert "make them writable or give another --storage" in line


def test_sqlite_uri_filenames_are_read_as_paths(tmp_path, capsys, no_training, monkeypatch):
    db = make_study(tmp_path / "uri.db")
    uri = f"sqlite:///file:{db}?mode=ro&uri=true"
    line = tune_fails(capsys, tune_argv(tmp_path, "ro", "--storage", uri))
    assert "it opens the database read-only (mode=ro or immutable=1), but a search records its trials" in line
    out = tmp_path / "best.json"
    assert tune.main(tune_argv(tmp_path, "ro", "--storage", uri, "--best", "--out", str(out))) == 0
    assert json.loads(out.read_text())["lr"] == 0.002
    capsys.readouterr()
    missing = f"sqlite:///file:{tmp_path / 'missing.db'}?mode=ro&uri=true"
    assert f"no study database at {tmp_path / 'missing.db'}" in tune_fails(capsys, tune_argv(tmp_path, "x", "--storage",
                                                                                              missing, "--best"))
    assert not (tmp_path / "missing.db").exists()


def test_a_sqlite_uri_for_a_search_creates_the_file_it_names(tmp_path, monkeypatch, capsys):
    from types import SimpleNamespace

    monkeypatch.setattr("qsnn.data.loaders.make_loaders", lambda *a, **k: {})
    monkeypatch.setattr("qsnn.runs.trial.run_trial", lambda cfg, k, *a, on_epoch, **kw: on_epoch(1, 40.0) or
                        SimpleNamespace(best_score=40.0, best_epoch=1))
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///file:{tmp_path / 'sub' / 'made.db'}?uri=true"
    assert tune.main(tune_argv(tmp_path, "made", "--storage", uri, "--n-trials", "1", "--epochs", "1")) == 0
    assert (tmp_path / "sub" / "made.db").is_file() and not any(p.name.startswith("file:") for p in tmp_path.iterdir())
    assert "1 complete" in capsys.readouterr().out


@pytest.mark.parametrize("best", [True, False], ids=["best", "search"])
@pytest.mark.parametrize("out, words", [
    ("{tmp}/nope/best.json", "--out {tmp}/nope/best.json: its folder {tmp}/nope does not exist; create it first "
                             "(mkdir -p {tmp}/nope) or give another --out"),
    ("{tmp}", "--out {tmp} is a folder; give the JSON file to write, e.g. --out {tmp}/best.json"),
    ("/proc/best.json", "--out /proc/best.json: its folder /proc takes no new files"),
    ("/dev/null", "--out /dev/null is not a regular file"),
    ("{tmp}/a_file/best.json", "its folder {tmp}/a_file is not a folder"),
    ("{tmp}/" + "n" * 300 + ".json", "File name too long; give another --out"),
])
def test_an_out_file_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, no_training, best, out,
                                                                        words):
    (tmp_path / "a_file").write_text("")
    make_study(tmp_path / "tune" / "ro.db")
    before = snapshot(tmp_path)
    argv = tune_argv(tmp_path, "ro", "--out", out.format(tmp=tmp_path), *(["--best"] if best else []))
    assert words.format(tmp=tmp_path) in tune_fails(capsys, argv)
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(b"tune/ro")} == \
        {k: v for k, v in before.items() if not k.startswith(b"tune/ro")}  # validate made tune/ro/, nothing else
    assert after.get(b"tune/ro.db") == before[b"tune/ro.db"]


@pytest.mark.parametrize("argv", [
    ["--study", HUGE], ["--set", f"lr={HUGE}"], ["--set", f"{HUGE}=1"], ["--range", f"lr={HUGE}:1"],
    ["--range", f"{HUGE}=1:2"], ["--storage", HUGE], ["--storage", f"{HUGE}://h/x"], ["--storage", f"sqlite:///{HUGE}"],
    ["--n-trials", HUGE], ["--bogus", HUGE],
])
def test_huge_values_are_cut_and_shown_once(tmp_path, capsys, no_training, argv):
    line = tune_fails(capsys, tune_argv(tmp_path, "huge", *argv))
    assert runs_of_x(line) == 1
    assert not (tmp_path / "tune" / "huge.db").exists()


# ---------------------------------------------------------------- results table: folders and CSV logs -----

def write_run(root, folder_name, meta_changes=None, acc=b"epoch,test_acc\n1,50\n2,70\n", name=None):
    """A run folder (folder_name in bytes: any file-system name) with config.json and trial 0's acc log."""
    folder = os.path.join(os.fsencode(root), folder_name)
    os.makedirs(folder)
    meta = {"dataset": "mnist", "config": {"scheduler": "cosine", "num_bits": 4, "num_trials": 1},
            **(meta_changes or {})}
    with open(os.path.join(folder, b"config.json"), "w") as f:
        json.dump(meta, f)
    exp = folder_name if name is None else name
    with open(os.path.join(folder, b"acc_" + exp + b"_t0.csv"), "wb") as f:
        f.write(acc)
    return folder


def table_of(root):
    """(accuracy table, warning messages) of the runs under root."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", results.ResultsWarning)
        table = results.accuracy_table(results.find_runs(root))
    return table, [str(w.message) for w in caught]


def test_folder_names_that_are_not_utf8_are_shown_escaped(tmp_path):
    write_run(tmp_path, b"run\xff")
    write_run(tmp_path, b"other\xe9\xfe", {"config": {"scheduler": "step", "num_bits": 4}})
    write_run(tmp_path, b"line\nbreak", {"config": {"scheduler": "constant", "num_bits": 4}})
    table, _ = table_of(tmp_path)
    assert sorted(table["trials"]) == ["line\\nbreak/t0", "other\\xe9\\xfe/t0", "run\\xff/t0"]
    assert table["test_acc_max"].tolist() == [70.0, 70.0, 70.0]


def test_the_results_script_prints_and_writes_escaped_names(tmp_path):
    write_run(tmp_path / "runs", b"run\xff")
    folder = write_run(tmp_path / "runs", b"bad\xfe", {"config": {"scheduler": "step"}}, acc=b"epoch,test_acc\n")
    out = tmp_path / "table.csv"
    proc = subprocess.run([sys.executable, str(ROOT / "extract_test_set_accuracy.py"), str(tmp_path / "runs"),
                           "--out", str(out)], capture_output=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert b"run\\xff/t0" in out.read_bytes() and "run\\xff/t0" in out.read_text(encoding="utf-8")
    assert b"| mnist | 4bit | cosine |" in proc.stdout
    warning = [line for line in proc.stderr.decode().splitlines() if line.startswith("warning: ")]
    shown = os.fsdecode(folder).replace("\udcfe", "\\xfe")  # the byte as the warning writes it
    assert warning == [f"warning: skipping {shown}/acc_bad\\xfe_t0.csv: header only, no data rows"]


@pytest.mark.parametrize("acc, kept, says", [
    (b"epoch,test_acc\n1,50\n2,\xff\xfe\n3,60\n", [50, 60], "dropped 1 row(s) holding bytes that are not UTF-8 text"),
    (b"\xef\xbb\xbfepoch,test_acc\n1,55\n", [55], None),  # a byte-order mark is not damage
    (b"epoch,test_acc\n1,50\n\x00\x00\x00\n2,\"6\n", [50], "dropped 2 row(s) with quotes or NUL bytes"),
    (b"epoch,test_acc\n1e30,50\n-3,40\n1.5,30\n2,20\n", [20], "dropped 3 row(s) whose epoch is not a whole number"),
    (b"epoch,test_acc\n1,50\n2,inf\n3,1e999\n4,-0.5\n", [50], "dropped 3 row(s) with missing or non-numeric values"),
    (b'epoch,test_acc\n1,"50\n2,60\n', [60], "dropped 1 row(s) with quotes or NUL bytes"),
    (b"epoch,test_acc\n\xff\n\"\n", None, "no data rows"),
])
def test_garbage_rows_in_a_csv_log_are_skipped_with_a_warning(tmp_path, acc, kept, says):
    write_run(tmp_path, b"run", acc=acc)
    write_run(tmp_path, b"good", {"config": {"scheduler": "step"}})
    table, messages = table_of(tmp_path)
    row = table.set_index("scheduler").loc["cosine"] if kept else None
    if kept:
        assert row["best_test_acc_per_trial"] == f"{max(kept):.6g}" and row["epochs_max"] == len(kept)
    else:
        assert "cosine" not in set(table["scheduler"])
    assert (says is None and not messages) or any(says in m for m in messages), messages
    assert all("\n" not in m for m in messages)


@pytest.mark.parametrize("meta, status, says", [
    ({"precision": ["4bit"]}, None, "its precision is a list, not text"),
    ({"exp_name": "../../etc/x"}, None, "its exp_name '../../etc/x' is not a plain file name"),
    ({"exp_name": "run\u0000"}, None, "its exp_name 'run\\x00' is not a plain file name"),
    ({"dataset": {"name": "mnist"}}, None, "its dataset is a dict, not text"),
    ({"config": {"scheduler": ["cosine"]}}, None, "its scheduler is a list, not text"),
    ({"exp_name": HUGE + "/"}, None, "(5,000,003 characters) is not a plain file name"),
    ({}, {"trials": {"0": 5}}, "trial 0 is not a trial number with an object"),
    ({}, {"trials": {"-1": {}}}, "trial -1 is not a trial number with an object"),
    ({}, {"trials": [1, 2]}, "not a readable status file"),
    ({}, b"\xff\xfe{", "not a readable status file"),
])
def test_garbage_run_files_are_skipped_with_a_warning(tmp_path, capsys, meta, status, says):
    folder = write_run(tmp_path, b"run", meta)
    if status is not None:
        with open(os.path.join(folder, b"status.json"), "wb") as f:
            f.write(status if isinstance(status, bytes) else json.dumps(status).encode())
    write_run(tmp_path, b"good", {"config": {"scheduler": "step"}})
    assert extract_test_set_accuracy.main([str(tmp_path), "--out", str(tmp_path / "t.csv")]) == 0
    err = capsys.readouterr().err.splitlines()
    warned = [line for line in err if line.startswith("warning: ")]
    assert any(says in line for line in warned), err
    assert all(len(line) < LONGEST_LINE for line in err) and "Traceback" not in "\n".join(err)
    assert "good/t0" in (tmp_path / "t.csv").read_text()


def test_a_root_the_file_system_cannot_name_is_one_line(capsys):
    assert extract_test_set_accuracy.main(["/" + "r" * 5000, "--out", "/nonexistent/t.csv"]) == 2
    assert "File name too long" in error_line(capsys)
