"""Memory: keep freed CPU memory inside the process (Linux/glibc), and refuse runs that cannot fit.

glibc hands every allocation above 32 MB straight to mmap and gives it back on free, so each
training iteration page-faults its large activation buffers anew. In the VMs this was measured
on, that cost more than the arithmetic: the fast LIF loop over 100 steps took 1.7 s instead of
27 ms. Serving large blocks from the heap and never trimming it lets freed blocks be reused.
"""
import ctypes
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # from glibc's malloc.h


def keep_freed_memory():
    """Tell glibc's malloc not to mmap large blocks nor trim the heap; True if it took effect."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))  # -1: never trim (man mallopt)
    except (OSError, AttributeError):  # not glibc (e.g. musl): leave the allocator alone
        return False


# Float32 copies of every neuron's value per step and sample that one iteration keeps alive, measured
# on the paper's MNIST network (fast: current, BatchNorm output, membrane, spikes, gradient buffer).
COPIES = {"train": {"fast": 5, "reference": 10}, "eval": 3}


def neurons_per_step(cfg):
    """Neurons of all layers for one sample and time step, and the input values per step.

    The conv maps come from the config's own layers (conv_channels, kernel_size, padding, pool), with the
    geometry functions that build the network and that validation checks.
    """
    from qsnn.core.geometry import architecture, config_layers, map_sizes
    from qsnn.data import registry

    dataset = registry.get(cfg["dataset"])
    arch = architecture(dataset)
    input_size, layers = config_layers(dataset, cfg)
    total = sum(channels * side * side for (channels, *_), (_, side) in zip(layers, map_sizes(input_size, layers)))
    return total + arch["num_classes"], arch["in_channels"] * arch["input_size"] ** 2


def activation_bytes(cfg):
    """Estimated bytes of activations for one training iteration and for one evaluation batch."""
    neurons, inputs = neurons_per_step(cfg)
    train_steps = cfg.get("num_steps_train", cfg.get("num_steps"))
    test_steps = cfg.get("num_steps_test", cfg.get("num_steps"))
    from qsnn.data import registry

    events = not registry.get(cfg["dataset"]).is_static  # event frames are held as input twice (batch + float copy)
    per_value = 4 * (neurons + (2 * inputs if events else 0))
    train = per_value * train_steps * cfg["batch_size"] * COPIES["train"][cfg["execution"]]
    evaluation = per_value * test_steps * cfg["test_batch_size"] * COPIES["eval"]
    return train, evaluation


def available_bytes(device):
    """Free memory of a CUDA device, or the system's MemAvailable on the CPU (None if unknown)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def check_memory(cfg, device):
    """Refuse, in one line and before any data is read, a run whose activations cannot fit in memory."""
    from qsnn.errors import UserError

    train, evaluation = activation_bytes(cfg)
    available = available_bytes(device)
    if available is not None and max(train, evaluation) > available:
        gib = 2**30
        raise UserError(f"this run needs about {train / gib:.1f} GiB of activations per training iteration "
                        f"and {evaluation / gib:.1f} GiB per evaluation batch, but {device} has "
                        f"{available / gib:.1f} GiB available; lower num_steps, batch_size or test_batch_size")
