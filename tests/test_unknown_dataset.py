"""A dataset name the registry does not know ends in one `error:` line, exit 2, from every root script that takes
one (on the command line, in a grid, or in a run folder's config.json / checkpoint), and writes nothing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NAME = "no_such_dataset"


def run(*args, cwd=ROOT):
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env=env)


def foreign_run_folder(tmp_path):
    """A run folder whose config.json and checkpoint name a dataset nobody registered."""
    import runpy

    cfg = {**runpy.run_path(str(ROOT / "mnist" / "run.py"))["config"], "dataset": NAME, "output_dir": str(tmp_path)}
    folder = tmp_path / "foreign"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"config": cfg, "dataset": NAME, "exp_name": "foreign"}))
    (folder / "status.json").write_text(json.dumps({"trials": {"0": {"state": "finished", "best_score": 50.0,
                                                                     "epochs_completed": 1}}}))
    from qsnn.core.models import build_model

    weights = build_model({**cfg, "dataset": "mnist"}).state_dict()  # real weights: only the name is foreign
    torch.save({"model": weights, "config": cfg, "epoch": 1}, folder / "foreign_t0.pt")
    return folder


def assert_one_line(result, before, folder):
    assert result.returncode == 2, result.stdout[-1500:] + result.stderr[-1500:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and NAME in lines[0], result.stderr
    assert sorted(p.relative_to(folder) for p in folder.rglob("*")) == before


@pytest.mark.parametrize("script", ["mnist/run.py", "fashion_mnist/run.py", "dvs128_gesture/run.py"])
def test_run_py(script, tmp_path):
    result = run(ROOT / script, "--dataset", NAME, "--output_dir", tmp_path)
    assert_one_line(result, [], tmp_path)


def test_tune_py(tmp_path):
    assert_one_line(run(ROOT / "tune.py", NAME, "--out", tmp_path / "best.json"), [], tmp_path)


def test_sweep_grid(tmp_path):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"run": "mnist/run.py", "fixed": {"dataset": NAME, "output_dir": str(tmp_path / "o")},
                                "axes": {"seed": [0, 1]}, "name": "s{seed}"}))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert_one_line(run(ROOT / "sweep.py", grid, "--dry-run"), before, tmp_path)


@pytest.mark.parametrize("command", [
    ("evaluate.py", "{folder}/foreign_t0.pt"),
    ("export.py", "{folder}"),
])
def test_scripts_reading_a_run_folder(command, tmp_path):
    folder = foreign_run_folder(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = run(ROOT / command[0], *(part.format(folder=folder) for part in command[1:]))
    assert_one_line(result, before, tmp_path)
