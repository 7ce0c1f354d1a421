"""DVS128 Gesture frames: shapes, bin counts, padding, disk cache, missing-data message."""

import pickle
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from dvs_fixture import NUM_CLASSES, make_dvs_gesture_fixture, write_sample  # noqa: E402
from qsnn.data import dvs  # noqa: E402
from qsnn.errors import UserError  # noqa: E402

T_TRAIN, T_TEST = 8, 12  # 24 ms / 36 ms at 3 ms, so 10-50 ms fixture samples get padded and cut
PER_CLASS = 10
HAND = "user01_fluorescent/0.npy"
SHORT = "user01_fluorescent/1.npy"
LONG = "user01_fluorescent/2.npy"


def _hand_placed_events():
    """Sensor pixel (x=5, y=9), ON: 3 events in window 0 and 1 in window 1; one OFF at (120, 4)."""
    t0 = 7  # ms; windows start at the first event, not at t = 0
    return [[5, 9, 1, t0], [120, 4, 0, t0], [5, 9, 1, t0 + 1], [5, 9, 1, t0 + 2],
            [5, 9, 1, t0 + 3]]


def _write_special_samples(root: Path) -> None:
    write_sample(root, "train", "user01_fluorescent", 0, _hand_placed_events())
    write_sample(root, "train", "user01_fluorescent", 1, [[64, 64, 1, t] for t in range(500, 506)])
    write_sample(root, "train", "user01_fluorescent", 2, [[64, 64, 0, t] for t in range(100)])


def _make_data(root: Path) -> Path:
    make_dvs_gesture_fixture(root, n_train_per_class=PER_CLASS, n_test_per_class=PER_CLASS)
    _write_special_samples(root)
    return root


def _load(data_dir, **kwargs):
    return dvs.load_dvs_gesture(data_dir, num_steps_train=kwargs.pop("T_train", T_TRAIN),
                                num_steps_test=kwargs.pop("T_test", T_TEST), **kwargs)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    data_dir = _make_data(tmp_path_factory.mktemp("dvs"))
    return data_dir, *_load(data_dir, download=False)


def _frames_of(dataset, source: str) -> torch.Tensor:
    return dataset[dataset.sources.index(source)][0]


def test_items_have_frame_shape_dtype_and_labels(loaded):
    _, train, test = loaded
    for dataset, steps in ((train, T_TRAIN), (test, T_TEST)):
        assert len(dataset) == PER_CLASS * NUM_CLASSES
        frames, label = dataset[3]
        assert frames.shape == (steps, 2, 32, 32) and frames.dtype == torch.float32
        assert isinstance(label, int) and 0 <= label < NUM_CLASSES
        all_frames, labels = dvs.frames_as_tensors(dataset)
        assert all_frames.shape == (len(dataset), steps, 2, 32, 32)
        assert all_frames.dtype == torch.int16 and labels.dtype == torch.int64
        assert torch.equal(all_frames[3].float(), frames) and labels[3] == label
        assert sorted(set(labels.tolist())) == list(range(NUM_CLASSES))


def test_hand_placed_events_land_in_known_bins_with_y_as_row_axis(loaded):
    frames = _frames_of(loaded[1], HAND)
    # sensor (x=5, y=9) -> 32x32 (x=1, y=2); frames are [T, polarity, y, x]
    assert frames[0, 1, 2, 1] == 3 and frames[1, 1, 2, 1] == 1
    assert frames[0, 1, 1, 2] == 0
    # sensor (x=120, y=4) OFF -> (x=30, y=1) in channel 0
    assert frames[0, 0, 1, 30] == 1 and frames[0, 0, 30, 1] == 0
    assert frames.sum() == 5 and frames[2:].sum() == 0


def test_short_sample_is_zero_padded_and_long_sample_truncated(loaded):
    short = _frames_of(loaded[1], SHORT)  # 6 events over 6 ms: windows 0 and 1 only
    assert short.shape[0] == T_TRAIN
    assert short[0].sum() == 3 and short[1].sum() == 3 and short[2:].abs().sum() == 0
    long = _frames_of(loaded[1], LONG)  # one event per ms for 100 ms; only the first 24 ms kept
    assert long.shape[0] == T_TRAIN
    assert [int(frame.sum()) for frame in long] == [3] * T_TRAIN


