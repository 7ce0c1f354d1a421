"""From a trained PyTorch QSNN to an integer bundle (qsnn.deploy.runtime), and the check of one against the other.

Reads Brevitas' integer weight codes and the eval-mode BatchNorm of a run folder's checkpoint, builds the
bundle that qsnn.deploy.runtime runs with NumPy alone, and compares both networks' outputs on the test set.
"""
import json
import math
import re
from pathlib import Path

import numpy as np

from qsnn.core.models import weight_codes
from qsnn.data import registry
from qsnn.deploy.runtime import EVENT_COUNT_LIMIT, build_bundle, input_codes, predictions, run_bundle
from qsnn.errors import UserError, shorten
from qsnn.progress import progress

# ---------------------------------------------------------------- from a trained PyTorch model (needs torch)

def input_info_for(dataset):
    """How real inputs become integer codes, as the dataset's registry entry says (pixel codes or event counts)."""
    if registry.get(dataset).deploy_input == "pixel_codes":
        return {"kind": "pixel_codes", "scale": 1.0 / 255.0, "max_code": 255}
    return {"kind": "event_counts", "scale": 1.0, "max_code": None}


def batch_norm_affine(bn, channels):
    """Eval-mode BatchNorm as y = g x + h per channel (float64); identity without BatchNorm."""
    if bn is None:
        return np.ones(channels), np.zeros(channels)
    if bn.running_mean is None:
        raise UserError("BatchNorm without running statistics is not supported by the integer export")
    as64 = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
    weight = as64(bn.weight) if bn.affine else np.ones(channels)
    bias = as64(bn.bias) if bn.affine else np.zeros(channels)
    gain = weight / np.sqrt(as64(bn.running_var) + bn.eps)
    return gain, bias - gain * as64(bn.running_mean)


def layer_specs(model, input_info):
    """The real description of each layer (integer codes and float64 scales, gains, offsets) of a QSNN."""
    max_code = input_info["max_code"] if input_info["max_code"] is not None else EVENT_COUNT_LIMIT
    specs, scale, max_input = [], input_info["scale"], max_code
    # each conv layer's own pool size (1: none) and zero padding, as the network runs them
    modules = [(block.conv, block.bn, block.pool_size, block.padding, "conv") for block in model.blocks]
    modules.append((model.head.fc, None, 1, 0, "linear"))
    for layer, bn, pool, padding, kind in modules:
        codes, weight_scale, bits = weight_codes(layer)
        gain, offset = batch_norm_affine(bn, len(codes))
        specs.append({"kind": kind, "pool": int(pool), "padding": int(padding), "codes": codes, "bits": bits,
                      "weight_scale": weight_scale, "input_scale": scale, "max_input": max_input, "gain": gain,
                      "offset": offset})
        scale, max_input = 1.0, 1  # later layers take 0/1 spikes
    return specs


def neuron_constants(model):
    """The (beta, threshold) shared by every LIF layer; other settings are refused."""
    import snntorch as snn

    from qsnn.core.neuron_modules import reset_of

    lifs = [block.lif for block in model.blocks] + [model.head.lif]
    if any(type(lif) is not snn.Leaky or lif.beta.numel() != 1 or lif.threshold.numel() != 1 for lif in lifs):
        raise UserError("the integer export implements snnTorch Leaky neurons with one beta and threshold per "
                        "layer (not Synaptic or other neurons, nor per-channel values)")
    values = {(float(lif.beta), float(lif.threshold)) for lif in lifs}
    if len(values) != 1 or any(reset_of(lif) != "subtract" for lif in lifs) or float(lifs[0].threshold) <= 0:
        raise UserError("the integer export implements one positive threshold and beta shared by all layers "
                        "with reset by subtraction")
    beta, threshold = values.pop()
    return {"beta": beta, "threshold": threshold}


