"""Shared test setup: the repository root and tests/ on sys.path, fixture data builders."""
import os
import sys
from pathlib import Path

# Tiny tensors: one thread avoids oversubscription on small shared CPUs (subprocesses inherit it).
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Data installed on this machine (Debian's dataset-fashion-mnist) must not change what the tests see.
os.environ["QSNN_NO_SYSTEM_DATA"] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from qsnn.runs.memory import keep_freed_memory  # noqa: E402
from torchvision_fixture import write_mnist_fixture  # noqa: E402

keep_freed_memory()  # as run_experiment does: far fewer page faults, a faster suite


@pytest.fixture
def mnist_dir(tmp_path):
    """A data_dir holding a small, learnable MNIST in torchvision's raw on-disk format."""
    return write_mnist_fixture(tmp_path / "data", "MNIST", n_train=240, n_test=120)


@pytest.fixture
def fashion_dir(tmp_path):
    """A data_dir holding a small, learnable FashionMNIST in torchvision's raw on-disk format."""
    return write_mnist_fixture(tmp_path / "data", "FashionMNIST", n_train=240, n_test=120)


@pytest.fixture
def tiny_config(mnist_dir, tmp_path):
    """mnist/run.py's config shrunk to seconds on the MNIST fixture, writing into tmp_path/runs."""
    import runpy

    cfg = runpy.run_path(str(ROOT / "mnist" / "run.py"))["config"]
    cfg.update(data_dir=str(mnist_dir), output_dir=str(tmp_path / "runs"), num_steps=6, batch_size=40,
               test_batch_size=120, epochs=3, patience=10, num_trials=1, t_max=12, lr=1e-2, device="cpu")
    return cfg


def as_argv(overrides):
    """['--key', 'value', ...] for a dict of config overrides."""
    return [item for key, value in overrides.items() for item in (f"--{key}", str(value))]


def untrained_run_folder(tmp_path, **keys):
    """A run folder as training writes it (config.json, status.json, best checkpoint) of the digits demo network
    at 4 steps with untrained weights, config keys changed by `keys`: what the exports read."""
    import json
    import runpy

    from qsnn.core.models import build_model

    cfg = runpy.run_path(str(ROOT / "mnist" / "run.py"))["config"]
    cfg.update(dataset="digits", num_steps=4, exp_name="tiny", output_dir=str(tmp_path), **keys)
    folder = tmp_path / "tiny"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"exp_name": "tiny", "config": cfg}))
    (folder / "status.json").write_text(json.dumps({"trials": {"0": {"best_score": 50.0}}}))
    torch.manual_seed(0)
    torch.save({"model": build_model(cfg).state_dict(), "epoch": 1, "test_acc": 50.0, "val_acc": None,
                "config": cfg}, folder / "tiny_t0.pt")
    return folder
