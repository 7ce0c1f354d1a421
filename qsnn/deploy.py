"""Integer-only execution of a trained QSNN: the bundle format and its NumPy runtime (qsnn.integer_export makes
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
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

FORMAT = "qsnn-integer-bundle"
VERSION = 1
IMAGE_DATASETS = ("mnist", "fashion_mnist", "digits")
SHIFT_LIMITS = (-40, 30)  # F beyond these only shifts every current to zero or to saturation
INT64_BUDGET = 2 ** 62  # every intermediate of the recurrence stays below this in magnitude


@dataclass
class Bundle:
    """A bundle in memory: the JSON metadata and the named integer arrays of the .npz."""
    meta: dict
    arrays: dict

    def layer_arrays(self, i):
        """(weight, shift, threshold, bias) of layer i."""
        names = self.meta["layers"][i]["arrays"]
        return tuple(self.arrays[names[key]] for key in ("weight", "shift", "threshold", "bias"))


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
    check_int64_range(weight if not spec["pool"] else pool_folded_kernel(weight), spec["max_input"],
                      shift, bias, membrane_bits)
    dtype = np.int8 if np.abs(weight).max(initial=0) <= 127 else np.int16
    return {"weight": weight.astype(dtype), "shift": shift.astype(np.int8),
            "threshold": theta.astype(np.int32), "bias": bias}, unit


def check_int64_range(kernel, max_input, shift, bias, membrane_bits):
    """Refuse parameters whose currents could overflow int64 (far outside any trained network)."""
    per_channel = np.abs(kernel).reshape(len(kernel), -1).sum(1) * max_input
    worst = per_channel * 2.0 ** np.maximum(shift, 0) + np.abs(bias) + 2.0 ** (membrane_bits + 1)
    if worst.max(initial=0) >= INT64_BUDGET:
        raise UserError("the integer currents of this network could overflow int64 (a BatchNorm scale or "
                        "bias far out of range); export with a smaller --membrane_bits")


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


def check_widths(membrane_bits, headroom_bits, beta_shift):
    """One-line refusals for widths the int64 recurrence cannot hold."""
    if not 4 <= membrane_bits <= 32:
        raise UserError(f"--membrane_bits {membrane_bits} is not allowed; must be within 4..32")
    if not 1 <= headroom_bits <= membrane_bits - 3:
        raise UserError(f"--headroom_bits {headroom_bits} is not allowed; must be within 1..membrane_bits-3")
    if not 1 <= beta_shift <= 30:
        raise UserError(f"--beta_bits {beta_shift} is not allowed; must be within 1..30")


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
    x = np.asarray(codes)
    if not np.issubdtype(x.dtype, np.integer):
        raise UserError(f"the integer network takes integer input codes, not {x.dtype}")
    if (num_steps is None) == (x.ndim == 4):
        raise UserError("give num_steps with a static [N, C, H, W] input and only then")
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
    """Integer input codes of real inputs: round(x / scale), clipped to 0..max_code when one is set."""
    info = bundle.meta["input"]
    codes = np.rint(np.asarray(x, np.float64) / info["scale"])
    if info.get("max_code") is not None:
        codes = np.clip(codes, 0, info["max_code"])
    return codes.astype(np.int64)


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
    from .runlog import atomic_path, write_text  # torch is needed to export, not to run

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
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read the bundle {npz_path.with_suffix('')}.{{npz,json}} "
                        f"({type(e).__name__}: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise UserError(f"{json_path} is not a {FORMAT} version {VERSION} file")
    for layer in meta["layers"]:
        for name in layer["arrays"].values():
            if name not in arrays or not np.issubdtype(arrays[name].dtype, np.integer):
                raise UserError(f"{npz_path} lacks the integer array {name!r}; export the bundle again")
    return Bundle(meta, arrays)


def parse_widths(text):
    """'8,12,16' -> [8, 12, 16] (one-line error otherwise)."""
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--widths {text!r} is not a comma-separated list of integers") from None


def main(argv=None):
    """python -m qsnn.deploy BUNDLE [--widths 8,12,16,24,32]: accuracy and agreement with PyTorch."""
    parser = argparse.ArgumentParser(prog="python -m qsnn.deploy", description=main.__doc__)
    parser.add_argument("bundle", help="NAME.npz, NAME.json or NAME of a bundle written by export.py")
    parser.add_argument("--widths", default=None, help="membrane widths to compare (default: the bundle's)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N test samples")
    args = parser.parse_args(argv)
    from .integer_export import load_trial, width_report  # torch: only to compare with PyTorch

    try:
        bundle = load_bundle(args.bundle)
        widths = parse_widths(args.widths) if args.widths else [bundle.meta["membrane_bits"]]
        source = bundle.meta.get("source") or {}
        if "run_dir" not in source:
            raise UserError(f"{args.bundle}: the bundle does not name the run folder it was exported from")
        cfg, model, _ = load_trial(source["run_dir"], source.get("trial"))
        options = {"headroom_bits": bundle.meta["headroom_bits"], "beta_shift": bundle.meta["beta_shift"]}
        print(f"weights: {weight_memory_bytes(bundle)} bytes as packed codes")
        print(width_report(model, cfg, widths, options, first=bundle, limit=args.limit))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
