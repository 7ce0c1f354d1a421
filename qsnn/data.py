"""Datasets and mini-batches: torchvision MNIST/FashionMNIST, scikit-learn digits, DVS128 Gesture."""
import socket

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from .config import resolve_path
from .distributed import shard
from .errors import UserError

RAW_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
SOURCES = {"mnist": ("MNIST", "https://ossci-datasets.s3.amazonaws.com/mnist/"),
           "fashion_mnist": ("FashionMNIST", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")}


def load_image_dataset(name, data_dir, download=True):
    """torchvision's MNIST or FashionMNIST (train, test), images scaled to [0, 1]."""
    from torchvision import datasets, transforms

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST}[name]
    root = resolve_path(data_dir)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(30)  # an unreachable mirror should fail in seconds, not hang
    try:
        return tuple(cls(str(root), train=train, download=download, transform=transforms.ToTensor())
                     for train in (True, False))
    except Exception as e:  # torchvision raises RuntimeError, URLError, OSError... for the same cause
        folder, url = SOURCES[name]
        raise UserError(
            f"{folder} is not in {root / folder / 'raw'} and could not be downloaded ({type(e).__name__}); "
            f"put {', '.join(RAW_FILES)} from {url} in that folder and run again") from None
    finally:
        socket.setdefaulttimeout(previous)


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


def load_datasets(cfg):
    """(train, test) datasets of the configured dataset."""
    name = cfg["dataset"]
    if name == "digits":
        return load_digits_demo()
    if name == "dvs128_gesture":
        from .dvs import load_dvs_gesture

        return load_dvs_gesture(resolve_path(cfg["data_dir"]), cfg["num_steps_train"], cfg["num_steps_test"])
    return load_image_dataset(name, cfg["data_dir"])


def as_tensors(dataset):
    """All samples of a dataset as (inputs, labels) tensors, inputs in their stored dtype."""
    if isinstance(dataset, Subset):
        x, y = as_tensors(dataset.dataset)
        index = torch.as_tensor(dataset.indices)
        return x[index], y[index]
    if isinstance(dataset, TensorDataset):
        return dataset.tensors
    if hasattr(dataset, "data") and hasattr(dataset, "targets"):  # torchvision MNIST-style
        return dataset.data.unsqueeze(1), torch.as_tensor(dataset.targets)
    from .dvs import frames_as_tensors

    return frames_as_tensors(dataset)


def to_float(x):
    """Batch inputs as float32: uint8 pixels scaled to [0, 1] exactly as ToTensor does; others cast."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


class TensorBatches:
    """Mini-batches by indexing tensors that already live on the device.

    With shuffle, each epoch draws from `generator` exactly what `DataLoader(..., shuffle=True,
    generator=generator)` draws (a worker base seed, a randperm, and at the end RandomSampler's
    second, empty-sliced randperm), so the order is the same in every epoch.
    """

    def __init__(self, inputs, labels, batch_size, shuffle=False, generator=None):
        self.inputs, self.labels = inputs, labels
        self.batch_size, self.shuffle, self.generator = batch_size, shuffle, generator

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # DataLoader's base seed
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        order = order.to(self.labels.device)
        for start in range(0, n, self.batch_size):
            index = shard(order[start:start + self.batch_size])  # this rank's part under torchrun
            yield to_float(self.inputs[index]), self.labels[index]
        if self.shuffle:
            torch.randperm(n, generator=self.generator)


def fits_on(device, *tensors):
    """True if the tensors take under a quarter of the device's free memory (always on CPU)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) < free / 4


def split_validation(dataset, fraction, seed):
    """(train, val) subsets: a fixed random `fraction` of the training set held out for validation."""
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = int(round(fraction * len(dataset)))
    return Subset(dataset, sorted(order[n_val:])), Subset(dataset, sorted(order[:n_val]))


def make_loaders(cfg, device, generator):
    """{"train", "test"[, "val"]} batch iterables; the train one shuffles with `generator`."""
    train, test = load_datasets(cfg)
    splits = {"train": train, "test": test}
    if cfg["val_split"] > 0:
        splits["train"], splits["val"] = split_validation(train, cfg["val_split"], cfg["seed"])
    loaders = {}
    for name, dataset in splits.items():
        batch = cfg["batch_size"] if name == "train" else cfg["test_batch_size"]
        shuffle = name == "train"
        if cfg["tensor_data"]:
            x, y = as_tensors(dataset)
            target = device if fits_on(device, x, y) else torch.device("cpu")
            loaders[name] = TensorBatches(x.to(target), y.to(target), batch, shuffle, generator)
        else:
            loaders[name] = DataLoader(dataset, batch_size=batch, shuffle=shuffle,
                                       generator=generator if shuffle else None,
                                       num_workers=cfg["num_workers"], pin_memory=device.type == "cuda")
    return loaders
