"""The dataset registry: every fact about a dataset is declared here, once.

Training (the loaders and the model's input and output layers), the config schema (which keys apply),
evaluate.py, export.py (how integer deployment encodes an input), the memory estimate and tune.py all
ask it. Adding a dataset is one `register(Dataset(...))` call (below, or in your own code before the
run starts) plus a run.py whose config names it; docs/extending.md walks through it.
"""
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

from qsnn.errors import UserError, shorten

INPUT_KINDS = ("image", "events")  # a static image shown at every step, or a sequence of event frames
DEPLOY_INPUTS = ("pixel_codes", "event_counts")  # how the integer runtime receives an input


@dataclass(frozen=True)
class Dataset:
    """One dataset: how to load it and what the network and its deployment need to know about it."""

    name: str
    input_kind: str  # "image": [C, H, W] in [0, 1], the input current at each of num_steps; "events": [T, C, H, W]
    shape: tuple  # (channels, height, width) of one image or one event frame
    num_classes: int
    load: Callable  # load(cfg) -> (train, test) torch Datasets; imports its libraries when called
    channels: tuple  # the paper's conv channels for it: the default of the conv_channels key
    run_py: str  # the folder (from the repository root) whose run.py holds its experiment's config
    deploy_input: str  # "pixel_codes": 8-bit codes, pixel = code / 255; "event_counts": integer counts as they are
    about: str = ""  # one line for --help and errors

    def __post_init__(self):
        """Catch a malformed entry where it is declared, not deep inside a run."""
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"dataset {self.name}: input_kind must be one of {INPUT_KINDS}")
        if self.deploy_input not in DEPLOY_INPUTS:
            raise ValueError(f"dataset {self.name}: deploy_input must be one of {DEPLOY_INPUTS}")
        if len(self.shape) != 3 or not all(isinstance(n, int) and n > 0 for n in self.shape):
            raise ValueError(f"dataset {self.name}: shape must be (channels, height, width) of positive ints")
        if not (isinstance(self.num_classes, int) and self.num_classes >= 2):
            raise ValueError(f"dataset {self.name}: num_classes must be an int >= 2")

    @property
    def is_static(self):
        """True for images repeated at every time step (the num_steps key), False for event frames."""
        return self.input_kind == "image"


_REGISTRY = {}


def register(dataset, replace=False):
    """Add a dataset (a Dataset entry); a name already taken is an error unless replace=True."""
    if dataset.name in _REGISTRY and not replace:
        raise ValueError(f"dataset {dataset.name} is already registered")
    _REGISTRY[dataset.name] = dataset
    return dataset


def unregister(name):
    """Remove a dataset (tests that register their own clean up with this)."""
    _REGISTRY.pop(name, None)


def own_run_py():
    """Names of the datasets whose run.py is their own folder (what tune.py can tune), in registry order."""
    return tuple(name for name, dataset in _REGISTRY.items() if dataset.run_py == name)


def get(name):
    """The entry of a dataset name; an unknown name is one UserError listing the known ones."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UserError(f"unknown dataset {shorten(str(name))}; choose one of {', '.join(_REGISTRY)} "
                        "(or register yours in qsnn/data/registry.py)") from None


class _Names(Sequence):
    """The registered names, read live: a dataset registered after import is a valid choice at once."""

    def __init__(self, keep=lambda dataset: True):
        self._keep = keep

    def _names(self):
        return tuple(name for name, dataset in _REGISTRY.items() if self._keep(dataset))

    def __getitem__(self, i):
        return self._names()[i]

    def __len__(self):
        return len(self._names())

    def __contains__(self, name):
        return name in self._names()

    def __repr__(self):
        return repr(self._names())


NAMES = _Names()
STATIC_NAMES = _Names(lambda dataset: dataset.is_static)
EVENT_NAMES = _Names(lambda dataset: not dataset.is_static)


# ---------------------------------------------------------------- the datasets of the paper, and the demo

def _load_idx(name):
    def load(cfg):
        from qsnn.data.images import load_image_dataset

        return load_image_dataset(name, cfg["data_dir"])
    return load


def _load_digits(cfg):
    from qsnn.data.images import load_digits_demo

    return load_digits_demo()


def _load_dvs_gesture(cfg):
    from qsnn.data.dvs import load_dvs_gesture
    from qsnn.paths import resolve_path

    return load_dvs_gesture(resolve_path(cfg["data_dir"]), cfg["num_steps_train"], cfg["num_steps_test"])


register(Dataset("mnist", "image", (1, 28, 28), 10, _load_idx("mnist"), (16, 64), "mnist", "pixel_codes",
                 "MNIST handwritten digits (IDX files)"))
register(Dataset("fashion_mnist", "image", (1, 28, 28), 10, _load_idx("fashion_mnist"), (16, 64), "fashion_mnist",
                 "pixel_codes", "Fashion-MNIST (IDX files, or Debian's dataset-fashion-mnist)"))
register(Dataset("digits", "image", (1, 28, 28), 10, _load_digits, (16, 64), "mnist", "pixel_codes",
                 "scikit-learn's 8x8 digits resized to 28x28 (offline; the --demo preset)"))
register(Dataset("dvs128_gesture", "events", (2, 32, 32), 11, _load_dvs_gesture, (16, 32), "dvs128_gesture",
                 "event_counts", "DVS128 Gesture event frames (tonic), 128x128 pooled to 32x32"))
