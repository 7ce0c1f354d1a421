"""Integer-only execution of a trained QSNN: the bundle format and its NumPy runtime (qsnn.deploy.convert makes
bundles from checkpoints and compares them with PyTorch).

A bundle is `NAME.npz` (integer arrays) plus `NAME.json` (layout and scalars); running it needs only NumPy.
Every layer l (conv 1 .. conv N, head) keeps, per output channel c, an integer membrane M in its own unit
u[c] (a real value per integer step). Its input x is integer: pixel codes (0..255), event counts, or the
previous layer's 0/1 spikes; a conv layer pads it with `padding` zeros. With W = membrane_bits,
b = beta_shift, B = beta_multiplier:

    A_t[c] = sum_k K[c, k] x_t[k]                            integer weights, s x s pool as an integer box sum
    C_t[c] = shift(A_t[c], F[c]) + H[c]                      F >= 0: A * 2^F;  F < 0: floor(A / 2^-F + 1/2)
    M_t[c] = sat(floor((B M_{t-1}[c] + 2^(b-1)) / 2^b) + C_t[c] - theta[c] S_{t-1}[c])
    S_t[c] = [M_t[c] > theta[c]]                             M and S are 0 before the first step

sat clips to [-2^(W-1), 2^(W-1) - 1]. This is snnTorch's Leaky (reset by subtraction with the previous
step's spike) on mem = u[c] M, with u[c] = |g[c]| a / 2^F[c]: a is the real value of one accumulator step
(weight scale x input scale, / s^2 with a folded s x s pool), g[c] the BatchNorm scale gamma / sqrt(var + eps).
Channels with g[c] < 0 have their weights negated (sign folded into K), which keeps "mem > thr" as
"M > theta" with theta = thr / u[c] > 0. Rounding (to nearest, NumPy rint): theta, H = h / u (the BatchNorm
shift h = beta_bn - g mean), B = beta 2^b; the decay and negative shifts round half up.

Version 2 gives each layer's `pool` as its size s (1: none; a conv's stride is s) and its `padding`;
a version-1 bundle (the paper's layers: `pool` true for a 2x2 pool, no padding) reads as version 2
(`upgrade_meta`).
"""
from dataclasses import dataclass

import numpy as np

from qsnn.errors import UserError, shorten

FORMAT = "qsnn-integer-bundle"
VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1: pool true/false (2x2 or none), no padding
MAX_POOL = MAX_PADDING = 1024  # far beyond any network's, a bound for values read back
SHIFT_LIMITS = (-40, 30)  # F beyond these only shifts every current to zero or to saturation
INT64_BUDGET = 2 ** 62  # every intermediate of the recurrence stays below this in magnitude
EVENT_COUNT_LIMIT = 2 ** 15 - 1  # the largest event count per pixel and step the int64 budget is sized for
WIDTH_OPTIONS = {"membrane_bits": "--membrane_bits", "headroom_bits": "--headroom_bits", "beta_shift": "--beta_bits"}
LAYER_KINDS = ("conv", "linear")
INPUT_KINDS = ("pixel_codes", "event_counts")
ARRAY_KEYS = ("weight", "shift", "threshold", "bias")


@dataclass
class Bundle:
    """A bundle in memory: the JSON metadata and the named integer arrays of the .npz."""
    meta: dict
    arrays: dict

    def layer_arrays(self, i):
        """(weight, shift, threshold, bias) of layer i."""
        names = self.meta["layers"][i]["arrays"]
        return tuple(self.arrays[names[key]] for key in ARRAY_KEYS)

    def max_input(self):
        """The largest input code the first layer's int64 budget allows (max_code, or EVENT_COUNT_LIMIT)."""
        max_code = self.meta["input"].get("max_code")
        return EVENT_COUNT_LIMIT if max_code is None else max_code


# ---------------------------------------------------------------- from real parameters to integers

def channel_units(gain, step_value, threshold, membrane_bits, headroom_bits):
    """Per-channel shift F and membrane unit u: theta = thr / u lands in (T/2, T], T = 2^(W-1-headroom)."""
    target = 2.0 ** (membrane_bits - 1 - headroom_bits)
    value = np.abs(gain) * step_value  # the membrane value of one accumulator step
    live = value > 0
    shift = np.zeros(gain.shape, np.int64)
    shift[live] = np.floor(np.log2(target * value[live] / threshold))
    shift = np.clip(shift, *SHIFT_LIMITS)
    # A channel with g = 0 gets a constant current only: its weights are zeroed and its unit is thr / T.
    unit = np.where(live, value * 2.0 ** -shift, threshold / target)
    return shift, unit


