"""Shared test setup: the repository root and tests/ on sys.path, fixture data builders."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "tests"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from torchvision_fixture import write_mnist_fixture  # noqa: E402


@pytest.fixture
def mnist_dir(tmp_path):
    """A data_dir holding a small, learnable MNIST in torchvision's raw on-disk format."""
    return write_mnist_fixture(tmp_path / "data", "MNIST", n_train=240, n_test=120)


@pytest.fixture
def fashion_dir(tmp_path):
    """A data_dir holding a small, learnable FashionMNIST in torchvision's raw on-disk format."""
    return write_mnist_fixture(tmp_path / "data", "FashionMNIST", n_train=240, n_test=120)
