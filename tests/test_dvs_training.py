"""The event network trains through the shared loop on a learnable DVS128 Gesture fixture."""
import csv
import runpy

import numpy as np

from conftest import ROOT
from dvs_fixture import NUM_CLASSES, user_folder, write_sample
from qsnn.runs import runlog
from qsnn.runs.experiment import run_experiment


def write_learnable_fixture(root, per_class=10, n_events=300, seed=0):
    """Like tonic's layout from dvs_fixture, but each class fires in its own vertical band of the sensor."""
    rng = np.random.default_rng(seed)
    for split, archive in (("train", "ibmGestureTrain.tar.gz"), ("test", "ibmGestureTest.tar.gz")):
        (root / "DVSGesture").mkdir(parents=True, exist_ok=True)
        (root / "DVSGesture" / archive).touch()
        for index in range(per_class):
            for label in range(NUM_CLASSES):
                t = np.sort(rng.integers(0, 40, n_events)) + 5  # ms
                x = rng.integers(label * 11, label * 11 + 11, n_events)
                y = rng.integers(0, 128, n_events)
                p = rng.integers(0, 2, n_events)
                write_sample(root, split, user_folder(split, index), label, np.column_stack([x, y, p, t]))
    return root


def test_event_network_trains_on_the_fixture(tmp_path):
    data_dir = write_learnable_fixture(tmp_path / "data")
    cfg = runpy.run_path(str(ROOT / "dvs128_gesture" / "run.py"))["config"]
    cfg.update(data_dir=str(data_dir), output_dir=str(tmp_path / "runs"), num_steps_train=8,
               num_steps_test=12, epochs=4, num_trials=1, t_max=40, lr=1e-2, device="cpu", dropout=0.0)
    run_experiment(cfg)
    folder = runlog.run_folder(cfg)
    assert folder.name == "dvs128_gesture_4bit_cosine"
    with open(folder / "loss_dvs128_gesture_4bit_cosine_t0.csv", newline="") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    per_epoch = len(losses) // 4
    assert per_epoch == 110 // 16 + 1
    assert np.mean(losses[-per_epoch:]) < 0.7 * np.mean(losses[:per_epoch])
    with open(folder / "acc_dvs128_gesture_4bit_cosine_t0.csv", newline="") as f:
        assert max(float(r["test_acc"]) for r in csv.DictReader(f)) > 30  # chance: 9%
    assert (data_dir / "DVSGesture" / "frames_cache").is_dir()
