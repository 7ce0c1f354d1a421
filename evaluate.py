"""Evaluate a saved QSNN checkpoint on its test set: accuracy, spike rate per layer, SynOps, weight memory.

    python evaluate.py runs/mnist_4bit_cosine/mnist_4bit_cosine_t0.pt          # best model of trial 0
    python evaluate.py runs/mnist_4bit_cosine/last_mnist_4bit_cosine_t0.pt     # state after the last epoch
    python evaluate.py CHECKPOINT --data_dir /data --device cuda --execution reference
    python evaluate.py CHECKPOINT --compute_precision bf16      # spike-fed layers on integer codes (exact sums)

The network, time steps and dataset come from the checkpoint's own config. A checkpoint is read with
torch.load(weights_only=True), so a file received from someone else cannot run code. Everything in it
is checked before use (its config's keys, types and ranges, its weights, the folder it sits in), and a
problem is one `error:` line.
"""
import argparse
import re
import runpy
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run from anywhere without installing

from qsnn.runs.cli import ArgumentParser  # noqa: E402
from qsnn.errors import UserError, shorten  # noqa: E402

REMEDY = "give a <exp>_t<k>.pt or last_<exp>_t<k>.pt file that training wrote"
# The config keys evaluation reads (build_model, make_loaders); the time steps come from the dataset's run.py.
MODEL_KEYS = ("dataset", "num_bits", "beta", "threshold", "slope", "dropout", "batch_norm")
RUN_KEYS = ("execution", "time_chunk", "data_dir", "test_batch_size", "tensor_data", "num_workers")
OVERRIDABLE = ("data_dir", "execution", "test_batch_size", "compute_precision")  # keys the command line can supply
# Older checkpoints predate these (and the neuron keys, NEURON_KEYS); build_model reads their defaults then
# (None; the paper's conv layers; fp32).
OPTIONAL_KEYS = ("state_bits", "conv_channels", "kernel_size", "padding", "pool", "compute_precision")
PLAIN_TYPES = (type(None), bool, int, float, str)  # what training writes into a checkpoint's config
# (and, for the per-layer keys conv_channels, kernel_size, padding, pool and num_bits, lists of them)
DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d{1,4})?")


def integer(text):
    """argparse type: an int, the text cut in the message if it is not one."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {shorten(text)}") from None


def parse(argv):
    """The evaluate.py command line."""
    parser = ArgumentParser(prog="evaluate.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="a <exp>_t<k>.pt or last_<exp>_t<k>.pt file")
    parser.add_argument("--data_dir", help="where the dataset is (default: the checkpoint's config)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    parser.add_argument("--execution", help="fast | reference (default: the checkpoint's)")
    parser.add_argument("--test_batch_size", type=integer, help="default: the checkpoint's")
    parser.add_argument("--compute_precision", help="fp32 | bf16 (default: the checkpoint's)")
    return parser.parse_args(argv)


def check_device_arg(name):
    """Refuse an unusable --device in one line (the name is cut: it comes from the command line)."""
    from qsnn.runs.config import check_device

    if not DEVICE_NAME.fullmatch(name):
        raise UserError(f"--device {shorten(name)} is not allowed; use auto, cpu, cuda or cuda:N")
    problem = check_device(name)
    if problem:
        raise UserError(problem)


def check_checkpoint_path(path):
    """Refuse a path that is not a checkpoint file, saying what to give instead (a folder: one of its files)."""
    try:
        check_is_file(Path(path))
    except OSError as e:  # a name too long for the file system, say
        raise UserError(f"{shorten(str(path))}: {e.strerror}; give a checkpoint such as runs/<exp>/<exp>_t0.pt") \
            from None


def check_is_file(path):
    """check_checkpoint_path's tests, which may raise OSError for a path the file system cannot take."""
    if path.is_dir():
        found = sorted((p.name for p in path.glob("*.pt")), key=lambda name: (name.startswith("last_"), name))
        kind = "a run folder" if (path / "config.json").is_file() else "a folder"
        if not found:
            raise UserError(f"{path} is {kind} without checkpoints (*.pt); give a checkpoint file such as "
                            "runs/<exp>/<exp>_t0.pt")
        more = f" and {len(found) - 5} more" if len(found) > 5 else ""
        raise UserError(f"{path} is {kind}; give one of its checkpoints, e.g. {path / found[0]} "
                        f"(it holds {', '.join(found[:5])}{more})")
    if not path.exists():
        raise UserError(f"{path} does not exist; give a checkpoint such as runs/<exp>/<exp>_t0.pt")
    if not path.is_file():  # a device or a pipe: torch.load could read it forever
        raise UserError(f"{path} is not a regular file; {REMEDY}")


