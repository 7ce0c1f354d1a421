"""Integer-only execution of a trained QSNN: the bundle format and its NumPy runtime (qsnn.deploy.convert makes
bundles from checkpoints and compares them with PyTorch).

A bundle is `NAME.npz` (integer arrays) plus `NAME.json` (layout and scalars); running it needs only NumPy.
Every layer l (conv 1, conv 2, head) keeps, per output channel c, an integer membrane M in its own unit
u[c] (a real value per integer step). Its input x is integer: pixel codes (0..255), event counts, or the
previous layer's 0/1 spikes. With W = membrane_bits, b = beta_shift, B = beta_multiplier:

    A_t[c] = sum_k K[c, k] x_t[k]                            integer weights, 2x2 pool as an integer box sum
    C_t[c] = shift(A_t[c], F[c]) + H[c]                      F >= 0: A * 2^F;  F < 0: floor(A / 2^-F + 1/2)
    M_t[c] = sat(floor((B M_{t-1}[c] + 2^(b-1)) / 2^b) + C_t[c] - theta[c] S_{t-1}[c])
    S_t[c] = [M_t[c] > theta[c]]                             M and S are 0 before the first step

sat clips to [-2^(W-1), 2^(W-1) - 1]. This is snnTorch's Leaky (reset by subtraction with the previous
step's spike) on mem = u[c] M, with u[c] = |g[c]| a / 2^F[c]: a is the real value of one accumulator step
(weight scale x input scale, / 4 with the folded pool), g[c] the BatchNorm scale gamma / sqrt(var + eps).
Channels with g[c] < 0 have their weights negated (sign folded into K), which keeps "mem > thr" as
"M > theta" with theta = thr / u[c] > 0. Rounding (to nearest, NumPy rint): theta, H = h / u (the BatchNorm
shift h = beta_bn - g mean), B = beta 2^b; the decay and negative shifts round half up.
"""
import json
import math
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsnn.errors import UserError, shorten

FORMAT = "qsnn-integer-bundle"
VERSION = 1
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
    step_value = spec["weight_scale"] * spec["input_scale"] / (4.0 if spec["pool"] else 1.0)
    gain, offset = spec["gain"], spec["offset"]
    shift, unit = channel_units(gain, step_value, threshold, membrane_bits, headroom_bits)
    sign = np.where(gain < 0, -1, np.where(gain > 0, 1, 0))
    codes = spec["codes"].astype(np.int64)
    weight = codes * sign.reshape((-1,) + (1,) * (codes.ndim - 1))
    limit = 2 ** (membrane_bits - 1) - 1
    theta = np.minimum(np.rint(threshold / unit), limit).astype(np.int64)
    bias = np.rint(offset / unit).astype(np.int64)
    if overflows_int64(weight if not spec["pool"] else pool_folded_kernel(weight), spec["max_input"],
                       shift, bias, membrane_bits):
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


def pool_folded_kernel(codes):
    """The integer kernel of conv followed by a 2x2 sum-pool as one stride-2 conv: a 2x2 box sum, one larger."""
    padded = np.pad(codes.astype(np.int64), ((0, 0), (0, 0), (1, 1), (1, 1)))
    return padded[..., 1:, 1:] + padded[..., :-1, 1:] + padded[..., 1:, :-1] + padded[..., :-1, :-1]


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
        layers.append({"kind": spec["kind"], "pool": spec["pool"], "stride": 2 if spec["pool"] else 1,
                       "weight_bits": spec["bits"], "weight_scale": spec["weight_scale"].tolist(),
                       "input_scale": spec["input_scale"], "membrane_unit": unit.tolist(), "arrays": names})
    meta = {"format": FORMAT, "version": VERSION, "membrane_bits": membrane_bits,
            "headroom_bits": headroom_bits, "beta": float(neuron["beta"]), "threshold": float(neuron["threshold"]),
            "beta_multiplier": beta_fixed_point(neuron["beta"], beta_shift), "beta_shift": beta_shift,
            "input": input_info, "layers": layers, **(extra_meta or {})}
    return Bundle(meta, arrays)


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