def integer_layer(spec, threshold, membrane_bits, headroom_bits):
    """The integer arrays of one layer from its real description (see `layer_specs`)."""
    step_value = spec["weight_scale"] * spec["input_scale"] / float(spec["pool"]) ** 2
    gain, offset = spec["gain"], spec["offset"]
    shift, unit = channel_units(gain, step_value, threshold, membrane_bits, headroom_bits)
    sign = np.where(gain < 0, -1, np.where(gain > 0, 1, 0))
    codes = spec["codes"].astype(np.int64)
    weight = codes * sign.reshape((-1,) + (1,) * (codes.ndim - 1))
    limit = 2 ** (membrane_bits - 1) - 1
    theta = np.minimum(np.rint(threshold / unit), limit).astype(np.int64)
    bias = np.rint(offset / unit).astype(np.int64)
    if overflows_int64(pool_folded_kernel(weight, spec["pool"]), spec["max_input"], shift, bias, membrane_bits):
        raise UserError("the integer currents of this network could overflow int64 (a BatchNorm scale or "
                        "bias far out of range); export with a smaller --membrane_bits")
    dtype = np.int8 if np.abs(weight).max(initial=0) <= 127 else np.int16
    return {"weight": weight.astype(dtype), "shift": shift.astype(np.int8),
            "threshold": theta.astype(np.int32), "bias": bias}, unit


def overflows_int64(kernel, max_input, shift, bias, membrane_bits):
    """True if a layer's currents could overflow int64 (parameters far outside any trained network)."""
    per_channel = np.abs(kernel.astype(np.float64)).reshape(len(kernel), -1).sum(1) * max_input
    worst = (per_channel * 2.0 ** np.maximum(shift, 0) + np.abs(bias.astype(np.float64))
             + 2.0 ** (membrane_bits + 1))
    return bool(worst.max(initial=0) >= INT64_BUDGET)


def pool_folded_kernel(codes, pool=2):
    """The integer kernel of conv followed by an s x s sum-pool as one stride-s conv: an s x s box sum, s - 1
    larger (pool 1: the codes themselves; linear layers' codes pass through)."""
    codes = codes.astype(np.int64)
    if pool == 1 or codes.ndim != 4:
        return codes
    last = pool - 1
    padded = np.pad(codes, ((0, 0), (0, 0), (last, last), (last, last)))
    height, width = codes.shape[2] + last, codes.shape[3] + last
    return sum(padded[..., top:top + height, left:left + width] for top in range(pool) for left in range(pool))


def beta_fixed_point(beta, beta_shift):
    """beta as the integer B of B / 2^b (rounded to nearest), after snnTorch's clamp to [0, 1]."""
    return int(np.rint(min(max(float(beta), 0.0), 1.0) * 2.0 ** beta_shift))


def build_bundle(specs, neuron, input_info, membrane_bits, headroom_bits, beta_shift, extra_meta=None):
    """A Bundle from real layer descriptions; neuron = {"beta", "threshold"}, input_info = {"scale", "max_code"}."""
    check_widths(membrane_bits, headroom_bits, beta_shift)
    arrays, layers = {}, []
    for i, spec in enumerate(specs):
        integer, unit = integer_layer(spec, float(neuron["threshold"]), membrane_bits, headroom_bits)
        names = {key: f"layer{i}.{key}" for key in integer}
        arrays.update({names[key]: value for key, value in integer.items()})
        layers.append({"kind": spec["kind"], "pool": spec["pool"], "stride": spec["pool"], "padding": spec["padding"],
                       "weight_bits": spec["bits"], "weight_scale": spec["weight_scale"].tolist(),
                       "input_scale": spec["input_scale"], "membrane_unit": unit.tolist(), "arrays": names})
    meta = {"format": FORMAT, "version": VERSION, "membrane_bits": membrane_bits,
            "headroom_bits": headroom_bits, "beta": float(neuron["beta"]), "threshold": float(neuron["threshold"]),
            "beta_multiplier": beta_fixed_point(neuron["beta"], beta_shift), "beta_shift": beta_shift,
            "input": input_info, "layers": layers, **(extra_meta or {})}
    return Bundle(meta, arrays)


