"""DVS128 Gesture as fixed-length event-count frames, binned once and cached on disk.

Data: tonic's preprocessed DVS128 Gesture (`tonic.datasets.DVSGesture`): 11 classes, 29 subjects,
1077 train + 264 test samples, events (x, y, p, t) on a 128x128 sensor with 2 polarities, timestamps
stored in ms (tonic multiplies by 1000 to give us). Archives ibmGestureTrain.tar.gz and
ibmGestureTest.tar.gz from figshare (URLs in `tonic.datasets.DVSGesture.train_url/test_url`); their
sizes are not documented in tonic. The original IBM release (aedat format, not what tonic reads) is
documented as 3 GB tar, 5 GB extracted.

Binning: coordinates scaled by `spatial_factor` (0.25: 128x128 -> 32x32, floor, tonic's Downsample),
then frame k of a sample counts the events with t0 + k*tw <= t < t0 + (k+1)*tw per (polarity, y, x),
where t0 is the sample's first event and tw = 3000 us. The first `num_steps` frames are kept (100
train, 600 test = 0.3 s / 1.8 s); samples shorter than that end in all-zero frames.

Cache: <data_dir>/DVSGesture/frames_cache/<key>/{train,test}_frames.npy ([N, T, 2, H, W] int16),
{train,test}_labels.npy ([N] int64) and {train,test}_files.txt (source .npy per row). The key names
every setting that changes the frames. int16 is tonic's own frame dtype and cannot overflow: the
DVS128 peaks near 1e6 events/s, i.e. at most ~3000 events per 3 ms bin, far below 32767 (but
above uint8's 255). Full-dataset cache at the defaults, int16:
  train 1077 * 100 * 2 * 32 * 32 * 2 B = 441,139,200 B (~441 MB)
  test   264 * 600 * 2 * 32 * 32 * 2 B = 648,806,400 B (~649 MB)
  total 1,089,945,600 B (~1.09 GB on disk; 2.18 GB if held as float32).
Datasets read frames through a read-only memmap (pages stay in the OS cache, not per process);
`frames_as_tensors` loads a whole split into RAM as int16.
"""

import socket
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tonic.datasets import DVSGesture
from tonic.functional import to_frame_numpy
from tonic.transforms import Downsample

from qsnn.errors import UserError
from qsnn.progress import progress
from qsnn.files import atomic_path

SENSOR_SIDE = DVSGesture.sensor_size[0]
CACHE_VERSION = "v1"  # bump when the binning code changes, so old caches are not reused
FRAME_DTYPE = np.int16
# tonic only treats a split as present with its archive file and at least this many .npy files
TONIC_MIN_FILES = 100
DOWNLOAD_SOCKET_TIMEOUT_S = 60
SPLITS = ("train", "test")


@dataclass(frozen=True)
class BinningSettings:
    """Every setting that changes the cached frames; `key` names the cache folder."""

    time_window_us: int
    spatial_factor: float
    num_steps_train: int
    num_steps_test: int

    @property
    def side(self) -> int:
        return int((SENSOR_SIDE - 1) * self.spatial_factor) + 1

    @property
    def key(self) -> str:
        return (
            # str(), not a rounded format, so that distinct settings never share a key
            f"{CACHE_VERSION}_tw{self.time_window_us}us_sf{self.spatial_factor}"
            f"_T{self.num_steps_train}-{self.num_steps_test}"
        )

    def num_steps(self, split: str) -> int:
        return self.num_steps_train if split == "train" else self.num_steps_test


class DVSFrames(torch.utils.data.Dataset):
    """One cached split; items are (float32 frames [T, 2, H, W], int label)."""

    def __init__(self, split_dir: Path, split: str):
        self.frames_path = split_dir / f"{split}_frames.npy"
        self.labels = np.load(split_dir / f"{split}_labels.npy")
        self.sources = (split_dir / f"{split}_files.txt").read_text().splitlines()
        self._frames = None

    @property
    def frames(self) -> np.ndarray:
        # opened lazily so DataLoader workers each map the file instead of receiving a pickled copy
        if self._frames is None:
            self._frames = np.load(self.frames_path, mmap_mode="r")
        return self._frames

    def __getstate__(self):
        return {**self.__dict__, "_frames": None}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        frames = torch.from_numpy(np.asarray(self.frames[index], dtype=np.float32))
        return frames, int(self.labels[index])


