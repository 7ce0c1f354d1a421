"""The config schema (qsnn/runs/schema.py) and everything derived from it: run.py keys, --help, validation,
--resume, the results table's identity, tune.py's key sets and the integer export's known keys."""
import dataclasses
import json
import runpy
import sys
from pathlib import Path

import pytest

from qsnn.runs import config, schema, tuning

from qsnn.analysis import results
from qsnn.runs.cli import main
from qsnn.runs.config import parse_args, validate
from qsnn.errors import UserError
from qsnn.deploy.convert import known_config_keys
from qsnn.runs.runlog import experiment_name

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_results import write_run  # noqa: E402

RUN_PYS = {name: runpy.run_path(str(ROOT / name / "run.py")) for name in ("mnist", "fashion_mnist", "dvs128_gesture")}


def run_py_keys():
    """(run.py, key) for every key of every run.py's config and demo preset."""
    return [(name, key) for name, ns in RUN_PYS.items() for key in [*ns["config"], *(ns.get("demo") or {})]]


@pytest.mark.parametrize("name, key", run_py_keys())
def test_every_run_py_key_is_declared_with_its_type(name, key):
    assert key in schema.SCHEMA, f"{name}/run.py has {key}, which qsnn/runs/schema.py does not declare"
    ns = RUN_PYS[name]
    value = {**ns["config"], **(ns.get("demo") or {})}[key]
    assert config.check_type(key, value, schema.SCHEMA[key].default) == value
    assert schema.SCHEMA[key].allows(value), (name, key, value)


def test_every_declared_key_is_well_formed():
    for key in schema.KEYS:
        assert key.help and key.role in schema.ROLES, key.name
        assert config.check_type(key.name, key.default, key.default) == key.default
        assert key.allows(key.default), key.name
        assert not key.schedulers or key.role == "schedule", key.name
    assert {"num_steps_train", "num_steps_test", "sync_batch_norm", "state_bits", "snapshots"} <= set(schema.SCHEMA)


def test_the_code_uses_the_derived_sets():
    assert config.RESUMABLE_KEYS is schema.RESUMABLE_KEYS
    assert config.NULLABLE is schema.NULLABLE and config.CHOICES is schema.CHOICES
    assert results.SCHEDULE_KEYS is schema.SCHEDULE_KEYS
    assert tuning.RESERVED is schema.TUNE_SETS and tuning.LOADER_KEYS is schema.LOADER_KEYS
    assert tuning.RUN_ONLY_KEYS is schema.RUN_ONLY_KEYS
    assert known_config_keys() == set(schema.SCHEMA)


def test_resumable_keys_are_todays_set():
    assert schema.RESUMABLE_KEYS == {"device", "data_dir", "output_dir", "num_workers", "epochs", "patience",
                                     "num_trials", "execution", "time_chunk", "tensor_data", "test_batch_size",
                                     "snapshots"}
    assert {"sync_batch_norm", "seed", "exp_name", "lr"}.isdisjoint(schema.RESUMABLE_KEYS)


def with_role(monkeypatch, name, role):
    """Patch the schema so key `name` has `role` (derived flags recomputed), as if declared so."""
    old = schema.SCHEMA[name]
    new = dataclasses.replace(old, role=role, resumable=None, identity=None, searchable=None)
    keys = tuple(new if k.name == name else k for k in schema.KEYS)
    monkeypatch.setattr(schema, "KEYS", keys)
    monkeypatch.setattr(schema, "SCHEMA", {k.name: k for k in keys})
    return keys


def test_a_keys_role_decides_its_sets(monkeypatch):
    keys = with_role(monkeypatch, "device", "network")
    assert "device" not in schema.keys_where(lambda k: k.resumable, keys)
    assert "device" in schema.keys_where(lambda k: k.searchable, keys)
    assert schema.experiment_identity({"device": "cuda"})["device"] == "cuda"
    keys = with_role(monkeypatch, "beta", "execution")
    assert "beta" in schema.keys_where(lambda k: k.resumable, keys)
    assert "beta" not in schema.experiment_identity({"beta": 0.5})


def test_identity_fills_defaults_and_keeps_only_the_schedulers_keys():
    identity = schema.experiment_identity({"scheduler": "step", "gamma": 0.25, "t_max": 7, "seed": 3,
                                           "device": "cuda", "exp_name": "x"})
    assert identity["gamma"] == 0.25 and identity["state_bits"] is None and identity["sync_batch_norm"] is False
    assert identity["world_size"] == 1 and "num_steps_train" not in identity
    assert {"t_max", "seed", "device", "exp_name", "epochs"}.isdisjoint(identity)
    assert schema.experiment_identity({}, {"world_size": 4})["world_size"] == 4
    assert schema.experiment_identity({"dataset": "dvs128_gesture"})["num_steps_test"] == 600