def upgrade_meta(meta):
    """A version-1 bundle's metadata as version 2 (pool true -> 2, false -> 1; padding 0); others unchanged.

    Values of the wrong kind stay as they are, for the bundle check to name.
    """
    if not isinstance(meta, dict) or meta.get("version") != 1 or not isinstance(meta.get("layers"), list):
        return meta
    layers = []
    for layer in meta["layers"]:
        if isinstance(layer, dict):
            layer = dict(layer)
            if isinstance(layer.get("pool"), bool):
                layer["pool"] = 2 if layer["pool"] else 1
            layer.setdefault("padding", 0)
        layers.append(layer)
    return {**meta, "version": VERSION, "layers": layers}


def width_problem(membrane_bits, headroom_bits, beta_shift):
    """(field, value, allowed values) of the first width the int64 recurrence cannot hold; None if all fit."""
    if not 4 <= membrane_bits <= 32:
        return "membrane_bits", membrane_bits, "4..32"
    if not 1 <= headroom_bits <= membrane_bits - 3:
        return "headroom_bits", headroom_bits, f"1..membrane_bits-3 (1..{membrane_bits - 3} at {membrane_bits} bits)"
    if not 1 <= beta_shift <= 30:
        return "beta_shift", beta_shift, "1..30"
    return None


def check_widths(membrane_bits, headroom_bits, beta_shift, membrane_option="--membrane_bits"):
    """One-line refusals for widths the int64 recurrence cannot hold (membrane_option: how W was given)."""
    problem = width_problem(membrane_bits, headroom_bits, beta_shift)
    if problem is not None:
        field, value, allowed = problem
        option = membrane_option if field == "membrane_bits" else WIDTH_OPTIONS[field]
        where = "" if field == "membrane_bits" else f" with {membrane_option} {membrane_bits}"
        raise UserError(f"{option} {value} is not allowed{where}; must be within {allowed}")


# ---------------------------------------------------------------- the integer runtime (NumPy only)

