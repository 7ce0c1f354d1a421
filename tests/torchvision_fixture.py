"""Write small MNIST-style datasets in the IDX format torchvision's MNIST/FashionMNIST read from raw/."""
import struct
from pathlib import Path

import numpy as np

IDX_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def learnable_images(labels, rng):
    """28x28 uint8 images with a bright 6x6 block whose position encodes the label, plus noise."""
    images = rng.integers(0, 60, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = 2 + 9 * (label // 4), 1 + 7 * (label % 4)  # a 3x4 grid of positions for 10 classes
        images[i, row:row + 6, col:col + 6] = rng.integers(180, 256, size=(6, 6))
    return images


def write_idx(path, array):
    """IDX: magic (0, 0, dtype 0x08 = uint8, ndim), big-endian int32 dims, then the raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    Path(path).write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_fixture(root, folder="MNIST", n_train=200, n_test=100, seed=0):
    """Create <root>/<folder>/raw/ with the four uncompressed IDX files; returns root."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for train, n in ((True, n_train), (False, n_test)):
        labels = np.arange(n) % 10
        rng.shuffle(labels)
        images_file, labels_file = IDX_FILES[train]
        write_idx(raw / images_file, learnable_images(labels, rng))
        write_idx(raw / labels_file, labels)
    return Path(root)