def test_default_folder_name_comes_from_the_schema():
    assert schema.FOLDER_NAME_KEYS == ("dataset", "num_bits", "scheduler")
    assert experiment_name({"exp_name": "", "dataset": "mnist", "num_bits": None, "scheduler": "step"}) == (
        "mnist_fp32_step")


def test_tune_key_sets():
    assert set(schema.TUNE_SETS) == {"epochs", "val_split", "num_trials", "exp_name"}
    assert {"lr", "beta", "threshold", "slope", "dropout", "num_bits", "scheduler"} <= schema.SEARCHABLE_KEYS
    assert {"seed", "epochs", "device", "dataset", "snapshots"}.isdisjoint(schema.SEARCHABLE_KEYS)
    assert {"batch_size", "seed", "val_split", "num_steps_train"} <= set(schema.LOADER_KEYS)
    with pytest.raises(UserError, match="seed cannot be searched"):
        tuning.parse_range("seed=0:5", RUN_PYS["mnist"]["config"])


def test_a_run_py_dict_missing_keys_takes_the_schema_defaults():
    fashion = {k: v for k, v in RUN_PYS["fashion_mnist"]["config"].items() if k not in ("state_bits", "snapshots")}
    cfg, _ = parse_args(fashion, ["--snapshots", "epoch"])
    assert cfg["state_bits"] is None and cfg["snapshots"] == "epoch"
    with pytest.raises(UserError, match="unknown config key --num_steps_train"):
        parse_args(fashion, ["--num_steps_train", "5"])  # a DVS key is no key of an image dataset's run.py
    assert parse_args({**fashion, "extra": 2}, ["--extra", "3"])[0]["extra"] == 3  # a stand-in script's own key


def test_digits_demo_trains_without_state_bits_and_snapshots(tmp_path):
    cfg = {k: v for k, v in RUN_PYS["mnist"]["config"].items() if k not in ("state_bits", "snapshots")}
    argv = ["--demo", "--epochs", "1", "--num_steps", "3", "--device", "cpu", "--output_dir", str(tmp_path)]
    assert main(cfg, RUN_PYS["mnist"]["demo"], argv) == 0
    saved = json.loads((tmp_path / "digits_4bit_cosine" / "config.json").read_text())["config"]
    assert saved["state_bits"] is None and saved["snapshots"] == "off"


def test_help_lists_every_key_with_help_text(capsys):
    cfg = {k: v for k, v in RUN_PYS["dvs128_gesture"]["config"].items() if k != "state_bits"}
    assert main(cfg, None, ["--help"]) == 0
    lines = {line.split()[0][2:]: line for line in capsys.readouterr().out.splitlines()
             if line.startswith("  --") and not line.startswith("  --help")}
    expected = [k.name for k in schema.keys_for(("dvs128_gesture",))]
    assert set(expected) <= set(lines)
    for key in expected:
        assert len(lines[key].split(None, 2)) == 3, key  # name, default, help text
    assert schema.SCHEMA["state_bits"].help in lines["state_bits"]


def bad_values(key):
    """Values of key's own type that its choices or range refuse."""
    if key.choices:
        return ["bogus"]
    candidates = {int: [-1, 0, 17, 2**63], float: [-1.0, 0.0, 1.0, 1.5, 17.0]}.get(key.type, [])
    return [v for v in candidates if not key.allows(v)]


def bad_cases():
    """(key, value, message fragment) for one bad type of every key and each refused choice or range."""
    # [1] is of no key's type, except for the per-layer keys, which take lists of their type: [1.5] is not
    cases = [(k.name, [1.5] if k.layers else [1], "expects") for k in schema.KEYS]
    cases += [(k.name, v, "is not allowed") for k in schema.KEYS for v in bad_values(k)]
    return cases


@pytest.mark.parametrize("key, value, fragment", bad_cases())
def test_validation_refuses_each_bad_value_in_one_line(tmp_path, key, value, fragment):
    cfg = {**schema.complete(RUN_PYS["mnist"]["config"]), "device": "cpu", "output_dir": str(tmp_path)}
    with pytest.raises(UserError) as err:
        validate({**cfg, key: value})
    assert f"--{key}" in str(err.value) and fragment in str(err.value) and "\n" not in str(err.value)


def test_every_range_key_has_a_refused_value():
    ranged = [k.name for k in schema.KEYS if k.check or k.choices]
    assert all(bad_values(schema.SCHEMA[k]) for k in ranged), [k for k in ranged if not bad_values(schema.SCHEMA[k])]


# ---------------------------------------------------------------- the results table: trials and identity

PAPER = {"dataset": "mnist", "num_bits": 4, "scheduler": "cosine", "seed": 0, "num_trials": 1}