def load_dvs_gesture(data_dir, num_steps_train=100, num_steps_test=600, time_window_us=3000,
                     spatial_factor=0.25, download=True):
    """Return (train_set, test_set) of (float32 frames [T, 2, 32, 32], label 0..10).

    Frames are binned from events once and cached under <data_dir>/DVSGesture/frames_cache/.
    """
    settings = BinningSettings(time_window_us, spatial_factor, num_steps_train, num_steps_test)
    _validate(settings)
    data_dir = Path(data_dir).expanduser().resolve()
    cache_dir = data_dir / "DVSGesture" / "frames_cache" / settings.key
    if not _cache_complete(cache_dir):
        _build_cache(data_dir, settings, cache_dir, download)
    return DVSFrames(cache_dir, "train"), DVSFrames(cache_dir, "test")


def frames_as_tensors(dataset: DVSFrames) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames [N, T, 2, H, W] as int16 (cast with .float() per batch) and labels [N] int64."""
    frames = torch.from_numpy(np.load(dataset.frames_path))
    return frames, torch.from_numpy(dataset.labels.astype(np.int64))


def _validate(settings: BinningSettings) -> None:
    if settings.num_steps_train < 1 or settings.num_steps_test < 1:
        raise UserError("DVS Gesture num_steps_train and num_steps_test must be at least 1")
    if settings.time_window_us <= 0:
        raise UserError(
            f"DVS Gesture time window must be positive, got {settings.time_window_us} us")
    if not 0 < settings.spatial_factor <= 1:
        raise UserError(
            f"DVS Gesture spatial factor must be in (0, 1], got {settings.spatial_factor}")


def _cache_files(cache_dir: Path, split: str) -> list[Path]:
    return [cache_dir / f"{split}_{name}" for name in ("frames.npy", "labels.npy", "files.txt")]


def _cache_complete(cache_dir: Path) -> bool:
    # each file is written atomically, so presence of all of them means the build finished
    return all(path.is_file() for split in SPLITS for path in _cache_files(cache_dir, split))


def _build_cache(data_dir: Path, settings: BinningSettings, cache_dir: Path,
                 download: bool) -> None:
    # open both splits first so missing data is reported before any long binning
    event_sets = {split: _tonic_split(data_dir, split, settings, download) for split in SPLITS}
    print(f"binning DVS128 Gesture events into frames once; cached at {cache_dir}", flush=True)
    cache_dir.mkdir(parents=True, exist_ok=True)
    for split, events in event_sets.items():
        _bin_split(events, split, settings, cache_dir)


def _bin_split(events: DVSGesture, split: str, settings: BinningSettings, cache_dir: Path) -> None:
    """Bin every sample of one split straight into an on-disk array, then publish it atomically."""
    root = Path(events.location_on_system) / events.folder_name
    # tonic lists files in filesystem order; sorting makes sample indices the same on every machine
    order = sorted(range(len(events)), key=lambda i: events.data[i])
    shape = (len(order), settings.num_steps(split), 2, settings.side, settings.side)
    frames_path, labels_path, files_path = _cache_files(cache_dir, split)
    with atomic_path(frames_path) as tmp:
        frames = np.lib.format.open_memmap(tmp, mode="w+", dtype=FRAME_DTYPE, shape=shape)
        for row, index in enumerate(progress(order, desc=f"binning {split}", unit="sample")):
            frames[row] = _bin_events(events[index][0], shape[1], settings)
        frames.flush()
        del frames
    with atomic_path(labels_path) as tmp:
        np.save(tmp, np.array([events.targets[i] for i in order], dtype=np.int64))
    with atomic_path(files_path) as tmp:
        Path(tmp).write_text("".join(f"{Path(events.data[i]).relative_to(root)}\n" for i in order))


def _bin_events(events: np.ndarray, num_steps: int, settings: BinningSettings) -> np.ndarray:
    """Count downsampled events into `num_steps` windows from the first event.

    Returns [num_steps, 2, side, side] int16, axes (time, polarity, y, x) as tonic lays them out.
    """
    sensor_size = (settings.side, settings.side, 2)
    if len(events) == 0:
        return np.zeros((num_steps, 2, settings.side, settings.side), dtype=FRAME_DTYPE)
    # windows are found with searchsorted, which needs time-ordered events
    if np.any(np.diff(events["t"]) < 0):
        events = events[np.argsort(events["t"], kind="stable")]
    start = events["t"][0]
    # a fixed end makes tonic return exactly num_steps windows: zeros past the end, rest dropped
    frames = to_frame_numpy(events, sensor_size, time_window=settings.time_window_us,
                            start_time=start, end_time=start + num_steps * settings.time_window_us)
    return frames.astype(FRAME_DTYPE, copy=False)


def _split_names(split: str) -> tuple[str, str]:
    """(archive file name, extracted folder name) that tonic uses for a split."""
    if split == "train":
        return DVSGesture.train_filename, "ibmGestureTrain"
    return DVSGesture.test_filename, "ibmGestureTest"


def _raw_split_present(dvs_dir: Path, split: str) -> bool:
    # mirrors tonic's DVSGesture._check_exists: if False, constructing it starts a download
    archive, folder = _split_names(split)
    npy_files = sum(1 for _ in (dvs_dir / folder).glob("**/*.npy"))
    return (dvs_dir / archive).is_file() and npy_files >= TONIC_MIN_FILES


def _tonic_split(data_dir: Path, split: str, settings: BinningSettings,
                 download: bool) -> DVSGesture:
    """tonic's dataset for one split, spatially downsampled; UserError if absent and unfetchable."""
    dvs_dir = data_dir / DVSGesture.__name__
    transform = Downsample(spatial_factor=settings.spatial_factor)
    if _raw_split_present(dvs_dir, split):
        return DVSGesture(str(data_dir), train=split == "train", transform=transform)
    if not download:
        raise UserError(_missing_data_message(dvs_dir, "download=False"))
    return _download_split(data_dir, dvs_dir, split, transform)


