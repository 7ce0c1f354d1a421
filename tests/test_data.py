"""Data: torchvision's loaders on fixture files, the tensor batcher, the digits demo, missing data."""
import pytest
import torch
from torch.utils.data import DataLoader

from qsnn.data import TensorBatches, as_tensors, load_digits_demo, load_image_dataset, make_loaders, to_float
from qsnn.errors import UserError


@pytest.mark.parametrize("name, fixture", [("mnist", "mnist_dir"), ("fashion_mnist", "fashion_dir")])
def test_torchvision_reads_the_fixture(name, fixture, request):
    train, test = load_image_dataset(name, request.getfixturevalue(fixture), download=False)
    assert (len(train), len(test)) == (240, 120)
    image, label = train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32 and 0 <= label < 10
    assert 0.0 <= image.min() and image.max() <= 1.0


def test_tensor_path_gives_the_same_samples_as_totensor(mnist_dir):
    train, _ = load_image_dataset("mnist", mnist_dir, download=False)
    x, y = as_tensors(train)
    assert x.dtype == torch.uint8 and x.shape == (240, 1, 28, 28)
    for i in (0, 17, 239):
        image, label = train[i]
        assert torch.equal(to_float(x[i]), image) and y[i].item() == label


def test_tensor_batches_shuffle_like_a_dataloader(mnist_dir):
    train, _ = load_image_dataset("mnist", mnist_dir, download=False)
    x, y = as_tensors(train)
    fast = TensorBatches(x, y, 32, shuffle=True, generator=torch.Generator().manual_seed(3))
    plain = DataLoader(train, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(3))
    assert len(fast) == len(plain) == 8
    for _ in range(2):  # two epochs: the generator advances identically
        for (xb, yb), (xp, yp) in zip(fast, plain):
            assert torch.equal(xb, xp) and torch.equal(yb, yp)


def test_make_loaders_with_validation_split(mnist_dir):
    cfg = dict(dataset="mnist", data_dir=str(mnist_dir), val_split=0.25, seed=0, batch_size=50,
               test_batch_size=100, tensor_data=True, num_workers=0)
    loaders = make_loaders(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    sizes = {name: sum(len(y) for _, y in loader) for name, loader in loaders.items()}
    assert sizes == {"train": 180, "val": 60, "test": 120}
    train_x = torch.cat([x for x, _ in loaders["train"]]).flatten(1)
    val_x = torch.cat([x for x, _ in loaders["val"]]).flatten(1)
    assert not (train_x[:, None, :] == val_x[None, :, :]).all(-1).any()  # disjoint


def test_per_sample_dataloader_option_gives_the_same_batches(mnist_dir):
    cfg = dict(dataset="mnist", data_dir=str(mnist_dir), val_split=0.0, seed=0, batch_size=64,
               test_batch_size=100, num_workers=0)
    batches = {}
    for tensor_data in (True, False):
        loaders = make_loaders({**cfg, "tensor_data": tensor_data}, torch.device("cpu"),
                               torch.Generator().manual_seed(5))
        batches[tensor_data] = list(loaders["train"])
    for (xa, ya), (xb, yb) in zip(batches[True], batches[False]):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_digits_demo_is_a_fixed_stratified_split():
    train, test = load_digits_demo()
    assert (len(train), len(test)) == (1437, 360)
    x, y = train.tensors
    assert x.shape == (1437, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert torch.bincount(test.tensors[1]).min() >= 35  # every digit in the test set
    assert torch.equal(load_digits_demo()[1].tensors[0], test.tensors[0])


def test_missing_data_says_which_files_to_put_where(tmp_path):
    with pytest.raises(UserError) as err:
        load_image_dataset("fashion_mnist", tmp_path / "empty", download=False)
    message = str(err.value)
    assert str(tmp_path / "empty" / "FashionMNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "\n" not in message
