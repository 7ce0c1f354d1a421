"""Mini-batches of any registered dataset: tensors on the device or a DataLoader, and a validation split."""
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from qsnn.data import registry
from qsnn.distributed import shard, world_size
from qsnn.errors import UserError


def load_datasets(cfg):
    """(train, test) datasets of the configured dataset, loaded as its registry entry says."""
    return registry.get(cfg["dataset"]).load(cfg)


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
    from qsnn.data.dvs import frames_as_tensors

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
        full, rest = divmod(len(self.labels), self.batch_size)
        # Under torchrun a training batch with fewer samples than ranks is skipped (see shard).
        return full + (rest >= (world_size() if self.shuffle else 1))

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            torch.empty((), dtype=torch.int64).random_(generator=self.generator)  # DataLoader's base seed
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        order = order.to(self.labels.device)
        for start in range(0, n, self.batch_size):
            batch = order[start:start + self.batch_size]
            if self.shuffle and len(batch) < world_size():
                continue
            index = shard(batch, equal=self.shuffle)  # this rank's part under torchrun
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
    if not 0 < n_val < len(dataset):
        raise UserError(f"--val_split {fraction!r} leaves an empty {'validation' if n_val == 0 else 'training'} "
                        f"set of the {len(dataset)} training samples; choose a fraction between "
                        f"{1 / len(dataset):.2g} and {1 - 1 / len(dataset):.4g}")
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