def conv2d_int(x, kernel, stride, padding=0):
    """Integer convolution (cross-correlation) of x [N, C, H, W], zero-padded by `padding`, with kernel
    [O, C, k, k]; int64."""
    if padding:
        x = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[2:], axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride].astype(np.int64)
    return np.tensordot(windows, kernel.astype(np.int64), axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def accumulate(layer, weight, x):
    """A = integer weights times integer inputs x [N, ...] for one layer; int64 [N, O, ...]."""
    if layer["kind"] == "linear":
        return x.reshape(len(x), -1).astype(np.int64) @ weight.astype(np.int64).T
    return conv2d_int(x, pool_folded_kernel(weight, layer_pool(layer)), layer["stride"], layer.get("padding", 0))


def layer_pool(layer):
    """The pool size s of a layer's metadata (version 1's true / false: 2 / 1)."""
    pool = layer["pool"]
    return (2 if pool else 1) if isinstance(pool, bool) else pool


def channel_view(values, ndim):
    """Per-channel values [O] shaped to broadcast against [..., O, H, W] (or [..., O])."""
    return np.asarray(values, np.int64).reshape((-1,) + (1,) * (ndim - 2))


def scaled_current(acc, shift, bias):
    """C = shift(A, F) + H: a left shift, or a right shift rounded half up, per channel."""
    left = channel_view(np.maximum(shift, 0), acc.ndim)
    right = channel_view(np.maximum(-shift, 0), acc.ndim)
    return (((acc << left) + ((1 << right) >> 1)) >> right) + channel_view(bias, acc.ndim)


def lif_integer(current, threshold, meta, num_steps=None, record=False):
    """The integer LIF recurrence over [T, N, ...] currents (or a static [N, ...] one for num_steps steps).

    Returns (spikes int8 [T, N, ...], membranes int64 or None, number of saturated updates).
    """
    low, high = -(1 << (meta["membrane_bits"] - 1)), (1 << (meta["membrane_bits"] - 1)) - 1
    mult, shift = meta["beta_multiplier"], meta["beta_shift"]
    static = num_steps is not None
    steps, shape = (num_steps, current.shape) if static else (current.shape[0], current.shape[1:])
    theta = channel_view(threshold, len(shape))
    spikes = np.zeros((steps, *shape), np.int8)
    mems = np.zeros((steps, *shape), np.int64) if record else None
    mem = np.zeros(shape, np.int64)
    spk = np.zeros(shape, np.int64)
    saturated = 0
    for t in range(steps):
        mem = ((mult * mem + (1 << (shift - 1))) >> shift) + (current if static else current[t]) - theta * spk
        clipped = np.clip(mem, low, high)
        saturated += int(np.count_nonzero(clipped != mem))
        mem = clipped
        spk = (mem > theta).astype(np.int64)
        spikes[t] = spk
        if record:
            mems[t] = mem
    return spikes, mems, saturated


def run_bundle(bundle, codes, num_steps=None, record=False):
    """Run a bundle on integer inputs: static [N, C, H, W] codes shown num_steps times, or [T, N, C, H, W].

    Returns the output spikes [T, N, classes] (int8), or with record=True a list of (spikes, membranes)
    per layer, and the number of saturated membrane updates.
    """
    x = check_codes(bundle, codes, num_steps)
    layers, saturated = [], 0
    for i, layer in enumerate(bundle.meta["layers"]):
        weight, shift, threshold, bias = bundle.layer_arrays(i)
        static = i == 0 and num_steps is not None
        flat = x if static else x.reshape(-1, *x.shape[2:])  # [T, N, ...] -> [T*N, ...]
        acc = accumulate(layer, weight, flat)
        current = scaled_current(acc, shift, bias)
        if not static:
            current = current.reshape(x.shape[0], x.shape[1], *current.shape[1:])
        spikes, mems, count = lif_integer(current, threshold, bundle.meta, num_steps if static else None, record)
        layers.append((spikes, mems))
        saturated += count
        x = spikes
    return (layers if record else layers[-1][0]), saturated


def input_codes(bundle, x):
    """Integer input codes of real inputs: round(x / scale), clipped to 0..max_code when one is set.

    x: images [N, C, H, W] or event frames [N, T, C, H, W] of finite numbers, in the bundle's layout.
    """
    x = numeric_array(x, "the input")
    if x.ndim not in (4, 5):
        raise UserError(f"the input has shape {x.shape}; input_codes takes images [N, C, H, W] or event frames "
                        "[N, T, C, H, W]")
    check_sample_shape(bundle, x.shape[-3:], x.shape)
    bad = x.size - int(np.count_nonzero(np.isfinite(x)))
    if bad:
        raise UserError(f"the input holds {bad} NaN or infinite value(s) of {x.size}; replace them with finite "
                        "numbers before input_codes")
    info = bundle.meta["input"]
    codes = np.rint(x.astype(np.float64) / info["scale"])
    if info.get("max_code") is not None:
        codes = np.clip(codes, 0, info["max_code"])
    return codes.astype(np.int64)


def numeric_array(x, what):
    """x as a NumPy array of real numbers (booleans count as 0/1), or a one-line UserError."""
    try:
        x = np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged nested lists, objects NumPy cannot convert
        raise UserError(f"{what} is not an array of numbers ({type(e).__name__}); give a NumPy array") from None
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == np.bool_):
        raise UserError(f"{what} holds {x.dtype} values; give a NumPy array of real numbers")
    return x


def check_codes(bundle, codes, num_steps):
    """The integer input codes as an array, after one-line refusals of anything the runtime cannot run."""
    x = numeric_array(codes, "the input codes")
    if not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"the integer network takes integer input codes, not {x.dtype}; make them with "
                        "deploy.input_codes(bundle, x)")
    if x.ndim == 4:
        if num_steps is None:
            raise UserError("a static [N, C, H, W] input needs num_steps (how many time steps it is shown)")
        check_num_steps(num_steps)
    elif x.ndim == 5:
        if num_steps is not None:
            raise UserError("an event input [T, N, C, H, W] brings its own time steps; leave num_steps None")
        if x.shape[0] < 1:
            raise UserError(f"the event input has shape {x.shape}: no time steps")
    else:
        raise UserError(f"the input codes have shape {x.shape}; give static [N, C, H, W] codes with num_steps, "
                        "or events [T, N, C, H, W]")
    if x.shape[-4] < 1:
        raise UserError(f"the input codes have shape {x.shape}: no samples; give at least one")
    check_sample_shape(bundle, x.shape[-3:], x.shape)
    limit = bundle.max_input()
    if x.size and (x.min() < 0 or x.max() > limit):
        raise UserError(f"input codes span {x.min()}..{x.max()}, but this bundle's {bundle.meta['input']['kind']} "
                        f"take 0..{limit}; make them with deploy.input_codes(bundle, x)")
    return x


