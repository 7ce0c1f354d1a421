"""Data: torchvision's loaders on fixture files, the tensor batcher, the digits demo, missing data."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision_fixture import write_idx, write_mnist_fixture

from qsnn.data import images as data
from qsnn.data.images import RAW_FILES, load_digits_demo, load_image_dataset
from qsnn.data.loaders import TensorBatches, as_tensors, make_loaders, to_float
from qsnn.errors import UserError


@pytest.mark.parametrize("name, fixture", [("mnist", "mnist_dir"), ("fashion_mnist", "fashion_dir")])
def test_idx_loader_reads_the_fixture(name, fixture, request):
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
    assert len(batches[True]) == len(batches[False]) == 4
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


def gzip_fixture(root, folder="MNIST"):
    """The fixture's four files gzip-compressed with other settings than the originals (level 1)."""
    import gzip

    raw = write_mnist_fixture(root, folder, n_train=60, n_test=20) / folder / "raw"
    for path in list(raw.iterdir()):
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(path.read_bytes(), compresslevel=1))
        path.unlink()
    return raw


def test_gzip_files_with_any_checksum_are_read_by_content(tmp_path):
    raw = gzip_fixture(tmp_path / "gz")
    plain_root = write_mnist_fixture(tmp_path / "plain", "MNIST", n_train=60, n_test=20)
    (gz_train, gz_test), (train, test) = (load_image_dataset("mnist", tmp_path / "gz", download=False),
                                          load_image_dataset("mnist", plain_root, download=False))
    assert sorted(p.name for p in raw.iterdir()) == sorted(RAW_FILES)
    assert torch.equal(gz_train.data, train.data) and torch.equal(gz_test.targets, test.targets)
    assert gz_train.data.shape == (60, 28, 28) and len(gz_test) == 20


def test_debian_fashion_mnist_is_found_when_data_dir_is_empty(tmp_path, monkeypatch, capsys):
    system = gzip_fixture(tmp_path / "usr", "FashionMNIST")
    monkeypatch.delenv("QSNN_NO_SYSTEM_DATA")
    monkeypatch.setitem(data.SYSTEM_FOLDERS, "fashion_mnist", system)
    train, test = load_image_dataset("fashion_mnist", tmp_path / "empty", download=False)
    assert (len(train), len(test)) == (60, 20)
    assert f"reading FashionMNIST from {system}" in capsys.readouterr().out


@pytest.mark.parametrize("damage, words", [
    (lambda b: b"\x00\x00\x08\x07" + b[4:], "bad magic number"),
    (lambda b: b[:len(b) // 2], "truncated"),
    (lambda b: b[:4] + (7).to_bytes(4, "big") + b[8:], "truncated"),  # header's count disagrees
])
def test_damaged_idx_file_is_one_clear_error(tmp_path, damage, words):
    raw = write_mnist_fixture(tmp_path / "d", "MNIST", n_train=30, n_test=10) / "MNIST" / "raw"
    target = raw / "train-images-idx3-ubyte"
    target.write_bytes(damage(target.read_bytes()))
    with pytest.raises(UserError, match=words) as err:
        load_image_dataset("mnist", tmp_path / "d", download=False)
    assert str(target) in str(err.value) and "\n" not in str(err.value)


def test_truncated_gzip_and_mismatched_counts_are_one_clear_error(tmp_path):
    raw = gzip_fixture(tmp_path / "g")
    target = raw / "t10k-labels-idx1-ubyte.gz"
    target.write_bytes(target.read_bytes()[:30])
    with pytest.raises(UserError, match="cannot read .*t10k-labels"):
        load_image_dataset("mnist", tmp_path / "g", download=False)
    raw = write_mnist_fixture(tmp_path / "m", "MNIST", n_train=30, n_test=10) / "MNIST" / "raw"
    write_idx(raw / "train-labels-idx1-ubyte", np.zeros(29, dtype=np.uint8))
    with pytest.raises(UserError, match="30 images but .* 29 labels"):
        load_image_dataset("mnist", tmp_path / "m", download=False)