def check_structure(path, checkpoint):
    """Refuse a checkpoint whose "model" is not a state dict or whose "config" is not a dict of plain values."""
    import torch

    model, cfg = checkpoint["model"], checkpoint["config"]
    if not (isinstance(model, dict) and model
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in model.items())):
        what = ("an empty dict" if not model else "a dict of other things") if isinstance(model, dict) \
            else f"a {type(model).__name__}"
        raise UserError(f"{path}: its \"model\" entry is {what}, not a state dict (names to tensors), so it holds "
                        f"no weights to evaluate; {REMEDY}")
    if not isinstance(cfg, dict):
        raise UserError(f"{path}: its \"config\" entry is a {type(cfg).__name__}, not a dict of config keys; {REMEDY}")
    from qsnn.runs.schema import LAYER_KEYS

    for key, value in cfg.items():
        plain = isinstance(value, PLAIN_TYPES) or (key in LAYER_KEYS and isinstance(value, list) and len(value) <= 1000
                                                   and all(isinstance(v, PLAIN_TYPES) for v in value))
        if not isinstance(key, str) or not plain:
            raise UserError(f"{path}: its config's entry {shorten(key)} holds a {type(value).__name__}, "
                            f"not a plain value (number, text, true/false or null); {REMEDY}")


def check_folder(path, checkpoint):
    """Refuse a checkpoint that sits in a run folder whose config.json describes another experiment."""
    from qsnn.runs import runlog

    record = runlog.read_run_config(Path(path).parent)
    runlog.check_checkpoint_matches(path, checkpoint, None if record is None else record["config"])


def run_py_defaults(path, cfg):
    """The config of the checkpoint's dataset's run.py: the reference for its keys and their types."""
    from qsnn.data import registry
    from qsnn.paths import REPO_ROOT

    if "dataset" not in cfg:
        raise UserError(f"{path}: its config lacks dataset, so the network it holds is unknown; {REMEDY}")
    if cfg["dataset"] not in registry.NAMES:
        raise UserError(f"{path}: its config's dataset {shorten(cfg['dataset'])} is not one of "
                        f"{', '.join(registry.NAMES)}; {REMEDY}")
    from qsnn.runs.config import run_py_defaults as completed  # keys the run.py does not list: schema defaults

    return completed(runpy.run_path(str(REPO_ROOT / registry.get(cfg["dataset"]).run_py / "run.py"))["config"])


def evaluation_view(path, cfg, defaults):
    """The keys evaluation reads, every one present: a missing key is named, never filled in."""
    steps = [k for k in ("num_steps", "num_steps_train", "num_steps_test") if k in defaults]
    needed = [*MODEL_KEYS, *steps, *RUN_KEYS]
    missing = [k for k in needed if k not in cfg]
    if missing:
        given = [f"--{k}" for k in missing if k in OVERRIDABLE]
        hint = f" (give {', '.join(given)} on the command line)" if given and len(given) == len(missing) else ""
        raise UserError(f"{path}: its config lacks {', '.join(missing)}, which evaluation needs{hint}; it was not "
                        f"written by this version's training: {REMEDY}")
    from qsnn.core.models import NEURON_KEYS  # the neuron it was trained with (before: always the default)

    return {k: cfg[k] for k in [*needed, *OPTIONAL_KEYS, *NEURON_KEYS] if k in cfg}


def check_value_types(path, view, defaults):
    """Each value has its run.py default's type and, for integers, fits in 64 bits (their text can be huge)."""
    from qsnn.runs.config import CHOICES, check_type, type_text

    for key, value in view.items():
        for number in value if isinstance(value, list) else [value]:  # a per-layer key's list: each value
            if isinstance(number, int) and not isinstance(number, bool) and number.bit_length() > 63:
                what = "holds" if isinstance(value, list) else "is"
                raise UserError(f"{path}: its config's {key} {what} an integer of {number.bit_length()} bits, far out "
                                f"of range; {REMEDY}")
        try:
            view[key] = check_type(key, value, defaults[key])
        except UserError:
            allowed = type_text(key, defaults[key])
            raise UserError(f"{path}: its config's {key} is {shorten(value)}, not {allowed}; {REMEDY}") from None
        if key in CHOICES and view[key] not in CHOICES[key]:
            raise UserError(f"{path}: its config's {key} {shorten(value)} is not allowed; it must be one of "
                            f"{', '.join(CHOICES[key])}")


def check_values(path, view):
    """The project's validation of a config (ranges, finiteness) on the keys evaluation reads, as one line."""
    from qsnn.runs.config import validate

    # validate also probes output_dir for writing; evaluation writes nothing, so it probes the temp folder.
    try:
        validate({**view, "device": "cpu", "output_dir": tempfile.gettempdir()})
    except UserError as e:
        raise UserError(f"{path}: its config is not valid: {'; '.join(str(e).splitlines())}") from None


