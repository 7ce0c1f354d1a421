"""A sweep's grid file (JSON) read, checked and expanded into its cells, one run.py run each, in priority order.

A grid file names a run.py, fixed overrides, axes of named variants and the run folders' name pattern:

    {"run": "fashion_mnist/run.py",
     "fixed": {"output_dir": "results/minima", "epochs": 18},
     "axes": {"seed": [0, 1, 2],
              "precision": {"4bit": {"num_bits": 4}, "fp32": {"num_bits": null}}},
     "name": "fashion_mnist_{precision}_s{seed}"}

Each variant is a dict of run.py keys; a list is short for variants of the run.py key named like the axis. A
cell (one variant of every axis) is one run, `python RUN.py --exp_name NAME <overrides> --resume`. Cells go in
priority order, the product of the axes with the first axis slowest: every cell of seed 0 comes before any of
seed 1. Every cell's config is checked here as run.py would check it, so a mistake is found before any training.
"""
import itertools
import json
import runpy
import shlex
import string
from dataclasses import dataclass
from pathlib import Path

from qsnn.runs import runlog
from qsnn.paths import path_base, resolve_path
from qsnn.runs.config import parse_args, validate
from qsnn.errors import UserError, shorten

GRID_KEYS = ("run", "fixed", "axes", "name")
REQUIRED_KEYS = ("run", "axes", "name")
SET_BY_SWEEP = {"exp_name": "the name pattern sets it"}
NOT_PER_CELL = {"output_dir": "all cells share one output_dir: put it in fixed"}


@dataclass(frozen=True)
class Cell:
    """One run of the grid: its place in the priority order, folder name, variants, arguments and config."""
    position: int
    name: str
    variants: dict
    argv: tuple
    cfg: dict

    @property
    def run_dir(self):
        """The cell's run folder."""
        return runlog.run_folder(self.cfg)


@dataclass(frozen=True)
class Grid:
    """A grid file's cells in priority order and the run.py that trains them."""
    path: Path
    run: str
    run_py: Path
    cells: tuple

    def command(self, cell):
        """The cell's command line as a person would type it."""
        return "python " + shlex.join([self.run, *cell.argv])