def _download_split(data_dir: Path, dvs_dir: Path, split: str, transform) -> DVSGesture:
    archive = dvs_dir / _split_names(split)[0]
    existed = archive.exists()
    previous_timeout = socket.getdefaulttimeout()
    # tonic's urlopen has no timeout; a bounded socket timeout keeps a dead network from hanging us
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        dataset = DVSGesture(str(data_dir), train=split == "train", transform=transform)
    except Exception as error:
        # tonic accepts any file with the archive's name, so a half download must not stay behind
        if archive.exists() and not existed:
            archive.unlink()
        reason = f"automatic download failed: {type(error).__name__}"
        raise UserError(_missing_data_message(dvs_dir, reason)) from None
    finally:
        socket.setdefaulttimeout(previous_timeout)
    if not _raw_split_present(dvs_dir, split):
        raise UserError(_missing_data_message(dvs_dir, "download finished but files are missing"))
    return dataset


def _missing_data_message(dvs_dir: Path, reason: str) -> str:
    train_archive, train_folder = _split_names("train")
    test_archive, test_folder = _split_names("test")
    return (
        f"DVS128 Gesture data not found in {dvs_dir} ({reason}): download {train_archive} "
        f"({DVSGesture.train_url}) and {test_archive} ({DVSGesture.test_url}), put both in "
        f"{dvs_dir}/ and extract them there (tar -xzf {train_archive} -C {dvs_dir}, same for "
        f"{test_archive}) so that {dvs_dir}/{train_folder}/ and {dvs_dir}/{test_folder}/ hold the "
        f"user*/ folders of .npy files; keep the .tar.gz files there, tonic checks for them"
    )
