"""The conv layers a config describes and the map sizes they give: plain Python, no torch.

qsnn.core.models builds the network from these; config validation (qsnn.runs.config) checks a config's
geometry with the same functions before any run folder exists, and the memory estimate
(qsnn.runs.memory) counts neurons with them, so none of them needs torch to refuse a network.

A conv layer is (out_channels, kernel, padding, pool): conv k x k with zero padding p, then an
s x s average pool (s = 1: none). A square map of side n becomes (n + 2p - k + 1) // s, the floor
that AvgPool2d takes.
"""
from qsnn.errors import UserError


def per_layer(value, count, name):
    """A per-layer setting as a list of `count` values: one value means every layer."""
    if isinstance(value, (list, tuple)):
        if len(value) != count:
            raise UserError(f"{name} has {len(value)} values but the network has {count} layers for it")
        return list(value)
    return [value] * count


def conv_layers(channels, kernel_size=5, padding=0, pool=2):
    """[(out_channels, kernel, padding, pool)] of each conv layer; a single kernel/padding/pool means all."""
    count = len(channels)
    return list(zip(channels, per_layer(kernel_size, count, "kernel_size"), per_layer(padding, count, "padding"),
                    per_layer(pool, count, "pool")))


def map_sizes(input_size, layers):
    """[(conv output side, pooled side)] of each conv layer on a square input: the pool floors, as AvgPool2d."""
    sizes, side = [], input_size
    for _, kernel, padding, pool in layers:
        conv = side + 2 * padding - kernel + 1
        side = conv // pool if conv >= 1 else conv
        sizes.append((conv, side))
        if side < 1:
            break
    return sizes


def geometry_problem(input_size, layers):
    """One line naming the first conv layer whose map shrinks to nothing (None if every map is >= 1x1)."""
    side = input_size
    for i, ((_, kernel, padding, pool), (conv, out)) in enumerate(zip(layers, map_sizes(input_size, layers))):
        if out < 1:
            what = (f"which its {kernel}x{kernel} kernel with padding {padding} shrinks to nothing" if conv < 1
                    else f"its {conv}x{conv} conv output is smaller than its {pool}x{pool} pool")
            return (f"conv{i + 1} gets a {side}x{side} map, {what} ({len(layers)} conv layers on a "
                    f"{input_size}x{input_size} input); use fewer conv layers, a smaller kernel_size or pool, "
                    "or more padding")
        side = out
    return None


def layer_bits(num_bits, conv_count):
    """Weight bits of each conv layer, then of the head: one value (or None, float) means all layers."""
    return per_layer(num_bits, conv_count + 1, "num_bits")


# The architecture keys of a config and the value a config without them (written before they existed) means.
ARCHITECTURE_DEFAULTS = {"conv_channels": None, "kernel_size": 5, "padding": 0, "pool": 2}


def architecture(dataset, cfg=None):
    """QSNN's size arguments for a registry entry: input channels and side, conv channels, classes.

    With a config, also its conv layers: conv_channels (None: the registry's), kernel_size, padding, pool.
    """
    channels, height, width = dataset.shape
    if height != width:
        raise UserError(f"dataset {dataset.name}: the network takes square inputs, not {height}x{width}")
    sizes = dict(in_channels=channels, channels=tuple(dataset.channels), input_size=height,
                 num_classes=dataset.num_classes)
    if cfg is not None:
        keys = {key: cfg.get(key, default) for key, default in ARCHITECTURE_DEFAULTS.items()}
        channels = keys.pop("conv_channels")
        if channels is not None:
            sizes["channels"] = tuple(channels) if isinstance(channels, (list, tuple)) else (channels,)
        sizes.update(keys)
    return sizes


def config_layers(dataset, cfg):
    """(input side, [(out_channels, kernel, padding, pool)] per conv layer) of the network a config describes."""
    sizes = architecture(dataset, cfg)
    return sizes["input_size"], conv_layers(sizes["channels"], sizes["kernel_size"], sizes["padding"], sizes["pool"])
