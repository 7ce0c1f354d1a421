"""Command-line overrides, help and validation for the config dict of a run.py.

Every key of the dict, and every key of qsnn/runs/schema.py that applies to its dataset but that the dict
does not list (it takes the schema default), can be set as `--key value` or `--key=value`; the value
has the key's schema type. `--help` prints each key with its default and the comment beside it in
run.py, else the schema's help. Types, choices and ranges come from the schema.
"""
import ast
import json
import math
import os
import tokenize
from pathlib import Path

from qsnn.errors import UserError, cut, shorten

from qsnn.paths import resolve_path

from qsnn.runs.schema import (CHOICES, EPOCHS_TWINS, LAYER_KEYS, NULLABLE, RESUMABLE_KEYS, SCHEMA,  # noqa: F401
                              complete)  # (re-exported)

FLAGS = {
    "--demo": "run the short offline demo preset (scikit-learn digits) instead of the full experiment",
    "--resume": "continue an interrupted run in the same folder: skip finished trials, resume the last one",
    "--overwrite": "delete the results already in the run folder and start again",
    "--config FILE": "read key values from a JSON file (as written by tune.py) before other overrides",
    "--help": "show this message",
}


def read_key_comments(path):
    """Map each `"key": value,  # comment` line of a Python file to its comment."""
    comments, pending = {}, None
    with open(path, encoding="utf-8") as f:
        tokens = list(tokenize.generate_tokens(f.readline))
    for i, tok in enumerate(tokens):
        if tok.type == tokenize.STRING and i + 1 < len(tokens) and tokens[i + 1].string == ":":
            try:
                pending = (ast.literal_eval(tok.string), tok.start[0])
            except (ValueError, SyntaxError):
                pending = None
        elif tok.type == tokenize.COMMENT and pending and pending[1] == tok.start[0]:
            comments[pending[0]] = tok.string.lstrip("#").strip()
            pending = None
    return comments


def format_help(defaults, comments, prog):
    """The --help text: flags, then every key with its default and its run.py comment (else the schema's help)."""
    lines = [f"usage: python {prog} [--KEY VALUE ...] [--demo] [--resume | --overwrite] [--config FILE]", ""]
    lines += ["flags:"] + [f"  {flag:<16} {text}" for flag, text in FLAGS.items()]
    lines += ["", "config keys (default, then meaning):"]
    width = max(len(k) for k in defaults) + 2
    for key, value in defaults.items():
        text = comments.get(key) or (SCHEMA[key].help if key in SCHEMA else "")
        lines.append(f"  --{key:<{width}} {value!r:<14} {text}")
    return "\n".join(lines)


def coerce(key, text, default):
    """Parse a command-line string for `key` into the type of its default, or raise UserError."""
    if isinstance(default, str) and key not in NULLABLE:
        return text
    if isinstance(text, str):
        lowered = text.strip().lower()
        try:
            value = {"true": True, "false": False, "none": None, "null": None}[lowered]
        except KeyError:
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError):
                value = text
    else:
        value = text
    return check_type(key, value, default)


def value_type(key, default):
    """The type a key's values have: the schema's, else its default's."""
    return SCHEMA[key].type if key in SCHEMA else type(default)


LAYER_EXAMPLES = {"conv_channels": "16,32,64", "kernel_size": "5,3,3", "padding": "0,1,1", "pool": "2,2,1",
                  "num_bits": "8,4,4,4"}  # a per-layer value of each, for messages


def type_text(key, default):
    """The type a key's values have, in words: e.g. 'int or None', 'int or a list of ints (e.g. 5,3,3)'."""
    name = value_type(key, default).__name__
    form = LAYER_KEYS.get(key)
    if form == "list":
        name = f"a list of {name}s, one per conv layer (e.g. {LAYER_EXAMPLES.get(key, '16,32,64')})"
    elif form == "per_layer":
        name = f"{name} or a list of {name}s, one per layer (e.g. {LAYER_EXAMPLES.get(key, '5,3,3')})"
    return name + (" or None" if key in NULLABLE else "")


def check_type(key, value, default):
    """Return value if it has the key's schema type (else the default's; ints promote to floats), else raise UserError.

    A per-layer key (schema LAYER_KEYS) also takes a list (or tuple) of such values, returned as a list; a key
    that is always a list ("list") takes a single value as a list of one.
    """
    wanted = value_type(key, default)
    if value is None and key in NULLABLE:
        return None
    form = LAYER_KEYS.get(key)
    if form and isinstance(value, (list, tuple)):
        values = [_one_value(wanted, v) for v in value]
        if values and all(v is not None for v in values):
            return values
    else:
        one = _one_value(wanted, value)
        if one is not None:
            return [one] if form == "list" else one
    raise UserError(f"--{key} expects {type_text(key, default)}, got {shorten(value)}")


def _one_value(wanted, value):
    """value as the type wanted (an int promoted to float), or None if it is not one."""
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value if type(value) is wanted else None


