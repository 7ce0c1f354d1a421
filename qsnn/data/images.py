"""Image datasets: MNIST/FashionMNIST IDX files (torchvision downloads, Debian's package) and scikit-learn digits."""
import gzip
import math
import os
import socket
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from qsnn.paths import resolve_path
from qsnn.errors import UserError, shorten

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
RAW_FILES = tuple(f"{name}.gz" for pair in IDX_NAMES.values() for name in pair)
SOURCES = {"mnist": ("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
           "fashion_mnist": ("FashionMNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")}
# Debian/Ubuntu's `dataset-fashion-mnist` package: the four .gz files, recompressed.
# QSNN_NO_SYSTEM_DATA=1 ignores it (the tests set it, so that the machine's packages don't matter).
SYSTEM_FOLDERS = {"fashion_mnist": Path("/usr/share/datasets/fashion-mnist")}
READ_CHUNK = 1 << 24  # bytes per read of an IDX file's data (16 MiB)


class IdxImages(Dataset):
    """28x28 uint8 images and their labels, read from IDX files; items are ToTensor-scaled floats."""

    def __init__(self, images, labels):
        self.data, self.targets = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.data[i].unsqueeze(0).float().div(255), int(self.targets[i])


def read_idx(path, ndim, item_shape=None):
    """An IDX file (gzip-compressed or not) as a uint8 array with `ndim` dimensions, checked by content.

    The header is checked before any data is read: the data are then read in chunks up to the size it
    announces, so a damaged header that announces terabytes allocates nothing. `item_shape`, if given,
    is the shape every item must have (the dimensions after the first).
    """
    opener = gzip.open if Path(path).suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            shape = read_idx_header(path, f, ndim, item_shape)
            size = math.prod(shape)
            raw = read_at_most(f, size + 1)  # one byte more tells a file longer than its header says
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise UserError(f"cannot read {path} ({type(e).__name__}: {e}); replace it with a good copy") from None
    if len(raw) != size:
        held = f"{len(raw)}" if len(raw) < size else "more"
        raise UserError(f"{path} should hold {size} bytes of data for shape {shape} but holds {held} "
                        "(truncated or damaged?); replace it with a good copy")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)  # a bytearray: the array is writable


def read_idx_header(path, f, ndim, item_shape):
    """The shape in an IDX header: magic (0, 0, 0x08 = uint8, ndim), then ndim big-endian int32 sizes."""
    header = f.read(4 + 4 * ndim)
    if len(header) < 4 or header[:3] != bytes((0, 0, 0x08)):
        raise UserError(f"{path} is not an IDX file of uint8 (bad magic number); replace it with a good copy")
    if header[3] != ndim:
        raise UserError(f"{path} is an IDX file with {header[3]} dimension(s), not {ndim} (bad magic number); "
                        "replace it with a good copy")
    if len(header) < 4 + 4 * ndim:
        raise UserError(f"{path} ends inside its IDX header (truncated?); replace it with a good copy")
    shape = struct.unpack(f">{ndim}i", header[4:])
    if min(shape) < 0:
        raise UserError(f"{path} has a negative size in its IDX header {shape} (damaged); replace it with a good copy")
    if item_shape is not None and shape[1:] != tuple(item_shape):
        wanted = "x".join(map(str, item_shape))
        raise UserError(f"{path} holds items of {'x'.join(map(str, shape[1:]))} values, not {wanted}; "
                        "replace it with a good copy")
    return shape


def read_at_most(f, limit):
    """Up to `limit` bytes of f, read in chunks (memory grows with what is there, not with `limit`)."""
    data = bytearray()
    while len(data) < limit:
        chunk = f.read(min(READ_CHUNK, limit - len(data)))
        if not chunk:
            break
        data += chunk
    return data


