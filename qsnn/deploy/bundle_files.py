"""A bundle's two files (NAME.npz integer arrays, NAME.json metadata): written atomically, and every value read
back checked once against what the runtime (qsnn.deploy.runtime) assumes. NumPy only."""
import json
import math
import zipfile
from pathlib import Path

import numpy as np

from qsnn.deploy.runtime import (ARRAY_KEYS, FORMAT, INPUT_KINDS, LAYER_KINDS, MAX_PADDING, MAX_POOL,
                                 READABLE_VERSIONS, SHIFT_LIMITS, WIDTH_OPTIONS, Bundle, layer_pool,
                                 overflows_int64, pool_folded_kernel, upgrade_meta, width_problem)
from qsnn.errors import UserError, shorten
from qsnn.files import atomic_path, write_text


def bundle_paths(path):
    """(npz, json) paths of a bundle named by either file or by their common stem."""
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".npz", ".json") else path
    return stem.with_name(stem.name + ".npz"), stem.with_name(stem.name + ".json")


def save_bundle(bundle, path):
    """Write NAME.npz and NAME.json atomically; returns the two paths."""
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
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") not in READABLE_VERSIONS:
        raise UserError(f"{json_path} is not a {FORMAT} version {' or '.join(map(str, READABLE_VERSIONS))} file")
    bundle = Bundle(upgrade_meta(meta), arrays)  # a version-1 bundle reads as version 2
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
        # a conv's pool size (1: none) is its stride; a linear layer has neither pool nor padding
        pool = self.integer(layer, "pool", 1, MAX_POOL if kind == "conv" else 1, where)
        self.integer(layer, "stride", pool, pool, where)
        self.integer(layer, "padding", 0, MAX_PADDING if kind == "conv" else 0, where)
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
        kernel = pool_folded_kernel(weight, layer_pool(layer))
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