def conv2d_int(x, kernel, stride):
    """Integer valid convolution (cross-correlation) of x [N, C, H, W] with kernel [O, C, k, k]; int64."""
    windows = np.lib.stride_tricks.sliding_window_view(x, kernel.shape[2:], axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride].astype(np.int64)
    return np.tensordot(windows, kernel.astype(np.int64), axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def accumulate(layer, weight, x):
    """A = integer weights times integer inputs x [N, ...] for one layer; int64 [N, O, ...]."""
    if layer["kind"] == "linear":
        return x.reshape(len(x), -1).astype(np.int64) @ weight.astype(np.int64).T
    kernel = pool_folded_kernel(weight) if layer["pool"] else weight
    return conv2d_int(x, kernel, layer["stride"])


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
    """(O, H', W') of a conv layer (pool folded as stride 2) on a (C, H, W) input; H', W' < 1 if too small."""
    kernel = np.array(weight.shape[2:]) + (1 if layer["pool"] else 0)
    spatial = (np.array(size[1:]) - kernel) // layer["stride"] + 1
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


# ---------------------------------------------------------------- files

def bundle_paths(path):
    """(npz, json) paths of a bundle named by either file or by their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".npz", ".json") else path
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def save_bundle(bundle, path):
    """Write NAME.npz and NAME.json atomically; returns the two paths."""
    from qsnn.runs.runlog import atomic_path, write_text  # torch is needed to export, not to run

    npz_path, json_path = bundle_paths(path)
    with atomic_path(npz_path) as tmp:
        np.savez(tmp, **bundle.arrays)
    write_text(json_path, json.dumps(bundle.meta, indent=2) + "\n")
    return npz_path, json_path


def load_bundle(path):
    """Read a bundle written by save_bundle (NumPy only); damaged or foreign files end in a UserError."""
    npz_path, json_path = bundle_paths(path)
    try:
        meta = json.loads(json_path.read_text())
        with np.load(npz_path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise UserError(f"cannot read the bundle {npz_path.with_suffix('')}.{{npz,json}} "
                        f"({type(e).__name__}: {shorten(str(e))})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"{json_path} is not a {FORMAT} version {VERSION} file")
    bundle = Bundle(meta, arrays)
    BundleCheck(json_path, npz_path).check(bundle)
    return bundle


def is_integer(value):
    """True for a JSON integer (a bool is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_finite_number(value):
    """True for a JSON number that is a finite float (a bool is not one; nor is an int beyond float range)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


class BundleCheck:
    """Every value of a bundle read from disk, checked once against what the runtime assumes.

    Each failure is one UserError naming the file and the field (JSON) or array (.npz).
    """

    def __init__(self, json_path, npz_path):
        self.json_path, self.npz_path = json_path, npz_path

    def fail(self, field, problem, in_npz=False):
        """Raise the UserError of one bad field (of the JSON) or array (of the .npz)."""
        path, what = (self.npz_path, "array") if in_npz else (self.json_path, "field")
        raise UserError(f"{path}: {what} {field} {problem}; the bundle is damaged or was not written by "
                        "export.py: export it again")

    def value(self, record, key, where=""):
        """record[key], refused when absent."""
        if key not in record:
            self.fail(f"{where}{key}", "is missing")
        return record[key]

    def integer(self, record, key, low=None, high=None, where="", optional=False):
        """An integer field, >= low and <= high where given (None allowed when optional)."""
        value = record.get(key) if optional else self.value(record, key, where)
        if optional and value is None:
            return None
        if not is_integer(value) or (low is not None and value < low) or (high is not None and value > high):
            bounds = "" if low is None else f" within {low}..{high}" if high is not None else f" >= {low}"
            self.fail(f"{where}{key}", f"is {shorten(value)}; must be an integer{bounds}")
        return value

    def number(self, record, key, where="", positive=False):
        """A finite number field (> 0 when positive)."""
        value = self.value(record, key, where)
        if not is_finite_number(value) or (positive and value <= 0):
            self.fail(f"{where}{key}", f"is {shorten(value)}; must be a finite number{' > 0' if positive else ''}")
        return value

    def choice(self, record, key, allowed, where=""):
        """A field that is one of the allowed values."""
        value = self.value(record, key, where)
        if not isinstance(value, (str, bool)) or value not in allowed:
            self.fail(f"{where}{key}", f"is {shorten(value)}; must be one of {', '.join(map(str, allowed))}")
        return value

    def mapping(self, record, key, where="", optional=False):
        """A JSON object field ({} when optional and absent or null)."""
        value = record.get(key) if optional else self.value(record, key, where)
        if optional and value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(f"{where}{key}", f"is {shorten(value)}; must be a JSON object")
        return value

    def check(self, bundle):
        """All checks of a bundle: the scalars, the input, then each layer's metadata and arrays."""
        meta = bundle.meta
        self.check_scalars(meta)
        self.check_input(self.mapping(meta, "input"))
        layers = self.value(meta, "layers")
        if not isinstance(layers, list) or not layers:
            self.fail("layers", f"is {shorten(layers)}; must be a non-empty list of layers")
        for i, layer in enumerate(layers):
            self.check_layer_meta(layer, i, len(layers))
        kinds = [layer["kind"] for layer in layers]
        if "conv" in kinds[kinds.index("linear"):]:
            self.fail(f"layers[{len(kinds) - 1 - kinds[::-1].index('conv')}].kind",
                      "is conv after a linear layer; the runtime takes convs first, then linear layers")
        previous = None
        for i in range(len(layers)):
            previous = self.check_layer_arrays(bundle, i, previous)
        if meta.get("num_classes") is not None and meta["num_classes"] != previous[1]:
            self.fail("num_classes", f"is {meta['num_classes']}, but the last layer has {previous[1]} outputs")

    def check_scalars(self, meta):
        """Widths, decay and threshold, and the optional facts export.py adds."""
        for field in WIDTH_OPTIONS:
            self.integer(meta, field)
        problem = width_problem(meta["membrane_bits"], meta["headroom_bits"], meta["beta_shift"])
        if problem is not None:
            field, value, allowed = problem
            self.fail(field, f"is {value}; must be within {allowed}")
        self.integer(meta, "beta_multiplier", 0, 2 ** meta["beta_shift"])
        self.number(meta, "beta")
        self.number(meta, "threshold", positive=True)
        self.integer(meta, "num_steps", 1, optional=True)
        self.integer(meta, "num_classes", 1, optional=True)
        if meta.get("dataset") is not None and not isinstance(meta["dataset"], str):
            self.fail("dataset", f"is {shorten(meta['dataset'])}; must be a dataset name")
        source = self.mapping(meta, "source", optional=True)
        if "run_dir" in source and not isinstance(source["run_dir"], str):
            self.fail("source.run_dir", f"is {shorten(source['run_dir'])}; must be a folder name")
        self.integer(source, "trial", 0, where="source.", optional=True)

    def check_input(self, info):
        """How real inputs become codes: the kind, a positive scale, and max_code (null or >= 1)."""
        self.choice(info, "kind", INPUT_KINDS, "input.")
        self.number(info, "scale", "input.", positive=True)
        self.value(info, "max_code", "input.")
        self.integer(info, "max_code", 1, 2 ** 31 - 1, "input.", optional=True)

    def check_layer_meta(self, layer, i, count):
        """One layer's JSON: convs first, then linear layers, the last one linear; pool, stride, bits, names."""
        where = f"layers[{i}]."
        if not isinstance(layer, dict):
            self.fail(f"layers[{i}]", f"is {shorten(layer)}; must be a JSON object")
        kind = self.choice(layer, "kind", LAYER_KINDS, where)
        if kind == "conv" and i == count - 1:
            self.fail(f"{where}kind", "is conv in the last layer; the last layer must be linear (the classes)")
        pool = self.choice(layer, "pool", (True, False) if kind == "conv" else (False,), where)
        self.integer(layer, "stride", 2 if pool else 1, 2 if pool else 1, where)
        self.integer(layer, "weight_bits", 1, 16, where)
        self.number(layer, "input_scale", where, positive=True)
        for key in ("weight_scale", "membrane_unit"):
            values = self.value(layer, key, where)
            if not isinstance(values, list) or not all(is_finite_number(v) and v >= 0 for v in values):
                self.fail(f"{where}{key}", f"is {shorten(values)}; must be a list of finite numbers >= 0")
        names = self.mapping(layer, "arrays", where)
        for key in ARRAY_KEYS:
            if not isinstance(self.value(names, key, f"{where}arrays."), str):
                self.fail(f"{where}arrays.{key}", f"is {shorten(names[key])}; must be an array name")

    def check_layer_arrays(self, bundle, i, previous):
        """Layer i's arrays (present, signed, chained onto `previous`, in range); returns (kind, outputs)."""
        layer, meta = bundle.meta["layers"][i], bundle.meta
        arrays = {}
        for key in ARRAY_KEYS:
            name = layer["arrays"][key]
            if name not in bundle.arrays:
                self.fail(repr(name), f"(layers[{i}].arrays.{key}) is missing", in_npz=True)
            arrays[key] = bundle.arrays[name]
            if not np.issubdtype(arrays[key].dtype, np.signedinteger):
                self.fail(repr(name), f"holds {arrays[key].dtype}; must hold signed integers", in_npz=True)
        weight, names = arrays["weight"], layer["arrays"]
        dims = 4 if layer["kind"] == "conv" else 2
        if weight.ndim != dims or min(weight.shape) < 1:
            layout = "[out, in, kh, kw]" if dims == 4 else "[out, in]"
            self.fail(repr(names["weight"]), f"has shape {weight.shape}; a {layer['kind']} layer's weights are "
                      f"{layout}, every size >= 1", in_npz=True)
        outputs, inputs = weight.shape[:2]
        self.check_chain(layer, i, inputs, previous, names["weight"])
        for key in ("shift", "threshold", "bias"):
            if arrays[key].shape != (outputs,):
                self.fail(repr(names[key]), f"has shape {arrays[key].shape}; layer {i} has {outputs} output "
                          f"channels, so it must be ({outputs},)", in_npz=True)
        for key in ("weight_scale", "membrane_unit"):
            if len(layer[key]) != outputs:
                self.fail(f"layers[{i}].{key}", f"has {len(layer[key])} values; layer {i} has {outputs} outputs")
        magnitude = max(1, 2 ** (layer["weight_bits"] - 1))
        membrane_max = 2 ** (meta["membrane_bits"] - 1) - 1
        for key, low, high in (("weight", -magnitude, magnitude), ("shift", *SHIFT_LIMITS),
                               ("threshold", 0, membrane_max)):
            values = arrays[key]
            if values.min() < low or values.max() > high:
                self.fail(repr(names[key]), f"spans {values.min()}..{values.max()}; layer {i} allows {low}..{high}",
                          in_npz=True)
        kernel = pool_folded_kernel(weight) if layer["pool"] else weight
        if overflows_int64(kernel, bundle.max_input() if i == 0 else 1, arrays["shift"], arrays["bias"],
                           meta["membrane_bits"]):
            self.fail(repr(names["bias"]), f"(or the weights and shifts of layer {i}) could overflow the "
                      "runtime's int64 currents", in_npz=True)
        return layer["kind"], outputs

    def check_chain(self, layer, i, inputs, previous, name):
        """The layer's inputs match the previous layer's outputs (a linear one after a conv: whole maps)."""
        if previous is None:
            return
        kind, outputs = previous
        if layer["kind"] == "conv" and inputs != outputs:
            self.fail(repr(name), f"takes {inputs} input channels, but layer {i - 1} has {outputs} outputs",
                      in_npz=True)
        if layer["kind"] == "linear" and kind == "linear" and inputs != outputs:
            self.fail(repr(name), f"takes {inputs} inputs, but layer {i - 1} has {outputs} outputs", in_npz=True)
        if layer["kind"] == "linear" and kind == "conv" and inputs % outputs:
            self.fail(repr(name), f"takes {inputs} inputs, not a whole number of layer {i - 1}'s {outputs} "
                      "channel maps", in_npz=True)


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


def main(argv=None):
    """python -m qsnn.deploy.runtime BUNDLE [--widths 8,12,16,24,32]: accuracy and agreement with PyTorch."""
    from qsnn.runs.cli import report_user_errors

    return report_user_errors(compare_bundle, argv)


def compare_bundle(argv):
    """Parse the command line, load the bundle and print its comparison with the PyTorch model."""
    from qsnn.runs.cli import ArgumentParser  # usage mistakes as one-line UserErrors

    parser = ArgumentParser(prog="python -m qsnn.deploy.runtime", description=main.__doc__)
    parser.add_argument("bundle", help="NAME.npz, NAME.json or NAME of a bundle written by export.py")
    parser.add_argument("--widths", default=None, help="membrane widths to compare (default: the bundle's)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test samples")
    args = parser.parse_args(argv)
    check_limit(args.limit)
    bundle = load_bundle(args.bundle)
    meta = bundle.meta
    widths = ([meta["membrane_bits"]] if args.widths is None
              else parse_widths(args.widths, meta["headroom_bits"], meta["beta_shift"]))
    source = meta.get("source") or {}
    if "run_dir" not in source:
        raise UserError(f"{args.bundle}: the bundle does not name the run folder it was exported from")
    from qsnn.deploy.convert import load_trial, width_report  # torch: only to compare with PyTorch

    cfg, model, _ = load_trial(source["run_dir"], source.get("trial"))
    options = {"headroom_bits": meta["headroom_bits"], "beta_shift": meta["beta_shift"]}
    print(f"weights: {weight_memory_bytes(bundle)} bytes as packed codes")
    print(width_report(model, cfg, widths, options, first=bundle, limit=args.limit))


if __name__ == "__main__":
    sys.exit(main())