def check_num_steps(num_steps):
    """Refuse a num_steps that is not an integer of at least 1, in one line."""
    if isinstance(num_steps, (bool, np.bool_)) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise UserError(f"num_steps must be an integer of at least 1 (time steps of a static input), "
                        f"not {shorten(num_steps)}")


def check_sample_shape(bundle, sample, shape):
    """Refuse one sample's (C, H, W) that the bundle's layers cannot take, naming the whole shape."""
    size = tuple(int(n) for n in sample)
    for i, layer in enumerate(bundle.meta["layers"]):
        weight = bundle.layer_arrays(i)[0]
        if layer["kind"] == "linear":
            if int(np.prod(size)) != weight.shape[1]:
                raise UserError(f"inputs of shape {shape} give the linear layer {int(np.prod(size))} values per "
                                f"sample, but it takes {weight.shape[1]}; {expected_input(bundle)}")
            size = (weight.shape[0],)
            continue
        if i == 0 and size[0] != weight.shape[1]:
            raise UserError(f"the input has {size[0]} channel(s) (shape {shape}), but the bundle takes "
                            f"{weight.shape[1]}; {expected_input(bundle)}")
        size = conv_output_size(layer, weight, size)
        if min(size[1:]) < 1:
            raise UserError(f"inputs of shape {shape} are too small for the bundle's convolutions; "
                            f"{expected_input(bundle)}")


def conv_output_size(layer, weight, size):
    """(O, H', W') of a conv layer (pool s folded as stride s, with its padding) on a (C, H, W) input; H', W' < 1
    if too small."""
    kernel = np.array(weight.shape[2:]) + layer_pool(layer) - 1
    spatial = (np.array(size[1:]) + 2 * layer.get("padding", 0) - kernel) // layer["stride"] + 1
    return (weight.shape[0], *(int(n) for n in spatial))


def expected_input(bundle):
    """What a sample must look like for this bundle, as advice for a message."""
    layers = bundle.meta["layers"]
    first = bundle.layer_arrays(0)[0]
    if layers[0]["kind"] == "linear":
        return f"give samples of {first.shape[1]} values"
    for side in range(1, 1025):  # the smallest square image the layers map onto the linear layer's inputs
        size = (first.shape[1], side, side)
        for i, layer in enumerate(layers):
            weight = bundle.layer_arrays(i)[0]
            if layer["kind"] == "linear":
                if int(np.prod(size)) == weight.shape[1]:
                    return f"give [..., {first.shape[1]}, {side}, {side}] samples as the network was trained on"
                break
            size = conv_output_size(layer, weight, size)
            if min(size[1:]) < 1:
                break
    return f"give samples with {first.shape[1]} channel(s) in the size the network was trained on"


def predictions(output_spikes):
    """Class with the most output spikes ([T, N, classes] -> [N]); ties go to the lowest index."""
    return np.argmax(output_spikes.astype(np.int64).sum(0), axis=1)


def weight_memory_bytes(bundle):
    """Bytes of the weights as packed N-bit codes (the stored int8/int16 arrays are larger)."""
    total = 0
    for i, layer in enumerate(bundle.meta["layers"]):
        total += bundle.layer_arrays(i)[0].size * max(layer["weight_bits"], 1) / 8
    return int(np.ceil(total))


def parse_widths(text, headroom_bits, beta_shift):
    """'8,12,16' -> [8, 12, 16], each a membrane width the other options allow (one-line error otherwise)."""
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UserError(f"--widths {shorten(text)} has an empty item; give membrane widths such as --widths 8,12,16")
    try:
        widths = [int(part) for part in parts]
    except ValueError:
        raise UserError(f"--widths {shorten(text)} is not a comma-separated list of integers; give membrane "
                        "widths such as --widths 8,12,16") from None
    for width in widths:
        check_widths(width, headroom_bits, beta_shift, membrane_option="--widths")
    return widths


def check_limit(limit):
    """Refuse a --limit below 1 (None: the whole test set)."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit} is not allowed; give the number of test samples to compare, at least 1")