def test_first_load_bins_once_and_second_load_reads_cache(tmp_path, monkeypatch, capsys):
    data_dir = _make_data(tmp_path)
    train, test = _load(data_dir, download=False)
    assert "binning DVS128 Gesture events into frames once; cached at" in capsys.readouterr().out

    def no_binning(*args, **kwargs):
        raise AssertionError("events were binned again instead of read from the cache")

    monkeypatch.setattr(dvs, "_bin_events", no_binning)
    train2, test2 = _load(data_dir, download=False)
    assert "binning" not in capsys.readouterr().out
    for first, second in ((train, train2), (test, test2)):
        assert torch.equal(dvs.frames_as_tensors(first)[0], dvs.frames_as_tensors(second)[0])
        assert np.array_equal(first.labels, second.labels) and first.sources == second.sources


def test_cache_key_changes_with_every_binning_setting(tmp_path):
    base = dvs.BinningSettings(3000, 0.25, 100, 600)
    variants = [dvs.BinningSettings(1000, 0.25, 100, 600), dvs.BinningSettings(3000, 0.5, 100, 600),
                dvs.BinningSettings(3000, 0.25, 50, 600), dvs.BinningSettings(3000, 0.25, 100, 300)]
    keys = {base.key, *(settings.key for settings in variants)}
    assert len(keys) == 5
    data_dir = _make_data(tmp_path)
    _load(data_dir, download=False)
    _, test = _load(data_dir, T_test=T_TEST + 1, download=False)
    assert test[0][0].shape[0] == T_TEST + 1
    assert len(list((data_dir / "DVSGesture" / "frames_cache").iterdir())) == 2


def test_interrupted_build_leaves_no_partial_cache(tmp_path, monkeypatch):
    data_dir = _make_data(tmp_path)
    calls = []

    def fail_midway(*args, **kwargs):
        calls.append(1)
        if len(calls) > 20:
            raise KeyboardInterrupt
        return np.zeros((T_TRAIN, 2, 32, 32), dtype=np.int16)

    monkeypatch.setattr(dvs, "_bin_events", fail_midway)
    with pytest.raises(KeyboardInterrupt):
        _load(data_dir, download=False)
    cache_dirs = list((data_dir / "DVSGesture" / "frames_cache").iterdir())
    assert [list(path.iterdir()) for path in cache_dirs] == [[]]
    monkeypatch.undo()
    train, _ = _load(data_dir, download=False)
    assert _frames_of(train, HAND)[0, 1, 2, 1] == 3


def test_dataset_pickles_without_its_frames(loaded):
    train = loaded[1]
    copy = pickle.loads(pickle.dumps(train))
    assert len(pickle.dumps(train)) < 100_000
    assert torch.equal(copy[5][0], train[5][0])


def _assert_missing_data_message(error: UserError, data_dir: Path) -> None:
    message = str(error)
    assert "\n" not in message
    assert "ibmGestureTrain.tar.gz" in message and "ibmGestureTest.tar.gz" in message
    assert str(data_dir.resolve() / "DVSGesture") in message


def test_missing_data_without_download_names_archives_and_path(tmp_path):
    with pytest.raises(UserError) as error:
        _load(tmp_path, download=False)
    _assert_missing_data_message(error.value, tmp_path)


def test_failed_download_fails_fast_with_the_same_message(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("network unreachable (test)")

    # keeps the test offline even on machines that could reach figshare
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    started = time.monotonic()
    with pytest.raises(UserError) as error:
        _load(tmp_path, download=True)
    assert time.monotonic() - started < 5
    _assert_missing_data_message(error.value, tmp_path)
    assert "download failed" in str(error.value)
    assert not (tmp_path / "DVSGesture" / "ibmGestureTrain.tar.gz").exists()