def split_argv(argv):
    """Split ['--a', '1', '--b=2', '--flag'] into [(name, text or None)] pairs."""
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: use --KEY VALUE (see --help)")
        if "=" in arg:
            name, text = arg[2:].split("=", 1)
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            name, text = arg[2:], argv[i + 1]
            i += 1
        else:
            name, text = arg[2:], None
        pairs.append((name, text))
        i += 1
    return pairs


def parse_args(defaults, argv, demo=None):
    """Apply --demo, --config FILE and --key value overrides to a copy of defaults.

    Keys the run.py dict does not list take the schema default. Returns (cfg, flags) where flags holds
    the booleans demo, resume, overwrite and help.
    """
    defaults = run_py_defaults(defaults, demo)
    cfg = dict(defaults)
    flags = {"demo": False, "resume": False, "overwrite": False, "help": False}
    pairs = split_argv(["--help" if a == "-h" else a for a in argv])
    for name, text in pairs:
        if name in flags:
            if text is not None:
                raise UserError(f"--{name} is a flag and takes no value (got {text!r}); write just --{name}")
            flags[name] = True
    if flags["demo"]:
        if demo is None:
            raise UserError("this run.py has no --demo preset; try python mnist/run.py --demo")
        cfg.update(demo)
    for name, text in pairs:
        if name == "config":
            cfg.update(read_config_file(text, defaults))
    for name, text in pairs:
        if name in flags or name == "config":
            continue
        if name not in defaults:
            raise UserError(f"unknown config key --{cut(name)}; valid keys: {', '.join(defaults)}")
        if text is None and not isinstance(defaults[name], bool):
            raise UserError(f"--{name} needs a value, e.g. --{name} {defaults[name]!r}")
        try:
            cfg[name] = True if text is None else coerce(name, text, defaults[name])
        except UserError as e:
            raise UserError(f"{e}; valid keys: {', '.join(defaults)}") from None
    check_one_period_form(cfg, {name for name, _ in pairs})
    for key in LAYER_KEYS:  # a run.py's tuple or single conv_channels value: a list, as config.json keeps it
        if key in cfg:
            try:
                cfg[key] = check_type(key, cfg[key], defaults[key])
            except UserError:
                pass  # validate names the problem
    return cfg, flags


def check_one_period_form(cfg, given):
    """Refuse a command line that states one period both in iterations and in epochs (set twin)."""
    # Only the command line says which form the user meant: the run.py dict always holds the iteration key.
    for key, twin in EPOCHS_TWINS.items():
        if key in given and twin in given and cfg.get(twin) is not None:
            raise UserError(f"--{key} {cfg[key]!r} and --{twin} {cfg[twin]!r} both set one period; give only one "
                            f"(--{twin}, when set, overrides --{key})")


def run_py_defaults(config, demo=None):
    """A run.py's config completed with the schema defaults of the keys it does not list, for its dataset(s).

    Keys the schema does not declare (a stand-in script's own) are kept with the type of their value.
    """
    datasets = tuple(dict.fromkeys(d for d in (config.get("dataset"), (demo or {}).get("dataset")) if d))
    return complete(config, datasets)


def read_config_file(path, defaults):
    """Key values from a JSON file: either a plain dict or a run folder's config.json."""
    if path is None:
        raise UserError("--config needs a file path, e.g. --config best_config.json")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read --config {path}: {e}") from None
    values = data.get("config", data) if isinstance(data, dict) else None
    if not isinstance(values, dict):
        raise UserError(f"--config {path} must hold a JSON object of config keys")
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise UserError(f"--config {path} has unknown keys {shorten(unknown)}; valid keys: {', '.join(defaults)}")
    return {k: check_type(k, v, defaults[k]) for k, v in values.items()}


def precision_name(num_bits):
    """'fp32' for the full-precision network, else e.g. '4bit', or '8-4-4bit' per layer (run folder names, tables)."""
    if num_bits is None:
        return "fp32"
    if isinstance(num_bits, (list, tuple)):
        return "-".join(map(str, num_bits)) + "bit"
    return f"{num_bits}bit"