def read_grid_file(path):
    """The JSON object in a grid file; unreadable, not JSON or a key given twice is one UserError line."""
    def refuse_repeats(pairs):
        keys = [key for key, _ in pairs]
        repeated = next((key for key in keys if keys.count(key) > 1), None)
        if repeated is not None:  # json.loads would keep the last one silently
            raise UserError(f"grid {path}: key {repeated!r} is given twice")
        return dict(pairs)

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"), object_pairs_hook=refuse_repeats)
    except OSError as e:
        raise UserError(f"cannot read grid {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"grid {path} is not JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except ValueError as e:  # not UTF-8 text
        raise UserError(f"grid {path} is not JSON text ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise UserError(f"grid {path} must hold a JSON object with the keys {', '.join(GRID_KEYS)}")
    return data


def check_grid_keys(path, data):
    """Refuse a grid that lacks run, axes or name, or holds a key the sweep does not know."""
    missing = [key for key in REQUIRED_KEYS if key not in data]
    unknown = sorted(set(data) - set(GRID_KEYS))
    if missing or unknown:
        what = (f"lacks {', '.join(missing)}" if missing else "") + \
               ("; " if missing and unknown else "") + (f"has unknown keys {', '.join(unknown)}" if unknown else "")
        raise UserError(f"grid {path} {what}; a grid holds run, fixed (optional), axes and name "
                        "(see python sweep.py --help)")
    for key, kind in (("run", str), ("fixed", dict), ("axes", dict), ("name", str)):
        if key in data and not isinstance(data[key], kind):
            raise UserError(f"grid {path}: {key} must be a JSON {'string' if kind is str else 'object'}")


def load_run_py(path, run):
    """(run.py's path, its config dict, the datasets it runs), as its own command line would check them."""
    run_py = resolve_path(run)
    if not run_py.is_file():
        raise UserError(f"grid {path}: run {run!r} is not a file (relative paths are from {path_base()})")
    try:
        namespace = runpy.run_path(str(run_py))
    except Exception as e:  # a broken run.py: its own error, in one line
        raise UserError(f"grid {path}: cannot load {run}: {type(e).__name__}: {e}") from None
    config, demo = namespace.get("config"), namespace.get("demo")
    if not isinstance(config, dict):
        raise UserError(f"grid {path}: {run} has no config dict; name a run.py such as mnist/run.py")
    datasets = tuple(dict.fromkeys([config["dataset"], *([demo["dataset"]] if isinstance(demo, dict) else [])]))
    return run_py, config, datasets


def check_run_keys(path, where, values, defaults, run):
    """values: a dict of run.py keys with plain values (number, text, true/false, null); returns a copy."""
    if not isinstance(values, dict):
        raise UserError(f"grid {path}: {where} must be an object of run.py keys, e.g. {{\"epochs\": 18}}")
    for key, value in values.items():
        if key not in defaults:
            raise UserError(f"grid {path}: {where} sets {key!r}, which is not a key of {run}; "
                            f"valid keys: {', '.join(defaults)}")
        if key in SET_BY_SWEEP:
            raise UserError(f"grid {path}: {where} sets {key}: {SET_BY_SWEEP[key]}")
        if isinstance(value, (list, dict)):
            raise UserError(f"grid {path}: {where} sets {key} to {json.dumps(value)}; "
                            "a value is a number, text, true/false or null")
    return dict(values)


def axis_variants(path, axis, spec, defaults, run):
    """{variant name: {run.py key: value}} of one axis; a list is short for values of the key named like the axis."""
    if isinstance(spec, list):
        if axis not in defaults:
            raise UserError(f"grid {path}: axis {axis!r} is a list, which stands for values of the run.py key "
                            f"{axis!r}, and {run} has no such key; write {{\"VARIANT\": {{\"KEY\": VALUE}}}}")
        names = [str(value) for value in spec]  # as run.py's command line prints them: 0, None, True
        if len(set(names)) < len(names):
            raise UserError(f"grid {path}: axis {axis!r} lists a value twice")
        spec = dict(zip(names, ({axis: value} for value in spec)))
    if not isinstance(spec, dict) or not spec:
        raise UserError(f"grid {path}: axis {axis!r} must be a non-empty list of values or object of variants")
    return {name: check_run_keys(path, f"variant {name!r} of axis {axis!r}", keys, defaults, run)
            for name, keys in spec.items()}


def check_keys_set_once(path, fixed, axes):
    """Refuse a run.py key set by fixed and an axis, or by two axes: which value wins would be a guess."""
    setters = {key: ["fixed"] for key in fixed}
    for axis, variants in axes.items():
        for key in dict.fromkeys(k for keys in variants.values() for k in keys):
            if key in NOT_PER_CELL:
                raise UserError(f"grid {path}: axis {axis!r} sets {key}; {NOT_PER_CELL[key]}")
            setters.setdefault(key, []).append(f"axis {axis!r}")
    twice = next(((key, where) for key, where in setters.items() if len(where) > 1), None)
    if twice:
        raise UserError(f"grid {path}: {twice[0]} is set by both {' and '.join(twice[1])}; set it in one place")


def check_pattern(path, pattern, axes):
    """Refuse a name pattern that is not '{axis}' fields of known axes, or that leaves out a varying axis."""
    try:
        fields = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(pattern)
                  if name is not None]
    except ValueError as e:
        raise UserError(f"grid {path}: name {pattern!r} is not a valid pattern ({e}); "
                        "write axes as {axis}, a literal brace as {{ or }}") from None
    for name, spec, conversion in fields:
        if name not in axes:
            raise UserError(f"grid {path}: name {pattern!r} names {{{name}}}, which is not an axis; "
                            f"axes: {', '.join(axes)}")
        if spec or conversion:
            raise UserError(f"grid {path}: name {pattern!r}: write {{{name}}} plainly (no ! or : parts)")
    left_out = [axis for axis, variants in axes.items() if len(variants) > 1 and axis not in {f[0] for f in fields}]
    if left_out:
        raise UserError(f"grid {path}: name {pattern!r} leaves out axis {left_out[0]!r}, so its cells would share "
                        "run folders; put {" + left_out[0] + "} in it")


def make_cell(path, position, combination, fixed, pattern, defaults, datasets):
    """The cell of one (axis, variant name, keys) combination, its config checked as run.py checks it."""
    variants = {axis: name for axis, name, _ in combination}
    name = pattern.format(**variants)
    overrides = dict(fixed)
    for _, _, keys in combination:
        overrides.update(keys)
    argv = ("--exp_name", name, *[item for key, value in overrides.items() for item in (f"--{key}", str(value))],
            "--resume")
    try:
        cfg, _ = parse_args(defaults, list(argv))
        runlog.run_folder(cfg)  # run.py's rules for a folder name: plain, not too long
        validate(cfg, datasets=datasets)
    except UserError as e:
        where = f"grid {path}: cell {shorten(name)} (name {pattern!r})"
        raise UserError("\n".join(f"{where}: {line}" for line in str(e).splitlines())) from None
    return Cell(position, name, variants, argv, cfg)


def load_grid(path, data_dir=None, output_dir=None):
    """The grid file's cells in priority order (first axis slowest), each config checked as run.py would."""
    path = Path(path)
    data = read_grid_file(path)
    check_grid_keys(path, data)
    run_py, defaults, datasets = load_run_py(path, data["run"])
    fixed = check_run_keys(path, "fixed", data.get("fixed", {}), defaults, data["run"])
    for key, value in (("output_dir", output_dir), ("data_dir", data_dir)):
        if value is not None:  # where, not what: the command line may move them
            fixed[key] = value
    if not data["axes"]:
        raise UserError(f"grid {path}: axes is empty; give at least one axis, e.g. \"seed\": [0, 1, 2]")
    axes = {axis: axis_variants(path, axis, spec, defaults, data["run"]) for axis, spec in data["axes"].items()}
    check_keys_set_once(path, fixed, axes)
    check_pattern(path, data["name"], axes)
    choices = [[(axis, name, keys) for name, keys in variants.items()] for axis, variants in axes.items()]
    cells = tuple(make_cell(path, position, combination, fixed, data["name"], defaults, datasets)
                  for position, combination in enumerate(itertools.product(*choices), 1))
    seen = {}
    for cell in cells:
        if cell.name in seen:
            raise UserError(f"grid {path}: cells {seen[cell.name]} and {cell.variants} both get run folder "
                            f"{cell.name}; change the name pattern or the variant names")
        seen[cell.name] = cell.variants
    return Grid(path, data["run"], run_py, cells)


def default_storage(grid):
    """sqlite:///<output_dir>.sweep.db: a SQLite file beside the cells' output_dir."""
    output_dir = resolve_path(grid.cells[0].cfg["output_dir"])
    return f"sqlite:///{output_dir.parent / (output_dir.name + '.sweep.db')}"