def table_with_warnings(root):
    """(accuracy table, warning messages) of the run folders under root."""
    with pytest.warns() as record:
        table = results.accuracy_table(results.find_runs(root))
    return table, [str(w.message) for w in record if issubclass(w.category, results.ResultsWarning)]


def set_world_size(folder, world_size):
    """Record a world size in a run folder's config.json, as runlog.execution_context does."""
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "world_size": world_size}))


def test_a_copied_paper_run_counts_once_with_a_warning(tmp_path):
    paper = write_run(tmp_path / "results" / "paper", "mnist_4bit_cosine", "mnist", "cosine", [[99.0, 99.17]],
                      config=PAPER)
    copy = write_run(tmp_path / "runs", "mnist_4bit_cosine", "mnist", "cosine", [[99.0, 99.17]], config=PAPER)
    table, warned = table_with_warnings(tmp_path)
    assert table.n_trials.tolist() == [1] and table.loc[0, "test_acc_mean"] == 99.17
    assert len(warned) == 1 and str(paper) in warned[0] and str(copy) in warned[0] and "counted once" in warned[0]


def test_a_repeated_trial_is_counted_from_its_finished_copy(tmp_path):
    """The 18-epoch run still training and a finished 5-epoch run of the same config: the finished one counts."""
    running = write_run(tmp_path, "a_long", "mnist", "constant", [[80.0, 90.0, 91.0]], config=PAPER)
    finished = write_run(tmp_path, "b_short", "mnist", "constant", [[80.0, 85.0]], config=PAPER)
    for folder, state, epochs in ((running, "running", 3), (finished, "finished", 2)):
        (folder / "status.json").write_text(json.dumps({"trials": {"0": {"state": state, "epochs_completed": epochs}}}))
    table, warned = table_with_warnings(tmp_path)
    assert table.n_trials.tolist() == [1] and table.loc[0, "test_acc_mean"] == 85.0
    repeat = [w for w in warned if "repeats" in w]
    assert len(repeat) == 1 and repeat[0].startswith(f"{running}: trial t0 repeats trial t0 of {finished}")
    assert repeat[0].endswith("(finished, 2 epochs)")


def test_three_seed_0_demo_folders_are_one_trial(tmp_path):
    for name in ("demo_a", "demo_b", "demo_c"):
        write_run(tmp_path, name, "digits", "cosine", [[50.0, 60.0]], config=PAPER)
    table, warned = table_with_warnings(tmp_path)
    assert table.n_trials.tolist() == [1]
    assert len(warned) == 2 and all("demo_a" in w for w in warned)


def test_other_seeds_pool_as_trials_of_one_experiment(tmp_path):
    write_run(tmp_path, "seed0", "mnist", "cosine", [[90.0], [91.0]], config={**PAPER, "num_trials": 2})
    write_run(tmp_path, "seed2", "mnist", "cosine", [[92.0]], config={**PAPER, "seed": 2})
    write_run(tmp_path, "seed1", "mnist", "cosine", [[93.0]], config={**PAPER, "seed": 1})  # repeats seed0/t1
    table, warned = table_with_warnings(tmp_path)
    assert table.n_trials.tolist() == [3] and len(warned) == 1 and "seed1: trial t0 repeats trial t1" in warned[0]


@pytest.mark.parametrize("differ", ["world_size", "sync_batch_norm"])
def test_ddp_and_single_process_runs_are_two_experiments(tmp_path, differ):
    single = write_run(tmp_path, "single", "mnist", "cosine", [[90.0]], config=PAPER)
    ddp = write_run(tmp_path, "ddp", "mnist", "cosine", [[91.0]], config={**PAPER, "seed": 1})
    set_world_size(ddp, 2)
    if differ == "sync_batch_norm":
        set_world_size(single, 2)
        ddp_config = json.loads((ddp / "config.json").read_text())
        ddp_config["config"]["sync_batch_norm"] = True
        (ddp / "config.json").write_text(json.dumps(ddp_config))
    table = results.accuracy_table(results.find_runs(tmp_path))
    assert table.n_trials.tolist() == [1, 1]
    assert sorted(table.setting) == (["world_size=1", "world_size=2"] if differ == "world_size"
                                     else ["sync_batch_norm=False", "sync_batch_norm=True"])


def test_an_old_folder_without_new_keys_pools_with_its_defaults(tmp_path):
    write_run(tmp_path, "old", "mnist", "cosine", [[90.0]], config=PAPER)  # no state_bits, sync_batch_norm, world_size
    new = write_run(tmp_path, "new", "mnist", "cosine", [[92.0]],
                    config={**PAPER, "seed": 1, "state_bits": None, "sync_batch_norm": False, "snapshots": "epoch"})
    set_world_size(new, 1)
    table = results.accuracy_table(results.find_runs(tmp_path))
    assert table.n_trials.tolist() == [2] and table.loc[0, "setting"] == ""