def validate(cfg, datasets=None):
    """Check every value before any data is touched; raise one UserError listing each problem on a line.

    `datasets`, if given, are the datasets the calling run.py is made for.
    """
    problems = [f"--{k} {v!r} is not allowed; must be a finite number" for k, v in cfg.items()
                if isinstance(v, float) and not math.isfinite(v)]
    if problems:  # inf and nan would make every range check below misleading
        raise UserError("\n".join(problems))
    if datasets is not None and cfg.get("dataset") not in datasets and cfg.get("dataset") in CHOICES["dataset"]:
        # (an unknown name is reported once, below, with the registered names)
        problems.append(f"--dataset {cfg.get('dataset')!r} is not for this run.py; it runs "
                        f"{' or '.join(datasets)} (use that dataset's own run.py)")
    problems += [problem for key in cfg if key in SCHEMA and (problem := value_problem(key, cfg[key]))]
    if problems:  # the cross-key checks below compare values of the right kinds
        raise UserError("\n".join(problems))
    problems += architecture_problems(cfg)
    floored = ("cosine", "cosine_restarts", "warmup_cosine")
    if cfg.get("scheduler") in floored and 0 < cfg["lr"] < cfg.get("eta_min", 0):
        problems.append(f"--eta_min {cfg['eta_min']!r} is not allowed; it must not exceed lr ({cfg['lr']!r})")
    if "correct_rate" in cfg and cfg["correct_rate"] <= cfg["incorrect_rate"]:
        problems.append(f"--correct_rate {cfg['correct_rate']!r} is not allowed; it must exceed incorrect_rate "
                        f"({cfg['incorrect_rate']!r}), or the loss rewards the wrong class")
    if cfg.get("scheduler") == "cyclic" and cfg["base_lr"] >= cfg["lr"]:
        problems.append(f"--base_lr {cfg['base_lr']!r} is not allowed; the cyclic schedule needs base_lr < lr ({cfg['lr']!r})")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not cfg.get("tensor_data", True):
        problems.append("--tensor_data False is not supported under torchrun; use --tensor_data True")
    if cfg.get("sync_batch_norm") and (cfg["device"] == "cpu" or not cuda_available()):
        problems.append("--sync_batch_norm True needs CUDA devices (PyTorch's SyncBatchNorm); use False on CPU")
    from qsnn.runs.snapshots import check_snapshot_config

    snapshot_problem = check_snapshot_config(cfg) if "scheduler" in cfg else None
    if snapshot_problem:
        problems.append(snapshot_problem)
    device_problem = check_device(cfg["device"])
    if device_problem:
        problems.append(device_problem)
    output_problem = check_writable(resolve_path(cfg["output_dir"]))
    if output_problem:
        problems.append(output_problem)
    if problems:
        raise UserError("\n".join(problems))


def architecture_problems(cfg):
    """Lines saying why the conv layers a config describes cannot be built: per-layer lists of the wrong
    length, or a map that shrinks to nothing (qsnn.core.geometry, the sizes the network itself uses)."""
    from qsnn.core.geometry import config_layers, geometry_problem
    from qsnn.data import registry

    if cfg.get("dataset") not in registry.NAMES:
        return []  # the dataset's own check says why
    dataset = registry.get(cfg["dataset"])
    channels = cfg.get("conv_channels")
    if isinstance(channels, int):
        channels = [channels]
    count = len(channels) if channels is not None else len(dataset.channels)
    where = (f"conv_channels has {count} layers" if channels is not None else f"the network has {count} conv "
             f"layers (conv_channels None: {dataset.name}'s {', '.join(map(str, dataset.channels))})")
    problems = []
    for key in ("kernel_size", "padding", "pool"):
        value = cfg.get(key, SCHEMA[key].default)
        if isinstance(value, (list, tuple)) and len(value) != count:
            problems.append(f"--{key} has {len(value)} values but {where}; give one value or {count}")
    bits = cfg.get("num_bits", SCHEMA["num_bits"].default)
    if isinstance(bits, (list, tuple)) and len(bits) != count + 1:
        problems.append(f"--num_bits has {len(bits)} values but the network has {count + 1} weight layers "
                        f"({count} conv layers, then the head); give one value or {count + 1}")
    if problems:
        return problems
    try:
        input_size, layers = config_layers(dataset, cfg)
    except UserError as e:  # a dataset whose inputs are not square
        return [str(e)]
    problem = geometry_problem(input_size, layers)
    return [f"the network does not fit {dataset.name} inputs: {problem}"] if problem else []


def value_problem(key, value):
    """One line saying why value is not allowed for key (type, choices, range), or None."""
    try:
        value = check_type(key, value, SCHEMA[key].default)
    except UserError as e:
        return str(e)
    if SCHEMA[key].allows(value):
        return None
    if SCHEMA[key].choices:
        return f"--{key} {shorten(value)} is not allowed; choose one of {', '.join(SCHEMA[key].choices)}"
    return f"--{key} {shorten(value)} is not allowed; must be {SCHEMA[key].rule()}"


def cuda_available():
    """True if torch sees a CUDA device (torch is imported only when asked)."""
    import torch

    return torch.cuda.is_available()


def check_device(name):
    """None if the device name is usable here, else a one-line problem."""
    if name in ("auto", "cpu"):
        return None
    if name == "cuda" or name.startswith("cuda:"):
        index = name[5:] or "0"
        if not index.isdigit():
            return f"--device {name!r} is not allowed; use auto, cpu, cuda or cuda:N"
        if not cuda_available():
            return f"--device {name!r} asks for CUDA, but no CUDA device is available here; use --device cpu or auto"
        import torch

        if int(index) >= torch.cuda.device_count():
            return f"--device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here"
        return None
    return f"--device {name!r} is not allowed; use auto, cpu, cuda or cuda:N"


def check_writable(folder):
    """None if results can be written under folder (created if needed), else a one-line problem."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write_test_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        return f"--output_dir {str(folder)!r} is not writable ({e.strerror}); choose another folder"
    return None