def export_model(model, dataset, membrane_bits, headroom_bits, beta_shift, input_info=None, extra_meta=None):
    """A Bundle of a QSNN (put in eval mode: BatchNorm running statistics) at one membrane width."""
    model.eval()
    input_info = input_info or input_info_for(dataset)
    meta = {"dataset": dataset, "num_classes": int(model.head.fc.out_features), **(extra_meta or {})}
    return build_bundle(layer_specs(model, input_info), neuron_constants(model), input_info, membrane_bits,
                        headroom_bits, beta_shift, meta)


# ---------------------------------------------------------------- run folders and checkpoints

# Keys whose other values this export does not implement, with the one value it does (a config that lacks a
# key ran with it). state_bits: membrane quantization during training; learned beta and threshold may differ per
# layer or channel; only the Leaky neuron with reset by subtraction. The surrogate only shapes training.
UNSUPPORTED_KEYS = {"state_bits": None, "learn_beta": False, "learn_threshold": False,
                    "reset_mechanism": "subtract", "neuron": "leaky"}


def check_supported_config(cfg, unsupported=None, export="the integer export"):
    """One-line refusal of settings an export does not implement (`unsupported`: key -> the value it does)."""
    for key, supported in (UNSUPPORTED_KEYS if unsupported is None else unsupported).items():
        if cfg.get(key, supported) != supported:
            raise UserError(f"config key {key!r} = {cfg[key]!r} is not implemented by {export} "
                            f"(it implements {key} {supported!r})")
    unknown = sorted(k for k in set(cfg) - known_config_keys() if cfg[k] not in (None, False))
    if unknown:
        raise UserError(f"config key(s) {', '.join(unknown)} are not implemented by the integer export")
    bits = cfg.get("num_bits")
    if bits is None or (isinstance(bits, list) and None in bits):
        raise UserError("full-precision weights (num_bits None) have no integer codes; the integer export "
                        "needs a quantized network (num_bits 1..16)")


def known_config_keys():
    """Every key the config schema declares (the settings this export understands)."""
    from qsnn.runs.schema import SCHEMA

    return frozenset(SCHEMA)


CHECKPOINT_REMEDY = ("the integer export cannot load the checkpoint: put the trial's own file back, or train "
                     "the trial again")


def read_json(path, what):
    """A JSON file, or a one-line UserError naming what it should have been."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"{Path(path).parent} is not a run folder ({what}, {Path(path).name}, is missing)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path} ({type(e).__name__}: {shorten(str(e))})") from None


def best_trial(run_dir):
    """The trial with the best score in status.json (0 when there is no status)."""
    from qsnn.runs.runlog import read_status

    path = Path(run_dir) / "status.json"
    scored = []
    for key, entry in read_status(run_dir).items():
        score = entry.get("best_score", -1.0)
        if not re.fullmatch(r"\d+", key) or (score is not None and not isinstance(score, (int, float))):
            raise UserError(f"{path}: trial {shorten(key)} has best_score {shorten(score)}; repair or delete "
                            "status.json, or name the trial with --trial")
        scored.append((-1.0 if score is None else score, -int(key), int(key)))
    return max(scored)[2] if scored else 0


def trials_with_checkpoints(run_dir, exp):
    """Sorted indices k of the best checkpoints <exp>_t<k>.pt in a run folder."""
    pattern = re.compile(rf"{re.escape(exp)}_t(\d+)\.pt")
    return sorted(int(m.group(1)) for p in Path(run_dir).glob(f"{exp}_t*.pt") if (m := pattern.fullmatch(p.name)))


def run_config(run_dir):
    """(config, experiment name) of a run folder's config.json, refused in one line when unusable."""
    from qsnn.runs.config import CHOICES

    path = run_dir / "config.json"
    record = read_json(path, "its config")
    if not isinstance(record, dict) or not isinstance(record.get("config"), dict):
        raise UserError(f"{path} is not a run's config.json (no 'config' entry)")
    cfg = record["config"]
    if cfg.get("dataset") not in CHOICES["dataset"]:
        raise UserError(f"{path}: dataset {shorten(cfg.get('dataset'))} is not one of "
                        f"{', '.join(CHOICES['dataset'])}; repair config.json")
    exp = record.get("exp_name") or cfg.get("exp_name")
    if exp is not None and (not isinstance(exp, str) or exp.startswith(".") or any(c in exp for c in "/\\\0")):
        raise UserError(f"{path}: exp_name {shorten(exp)} is not a plain name; repair config.json")
    if not exp:
        from qsnn.runs.runlog import experiment_name

        try:
            exp = experiment_name(cfg)
        except KeyError as e:
            raise UserError(f"{path}: its config lacks {e}; repair config.json") from None
    return cfg, exp