def check_activations(cfg, device):
    """Refuse, before any data is read, a test batch whose activations cannot fit in the device's memory."""
    from qsnn.runs.memory import activation_bytes, available_bytes

    _, needed = activation_bytes({**cfg, "batch_size": cfg["test_batch_size"]})
    available = available_bytes(device)
    if available is not None and needed > available:
        raise UserError(f"one test batch needs about {needed / 2**30:.1f} GiB of activations but {device} has "
                        f"{available / 2**30:.1f} GiB available; lower --test_batch_size")


def check_overrides(args):
    """Refuse a command-line override that no run could use (before the checkpoint is read)."""
    from qsnn.runs.config import CHOICES

    for key in ("execution", "compute_precision"):
        value = getattr(args, key)
        if value is not None and value not in CHOICES[key]:
            raise UserError(f"--{key} {shorten(value)} is not allowed; choose one of {', '.join(CHOICES[key])}")
    if args.test_batch_size is not None and args.test_batch_size < 1:
        raise UserError(f"--test_batch_size {shorten(args.test_batch_size)} is not allowed; must be >= 1, "
                        "e.g. --test_batch_size 1000")


def test_config(path, checkpoint, args):
    """The checkpoint's config with the evaluation-only overrides, every key checked like a run's."""
    cfg = dict(checkpoint["config"])
    for key in OVERRIDABLE:
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    defaults = run_py_defaults(path, cfg)
    view = evaluation_view(path, cfg, defaults)
    check_value_types(path, view, defaults)
    check_values(path, view)
    # The train loader make_loaders also builds is never used: it batches like the test one.
    return {**view, "batch_size": view["test_batch_size"], "device": args.device, "val_split": 0.0}


def read_checkpoint(path):
    """The checkpoint at path, loaded and checked: a state dict, a config of plain values, the right folder."""
    from qsnn.runs import runlog

    check_checkpoint_path(path)
    checkpoint = runlog.load_checkpoint(path, ("model", "config"), remedy=REMEDY)
    check_structure(path, checkpoint)
    check_folder(path, checkpoint)
    return checkpoint


def evaluate_checkpoint(path, args):
    """(config, accuracy in percent, efficiency figures as in an eff CSV) of a checkpoint on its test set."""
    import torch

    from qsnn.data.loaders import make_loaders
    from qsnn.core.efficiency import EfficiencyMeter
    from qsnn.runs.experiment import resolve_device
    from qsnn.core.models import build_model
    from qsnn.progress import progress
    from qsnn.core.loop import evaluate, test_steps

    check_device_arg(args.device)
    check_overrides(args)
    checkpoint = read_checkpoint(path)
    cfg = test_config(path, checkpoint, args)
    device = resolve_device(cfg["device"])
    check_activations(cfg, device)
    model = build_model(cfg).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError:
        raise UserError(f"{path}: its weights do not fit the network its config describes") from None
    loader = make_loaders(cfg, device, torch.Generator())["test"]
    meter = EfficiencyMeter(model)
    batches = progress(loader, desc="test batches", total=len(loader), unit="batch")
    accuracy = evaluate(model, batches, test_steps(cfg), device, meter)
    return cfg, accuracy, dict(zip(EfficiencyMeter.columns(model)[1:], meter.row()))


def bits_text(num_bits):
    """'4-bit', '32-bit' (float), or per layer '8/4/4-bit' (conv layers, then the head)."""
    if isinstance(num_bits, list):
        return "/".join(str(bits or 32) for bits in num_bits) + "-bit"
    return f"{num_bits or 32}-bit"


def main(argv=None):
    """evaluate.py: prints the checkpoint's figures; returns the exit code (2 for a user mistake)."""
    try:
        args = parse(argv)
        cfg, accuracy, figures = evaluate_checkpoint(args.checkpoint, args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    print(f"{args.checkpoint}: {cfg['dataset']}, {bits_text(cfg['num_bits'])} weights, "
          f"{cfg.get('num_steps_test', cfg.get('num_steps'))} steps")
    print(f"test accuracy: {accuracy:.2f}%")
    for name, value in figures.items():
        if name.startswith("rate_"):
            print(f"spike rate {name[5:]}: {value:.4f} spikes per neuron per step")
    print(f"synaptic operations per sample: {figures['synops']:,.0f} (first layer: "
          f"{figures['input_macs']:,.0f} multiply-accumulates)")
    print(f"weight memory: {figures['weight_kib']:.2f} KiB ({figures['weight_kib_fp32']:.2f} KiB in fp32)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