def find_idx_files(folder):
    """{split: (images path, labels path)} if folder holds all four files (each plain or .gz), else None."""
    found = {}
    for split, names in IDX_NAMES.items():
        paths = []
        for name in names:
            candidates = [folder / name, folder / f"{name}.gz"]
            present = [p for p in candidates if p.is_file()]
            if not present:
                return None
            paths.append(present[0])
        found[split] = tuple(paths)
    return found


def read_split(images_path, labels_path, url=""):
    """An IdxImages from one images file and its labels file, with their counts and sizes checked.

    `url` is where good copies come from, for the message about an empty file.
    """
    images, labels = read_idx(images_path, 3, item_shape=(28, 28)), read_idx(labels_path, 1)
    for path, array, what in ((images_path, images, "images"), (labels_path, labels, "labels")):
        if len(array) == 0:
            source = f" (from {url})" if url else ""
            raise UserError(f"{path} holds 0 {what} (its header says so): an empty {split_name(path)} set; "
                            f"put the complete {path.name}{source} there and run again")
    if len(images) != len(labels):
        raise UserError(f"{images_path} holds {len(images)} images but {labels_path} {len(labels)} labels; "
                        "replace them with a matching pair")
    if labels.max() > 9:
        raise UserError(f"{labels_path} holds label {labels.max()}; MNIST-style labels are 0..9")
    return IdxImages(images, labels)


def split_name(path):
    """'training' or 'test': which set an IDX file holds, from its name."""
    return "test" if Path(path).name.startswith("t10k") else "training"


def download_with_torchvision(name, root):
    """Let torchvision fetch the raw files into root/<Folder>/raw; False if that fails."""
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an unreachable mirror should fail in seconds, not hang
    try:
        cls(str(root), train=True, download=True)
        return True
    except Exception:  # torchvision raises RuntimeError, URLError, OSError... for the same cause
        return False
    finally:
        socket.setdefaulttimeout(previous)


def load_image_dataset(name, data_dir, download=True):
    """MNIST or FashionMNIST (train, test) from IDX files: data_dir, then a system copy, then a download.

    The files are accepted by content (any gzip settings, or uncompressed), never by archive checksum.
    """
    root = resolve_path(data_dir)
    folder, url = SOURCES[name]
    raw = root / folder / "raw"
    use_system = name in SYSTEM_FOLDERS and not os.environ.get("QSNN_NO_SYSTEM_DATA")
    places = [raw] + ([SYSTEM_FOLDERS[name]] if use_system else [])
    try:
        files = next(((p, f) for p in places if (f := find_idx_files(p))), None)
    except OSError as e:  # a data_dir the file system cannot take (a name too long, say)
        raise UserError(f"cannot look for {folder} in {shorten(str(raw))}: {e.strerror}; give another --data_dir") \
            from None
    if files is None and download and download_with_torchvision(name, root):
        files = (raw, find_idx_files(raw))
    if files is None or files[1] is None:
        system = (", or install Debian's dataset-fashion-mnist package (/usr/share/datasets/fashion-mnist)"
                  if name in SYSTEM_FOLDERS else "")
        raise UserError(f"{folder} is not in {raw} and could not be downloaded; put {', '.join(RAW_FILES)} "
                        f"(.gz or uncompressed) from {url} in that folder{system} and run again")
    place, paths = files
    print(f"reading {folder} from {place}")
    return read_split(*paths["train"], url), read_split(*paths["test"], url)


def load_digits_demo(test_fraction=0.2, seed=0):
    """scikit-learn's 1,797 real 8x8 handwritten digits, resized to 28x28 in [0, 1]; fixed 80/20 split."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # pixel values 0..16
    images = F.interpolate(images, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    labels = torch.tensor(digits.target, dtype=torch.long)
    train_idx, test_idx = train_test_split(torch.arange(len(labels)).numpy(), test_size=test_fraction,
                                           random_state=seed, stratify=labels.numpy())
    return (TensorDataset(images[train_idx], labels[train_idx]),
            TensorDataset(images[test_idx], labels[test_idx]))