def check_test_steps(cfg, path):
    """Refuse a config whose test-time num_steps (the bundle records it) is not an integer >= 1."""
    steps = cfg.get("num_steps_test", cfg.get("num_steps"))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"{path}: num_steps {shorten(steps)} is not an integer of at least 1; repair config.json")


def check_state_dict(path, state):
    """Refuse a checkpoint whose "model" entry is not a state_dict (a dict of named tensors)."""
    import torch

    if not isinstance(state, dict) or not state or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()):
        raise UserError(f"{path}: its 'model' entry is {type(state).__name__}, not a dict of named tensors; it was "
                        "not written by this program's training: move it out of the folder")


def plain_number(value):
    """A checkpoint's int or finite float fact as itself, anything else (a tensor, NaN) as None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def load_trial(run_dir, trial=None, unsupported=None, export="the integer export"):
    """(config, model in eval mode, checkpoint facts) from the best checkpoint of a trial of a run folder;
    `unsupported` and `export` as in check_supported_config (default: the integer export's).

    The checkpoint is checked against the folder's config.json before anything is built from it: a file
    copied in from another experiment would otherwise give that experiment's weights this run's name.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a folder")
    cfg, exp = run_config(run_dir)
    check_supported_config(cfg, unsupported, export)
    check_test_steps(cfg, run_dir / "config.json")
    from qsnn.runs import runlog  # torch only from here on: the refusals above need none
    from qsnn.core.models import build_model

    trial = best_trial(run_dir) if trial is None else trial
    path = runlog.trial_files(run_dir, exp, trial)["best"]
    if not path.is_file():
        present = trials_with_checkpoints(run_dir, exp)
        hint = (f"trials with one: {', '.join(map(str, present))}; choose one with --trial" if present
                else "train the run first")
        raise UserError(f"trial {trial} has no best checkpoint in {run_dir} ({path.name} is missing); {hint}")
    checkpoint = runlog.load_checkpoint(path, ("model",), remedy=CHECKPOINT_REMEDY)
    runlog.check_checkpoint_matches(path, checkpoint, cfg)
    check_state_dict(path, checkpoint["model"])
    try:
        model = build_model(cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{run_dir / 'config.json'}: its config cannot build the network ({type(e).__name__}: "
                        f"{shorten(str(e))}); repair config.json") from None
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, KeyError, ValueError) as e:  # missing or unexpected keys, other shapes
        raise UserError(f"cannot load the checkpoint {path} into the network of config.json "
                        f"({type(e).__name__}: {shorten(str(e))}); it is damaged or not this run's model") from None
    model.execution = "fast"
    source = {"run_dir": str(run_dir.resolve()), "trial": trial, "checkpoint": path.name,
              "epoch": plain_number(checkpoint.get("epoch")), "test_acc": plain_number(checkpoint.get("test_acc"))}
    return cfg, model.eval(), source


# ---------------------------------------------------------------- integer network against PyTorch

def test_inputs(cfg, limit=None):
    """The test set of the config's dataset as float inputs (what the PyTorch model sees) and labels."""
    from qsnn.data.loaders import as_tensors, load_datasets, to_float

    x, y = as_tensors(load_datasets(cfg)[1])
    if limit:
        x, y = x[:limit], y[:limit]
    return to_float(x), y.numpy()


def pytorch_output_spikes(model, x, num_steps, batch_size):
    """Output spikes [T, N, classes] (int8) of the PyTorch model, eval mode, fast execution."""
    import torch

    from qsnn.core.loop import run_network

    model.eval()
    model.execution = "fast"
    with torch.no_grad():
        parts = [run_network(model, x[i:i + batch_size], num_steps).to(torch.int8).numpy()
                 for i in range(0, len(x), batch_size)]
    return np.concatenate(parts, axis=1)


def integer_output_spikes(bundle, x, num_steps, batch_size):
    """Output spikes [T, N, classes] of the integer network on real inputs x, and its saturated fraction."""
    codes = input_codes(bundle, x)
    parts, saturated, updates = [], 0, 0
    for i in range(0, len(codes), batch_size):
        batch = codes[i:i + batch_size]
        if batch.ndim == 5:  # events [N, T, C, H, W] -> [T, N, C, H, W]
            layers, count = run_bundle(bundle, batch.transpose(1, 0, 2, 3, 4), record=True)
        else:
            layers, count = run_bundle(bundle, batch, num_steps, record=True)
        parts.append(layers[-1][0])
        saturated += count
        updates += sum(spikes.size for spikes, _ in layers)
    return np.concatenate(parts, axis=1), saturated / max(updates, 1)


def compare_widths(model, bundles, x, y, num_steps, batch_size=32):
    """Rows of accuracy, agreement and differing output spikes for PyTorch and each (name, bundle).

    Agreement and differing spikes are given twice: against PyTorch on the real inputs (the whole
    deployment, input codes included) and on the inputs the codes stand for (the integer arithmetic alone).
    """
    import torch

    info = bundles[0][1].meta["input"]
    coded = torch.from_numpy((input_codes(bundles[0][1], x) * info["scale"]).astype(np.float32))
    reference = pytorch_output_spikes(model, x, num_steps, batch_size)
    same = reference if torch.equal(coded, x) else pytorch_output_spikes(model, coded, num_steps, batch_size)
    ref_pred, same_pred = predictions(reference), predictions(same)
    rows = [("PyTorch (fast, fp32)", 100.0 * np.mean(ref_pred == y), 100.0, 0.0,
             100.0 * np.mean(same_pred == ref_pred), 100.0 * np.mean(same != reference), None)]
    # One step per width: each runs the whole test set through the NumPy runtime (minutes on DVS Gesture).
    for name, bundle in progress(bundles, desc="integer networks", unit="width"):
        spikes, saturated = integer_output_spikes(bundle, x, num_steps, batch_size)
        pred = predictions(spikes)
        rows.append((name, 100.0 * np.mean(pred == y), 100.0 * np.mean(pred == ref_pred),
                     100.0 * np.mean(spikes != reference), 100.0 * np.mean(pred == same_pred),
                     100.0 * np.mean(spikes != same), 100.0 * saturated))
    return rows


def format_table(rows, count):
    """A Markdown table of compare_widths rows over `count` test samples."""
    lines = [f"| network ({count} test samples) | accuracy % | agreement % | output spikes differing % "
             "| agreement, same input codes % | output spikes differing, same input codes % "
             "| saturated membrane updates % |", "|---|---:|---:|---:|---:|---:|---:|"]
    for name, acc, agree, differ, agree_same, differ_same, saturated in rows:
        sat = "" if saturated is None else f"{saturated:.3f}"
        lines.append(f"| {name} | {acc:.2f} | {agree:.2f} | {differ:.3f} | {agree_same:.2f} | {differ_same:.3f} "
                     f"| {sat} |")
    return "\n".join(lines)


def width_report(model, cfg, widths, options, first=None, limit=None):
    """The table for several membrane widths; `first` (a Bundle) is used as is for its own width."""
    from qsnn.core.loop import test_steps

    bundles = []
    for width in widths:
        if first is not None and width == first.meta["membrane_bits"]:
            bundle = first
        else:
            bundle = export_model(model, cfg["dataset"], width, options["headroom_bits"], options["beta_shift"])
        bundles.append((f"integer, {width}-bit membrane", bundle))
    x, y = test_inputs(cfg, limit)
    return format_table(compare_widths(model, bundles, x, y, test_steps(cfg)), len(y))


