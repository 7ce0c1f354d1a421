"""A small fake DVS128 Gesture in tonic's exact on-disk layout, loadable by the real tonic loader.

Layout written under `root` (the `data_dir` to pass to `qsnn.data.dvs.load_dvs_gesture`):
  DVSGesture/ibmGestureTrain.tar.gz, DVSGesture/ibmGestureTest.tar.gz   (empty placeholders)
  DVSGesture/ibmGestureTrain/user01_fluorescent/<label>.npy, ...       (one file per class)
  DVSGesture/ibmGestureTest/user24_fluorescent/<label>.npy, ...
Each .npy is an int64 [N, 4] array of (x, y, p, t) rows with t in ms, as tonic expects.
"""

from pathlib import Path

import numpy as np
from tonic.datasets import DVSGesture

NUM_CLASSES = len(DVSGesture.classes)
LIGHTINGS = ("fluorescent", "fluorescent_led", "lab", "led", "natural")
# tonic only skips its download when a split has its archive file and at least 100 .npy files
TONIC_MIN_FILES = 100
SPLIT_FOLDERS = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}
SPLIT_ARCHIVES = {"train": DVSGesture.train_filename, "test": DVSGesture.test_filename}
FIRST_USER = {"train": 1, "test": 24}  # the real split: users 1-23 train, 24-29 test


def make_dvs_gesture_fixture(root: Path, n_train_per_class: int = 10, n_test_per_class: int = 10,
                             n_events: int = 200, duration_ms: tuple[int, int] = (10, 50),
                             seed: int = 0) -> Path:
    """Write random samples (each class once per user folder) under root; return it as data_dir."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, per_class in (("train", n_train_per_class), ("test", n_test_per_class)):
        if per_class * NUM_CLASSES < TONIC_MIN_FILES:
            raise ValueError(f"tonic needs >= {TONIC_MIN_FILES} files per split; "
                             f"use at least {-(-TONIC_MIN_FILES // NUM_CLASSES)} per class")
        dvs_dir = root / "DVSGesture"
        dvs_dir.mkdir(parents=True, exist_ok=True)
        (dvs_dir / SPLIT_ARCHIVES[split]).touch()
        for index in range(per_class):
            for label in range(NUM_CLASSES):
                duration = int(rng.integers(duration_ms[0], duration_ms[1] + 1))
                write_sample(root, split, user_folder(split, index), label,
                             random_events(rng, n_events, duration))
    return root


def user_folder(split: str, index: int) -> str:
    """Name of the index-th subject/lighting folder of a split, e.g. 'user01_fluorescent'."""
    user = FIRST_USER[split] + index // len(LIGHTINGS)
    return f"user{user:02d}_{LIGHTINGS[index % len(LIGHTINGS)]}"


def write_sample(root: Path, split: str, folder: str, label: int, events) -> Path:
    """Save rows (x, y, p, t_ms) as <root>/DVSGesture/<split folder>/<folder>/<label>.npy."""
    path = Path(root) / "DVSGesture" / SPLIT_FOLDERS[split] / folder / f"{label}.npy"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(events, dtype=np.int64).reshape(-1, 4))
    return path


def random_events(rng: np.random.Generator, n_events: int, duration_ms: int) -> np.ndarray:
    """n_events random (x, y, p, t_ms) rows, time-sorted, starting at a non-zero time."""
    start = int(rng.integers(0, 1000))
    t = start + np.sort(rng.integers(0, duration_ms + 1, n_events))
    t[0], t[-1] = start, start + duration_ms
    xy = rng.integers(0, 128, (n_events, 2))
    p = rng.integers(0, 2, n_events)
    return np.column_stack([xy, p, t]).astype(np.int64)
