"""The config schema, declared once: every key a run.py may hold, with its default, type, allowed values,
help text and role. Everything that treats keys differently derives from it: command-line parsing and
--help (qsnn.runs.config), the keys that may change on --resume, the results table's experiment identity,
tune.py's key sets and the integer export's known keys.

Each run.py keeps its own `config` dict with that dataset's values; a key it does not list takes the
default here (the paper's MNIST values where the datasets differ).
"""
from dataclasses import dataclass

from qsnn.core.neuron_names import NEURONS, RESETS, SURROGATES
from qsnn.core.precision import PRECISIONS
from qsnn.core.schedules import PERIODS
from qsnn.core.schedules import EPOCHS_TWINS as _SCHEDULE_TWINS
from qsnn.data import registry

ROLES = ("network", "training", "schedule", "protocol", "execution", "output", "analysis")
# Roles that say where, how fast or what else to save, never what is computed: free to change on --resume.
RESUMABLE_ROLES = frozenset({"execution", "output", "analysis"})
# Roles a search may vary: what the network computes and how it is trained.
SEARCHABLE_ROLES = frozenset({"network", "training", "schedule"})
# The registry's names, read live (a dataset registered later is a valid choice at once).
STATIC_DATASETS = registry.STATIC_NAMES  # images repeated at every time step
EVENT_DATASETS = registry.EVENT_NAMES  # event-camera frames, with separate train and test lengths
DATASETS = registry.NAMES
SCHEDULERS = ("cosine", "cosine_restarts", "cyclic", "step", "constant", "onecycle", "warmup_cosine")
OPTIMIZERS = ("adam", "adamw", "sgd")
# Identity that config.json records outside "config" (runlog.execution_context), with the value a
# folder written before it was recorded ran with.
CONTEXT_IDENTITY = {"world_size": 1}


@dataclass(frozen=True)
class Key:
    """One config key: its default and type, what values it allows, what it means and what it affects."""

    name: str
    default: object
    type: type
    role: str
    help: str
    nullable: bool = False  # None is allowed besides values of `type`
    choices: tuple = ()
    check: object = None  # callable(value) -> bool for a range, with `allowed` its text
    allowed: str = ""
    schedulers: tuple = ()  # schedule keys: the schedulers that read it (none: every scheduler)
    loader: bool = False  # it changes the batches make_loaders builds
    datasets: tuple = ()  # the datasets it applies to (none: every dataset)
    resumable: bool = None  # None: from the role (RESUMABLE_ROLES)
    identity: bool = None  # None: what is not resumable defines the experiment
    tune_sets: str = ""  # tune.py sets it for every trial itself: what to use instead
    searchable: bool = None  # None: from the role (SEARCHABLE_ROLES) unless tune.py sets it
    in_folder_name: bool = False  # part of the default run-folder name <dataset>_<precision>_<scheduler>
    epochs_of: str = ""  # an epochs twin: the iteration key whose period it states in epochs (and overrides)
    # per-layer values: "per_layer" = one value of `type` for every layer, or a list with one per layer;
    # "list" = a list with one value per conv layer (a single value is a list of one)
    layers: str = ""
    setting_at_default: bool = True  # False: a results-table row leaves it out of its setting at the default

    def __post_init__(self):
        """Fill the derived flags once, so every user reads the same answer."""
        assert self.role in ROLES, self.role
        if self.resumable is None:
            object.__setattr__(self, "resumable", self.role in RESUMABLE_ROLES)
        if self.identity is None:
            object.__setattr__(self, "identity", not self.resumable and self.role not in ("output",))
        if self.searchable is None:
            object.__setattr__(self, "searchable", self.role in SEARCHABLE_ROLES and not self.tune_sets)

    def allows(self, value):
        """True if value passes this key's choices and range (its type is checked separately)."""
        if self.layers and isinstance(value, (list, tuple)):  # each layer's value (None only as a whole)
            return bool(value) and all(v is not None and self.allows(v) for v in value)
        if value is None and self.nullable:
            return self.check is None or self.check(value)
        if self.choices and value not in self.choices:
            return False
        return self.check is None or self.check(value)

    def rule(self):
        """What values are allowed, in words (for messages and --help)."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        return self.allowed


def positive(v):
    """v > 0."""
    return v > 0


def non_negative(v):
    """v >= 0."""
    return v >= 0


def unit(v):
    """0 <= v <= 1."""
    return 0 <= v <= 1


def below_one(v):
    """0 <= v < 1."""
    return 0 <= v < 1


def bit_width(v):
    """None or 1..16."""
    return v is None or 1 <= v <= 16


def off_or_positive(v):
    """None or v > 0."""
    return v is None or v > 0


def open_unit(v):
    """0 < v < 1."""
    return 0 < v < 1


def at_least_one(v):
    """v >= 1."""
    return v >= 1


def _k(name, default, role, help, **kw):
    """A Key whose type is its default's (give type= when the default is None)."""
    return Key(name, default, kw.pop("type", type(default)), role, help, **kw)


_POS = dict(check=positive, allowed="> 0")


def _epochs_twin(of):
    """The epochs form of the period key `of` (qsnn.core.schedules.PERIODS): None = use `of`; set, it overrides `of`."""
    scheduler, what = PERIODS[of]
    return _k(f"{of}_epochs", None, "schedule", f"{scheduler}: {what} in epochs (overrides {of}); None = use {of}",
              type=float, nullable=True, check=off_or_positive, allowed="None (use the iteration key) or > 0",
              schedulers=(scheduler,), epochs_of=of)


KEYS = (
    _k("dataset", "mnist", "network", "the dataset (each run.py is made for its own)", choices=DATASETS,
       loader=True, searchable=False, in_folder_name=True),
    _k("exp_name", "", "output", "run folder name; empty = <dataset>_<fp32|Nbit>_<scheduler>", resumable=False,
       tune_sets="trials are named trial_<number>"),
    _k("output_dir", "runs", "output", "where run folders go (relative: from the repository root; for an installed qsnn, from the current folder)"),
    _k("data_dir", "data", "output", "where datasets are read (relative: as output_dir)", loader=True),
    # network
    _k("num_bits", 4, "network", "weight bit width (1..16), or one per layer: each conv layer's, then the head's "
       "(e.g. 8,4,4); None = full-precision float weights", nullable=True, check=bit_width,
       allowed="None (full precision) or 1..16, one value or one per layer", in_folder_name=True,
       layers="per_layer"),
    # the conv layers (the paper's: two, 5x5 kernels, no padding, 2x2 average pools)
    _k("conv_channels", None, "network", "output channels of each conv layer, e.g. 16,32,64 (three conv layers); "
       "None = the dataset's registry default (the paper's)", type=int, nullable=True, check=off_or_positive,
       allowed="None (the dataset's default) or a list of ints > 0, one per conv layer", layers="list"),
    _k("kernel_size", 5, "network", "conv kernel side, one value for every conv layer or one per layer (e.g. 5,3,3)",
       check=positive, allowed="> 0, one value or one per conv layer", layers="per_layer"),
    _k("padding", 0, "network", "zero padding of each conv's input, one value or one per conv layer",
       check=non_negative, allowed=">= 0, one value or one per conv layer", layers="per_layer"),
    _k("pool", 2, "network", "average-pool size after each conv (1 = no pooling), one value or one per conv layer",
       check=positive, allowed="> 0 (1 = no pooling), one value or one per conv layer", layers="per_layer"),
    _k("num_steps", 100, "network", "time steps per sample; the image is the input current at every step",
       datasets=STATIC_DATASETS, **_POS),
    _k("num_steps_train", 100, "network", "frames per training sample", datasets=EVENT_DATASETS, loader=True,
       **_POS),
    _k("num_steps_test", 600, "network", "frames per test sample", datasets=EVENT_DATASETS, loader=True, **_POS),
    _k("beta", 0.994, "network", "LIF membrane decay per step", check=unit, allowed="within [0, 1]"),
    _k("threshold", 2.915, "network", "LIF firing threshold", **_POS),
    _k("slope", 13.84, "network", "surrogate gradient slope of fast_sigmoid (the paper's) and sigmoid", **_POS),
    _k("dropout", 0.003168, "network", "dropout before the output layer", check=below_one, allowed="within [0, 1)"),
    _k("batch_norm", True, "network", "BatchNorm2d after each conv + pool"),
    _k("state_bits", None, "network", "LIF membrane bit width; None = float membranes", type=int, nullable=True,
       check=bit_width, allowed="None (float membranes) or 1..16"),
    # the spiking neuron (defaults: the paper's snnTorch Leaky); qsnn.core.neurons states the maths
    _k("neuron", "leaky", "network", "leaky (snnTorch Leaky, the paper's) | synaptic (snnTorch Synaptic: a synaptic "
       "current syn_t = alpha syn_{t-1} + I_t feeds the membrane; with state_bits both are quantized and the fast "
       "execution steps it per time step)", choices=NEURONS),
    _k("alpha", 0.9, "network", "synaptic: synaptic current decay per step", check=unit, allowed="within [0, 1]"),
    _k("reset_mechanism", "subtract", "network", "membrane reset after a spike: subtract (the threshold, the "
       "paper's) | zero (to zero) | none (no reset), as in snnTorch", choices=RESETS),
    _k("surrogate", "fast_sigmoid", "network", "surrogate gradient of the spike: fast_sigmoid (slope; the "
       "paper's) | atan (surrogate_alpha) | sigmoid (slope; snnTorch's formula gives NaN gradients where "
       "slope (mem - thr) < -88) | triangular | straight_through (snnTorch's)",
       choices=SURROGATES),
    _k("surrogate_alpha", 2.0, "network", "atan surrogate: its alpha (snnTorch's default 2)", **_POS),
    _k("learn_beta", False, "network", "train the membrane decay beta (clamped to [0, 1], as snnTorch does)"),
    _k("learn_threshold", False, "network", "train the firing threshold"),
    _k("learn_per_channel", False, "network", "learn_beta / learn_threshold: one value per output channel of each "
       "layer (conv: [C, 1, 1], head: one per class); False = one value per layer"),
    # training
    _k("correct_rate", 0.8, "training", "mse_count_loss: target firing rate of the correct class", check=unit,
       allowed="within [0, 1]"),
    _k("incorrect_rate", 0.2, "training", "mse_count_loss: target firing rate of the other classes", check=unit,
       allowed="within [0, 1]"),
    _k("lr", 5.4e-3, "training", "learning rate (the peak of the periodic schedules)", **_POS),
    _k("optimizer", "adam", "training", "adam (the paper's, betas 0.9/0.999) | adamw | sgd (with momentum)",
       choices=OPTIMIZERS),
    _k("weight_decay", 0.0, "training", "weight decay (adamw: decoupled; adam, sgd: L2 in the gradient)",
       check=non_negative, allowed=">= 0"),
    _k("momentum", 0.9, "training", "sgd: momentum", check=below_one, allowed="within [0, 1)"),
    _k("batch_size", 128, "training", "training mini-batch", loader=True, **_POS),
    _k("grad_clip", None, "training", "clip the gradient norm to this value; None = off", type=float,
       nullable=True, check=off_or_positive, allowed="None (off) or > 0"),
    _k("weight_clip", None, "training", "clamp weights to [-w, w] after every step; None = off", type=float,
       nullable=True, check=off_or_positive, allowed="None (off) or > 0"),
    _k("sync_batch_norm", False, "training", "under torchrun: BatchNorm statistics over all ranks (SyncBatchNorm)"),
    _k("compute_precision", "fp32", "training", "fp32 | bf16: the fast execution's spike-fed layers (conv 2 on, the "
       "head) on integer weight codes with exact sums (CPU: oneDNN int8) and their gradients in bf16; the first "
       "layer, BatchNorm and the LIF recurrence stay fp32 (qsnn.core.precision)", choices=PRECISIONS,
       setting_at_default=False),
    # learning-rate schedule
    _k("scheduler", "cosine", "schedule", "learning-rate schedule, stepped every iteration", choices=SCHEDULERS,
       in_folder_name=True),
    _k("t_max", 4690, "schedule", "cosine: iterations from lr down to eta_min", schedulers=("cosine",), **_POS),
    _epochs_twin("t_max"),
    _k("eta_min", 0.0, "schedule", "cosine, cosine_restarts, warmup_cosine: lowest lr",
       schedulers=("cosine", "cosine_restarts", "warmup_cosine"), check=non_negative, allowed=">= 0"),
    _k("t_0", 4690, "schedule", "cosine_restarts: iterations of the first period", schedulers=("cosine_restarts",),
       **_POS),
    _epochs_twin("t_0"),
    _k("t_mult", 1, "schedule", "cosine_restarts: growth factor of each next period",
       schedulers=("cosine_restarts",), check=lambda v: v >= 1, allowed=">= 1"),
    _k("base_lr", 5.4e-4, "schedule", "cyclic: lower bound (the upper bound is lr)", schedulers=("cyclic",),
       **_POS),
    _k("step_size_up", 4690, "schedule", "cyclic: iterations from base_lr up to lr", schedulers=("cyclic",),
       **_POS),
    _epochs_twin("step_size_up"),
    _k("step_size", 4690, "schedule", "step: iterations between lr decays", schedulers=("step",), **_POS),
    _epochs_twin("step_size"),
    _k("gamma", 0.5, "schedule", "step: lr decay factor", schedulers=("step",), check=lambda v: 0 < v <= 1,
       allowed="within (0, 1]"),
    _k("pct_start", 0.3, "schedule", "onecycle: fraction of all iterations spent rising to lr",
       schedulers=("onecycle",), check=open_unit, allowed="within (0, 1)"),
    _k("div_factor", 25.0, "schedule", "onecycle: the start lr is lr / div_factor", schedulers=("onecycle",),
       check=at_least_one, allowed=">= 1"),
    _k("final_div_factor", 1e4, "schedule", "onecycle: the final lr is lr / div_factor / final_div_factor",
       schedulers=("onecycle",), check=at_least_one, allowed=">= 1"),
    _k("warmup_epochs", 1.0, "schedule", "warmup_cosine: epochs of linear warmup from 0 to lr, then one cosine "
       "fall to eta_min", schedulers=("warmup_cosine",), check=non_negative, allowed=">= 0"),
    # protocol: epochs, patience and num_trials only say how long, so a resumed run may extend them
    _k("epochs", 500, "protocol", "maximum epochs per trial", resumable=True, tune_sets="use --epochs", **_POS),
    _k("patience", 100, "protocol", "early stopping: epochs without a better test (or validation) accuracy",
       resumable=True, **_POS),
    _k("num_trials", 3, "protocol", "trials; trial k is seeded with seed + k", resumable=True,
       tune_sets="a trial is one training run", **_POS),
    # seed + k names a trial, not an experiment: folders differing only in seed pool their trials
    _k("seed", 0, "protocol", "base random seed", loader=True, identity=False,
       check=lambda v: 0 <= v < 2**63, allowed="within 0..2**63-1"),
    _k("val_split", 0.0, "protocol", "fraction of training data held out to select the model (0 = paper: test)",
       loader=True, tune_sets="use --val-split", check=below_one, allowed="within [0, 1)"),
    # execution: where and how fast, never what is computed
    _k("device", "auto", "execution", "auto (CUDA if available) | cpu | cuda | cuda:N"),
    _k("execution", "fast", "execution", "fast (layer by layer over time) | reference (per-step loop)",
       choices=("fast", "reference")),
    _k("time_chunk", 0, "execution", "fast: time steps per conv call; 0 = all at once", check=non_negative,
       allowed=">= 0 (0 = all steps at once)"),
    _k("tensor_data", True, "execution", "batch from tensors on the device (fast); False = DataLoader", loader=True),
    _k("num_workers", 0, "execution", "DataLoader worker processes (only with tensor_data False)", loader=True,
       check=non_negative, allowed=">= 0"),
    _k("test_batch_size", 1000, "execution", "evaluation mini-batch (does not change results)", loader=True,
       **_POS),
    # analysis
    _k("snapshots", "off", "analysis", "save the model for landscape.py: off | epoch | extrema",
       choices=("off", "epoch", "extrema")),
)
SCHEMA = {key.name: key for key in KEYS}


def keys_where(test, keys=KEYS):
    """The names of the keys for which test(key) is true, in schema order."""
    return tuple(key.name for key in keys if test(key))


RESUMABLE_KEYS = frozenset(keys_where(lambda k: k.resumable))
IDENTITY_KEYS = frozenset(keys_where(lambda k: k.identity))
NULLABLE = {key.name: key.type for key in KEYS if key.nullable}
LAYER_KEYS = {key.name: key.layers for key in KEYS if key.layers}  # per-layer keys: "per_layer" or "list"
CHOICES = {key.name: key.choices for key in KEYS if key.choices}
SCHEDULE_KEYS = {s: frozenset(keys_where(lambda k, s=s: k.role == "schedule" and s in k.schedulers))
                 for s in SCHEDULERS}
ALL_SCHEDULE_KEYS = frozenset().union(*SCHEDULE_KEYS.values())
LOADER_KEYS = keys_where(lambda k: k.loader)
TUNE_SETS = {key.name: key.tune_sets for key in KEYS if key.tune_sets}
SEARCHABLE_KEYS = frozenset(keys_where(lambda k: k.searchable))
RUN_ONLY_KEYS = frozenset(keys_where(lambda k: k.role in RESUMABLE_ROLES and not k.tune_sets))
FOLDER_NAME_KEYS = keys_where(lambda k: k.in_folder_name)
EPOCHS_TWINS = {key.epochs_of: key.name for key in KEYS if key.epochs_of}  # iteration key -> its epochs twin
assert EPOCHS_TWINS == _SCHEDULE_TWINS, "every period of qsnn.core.schedules.PERIODS needs its _epochs_twin key here"


def keys_for(datasets):
    """The schema's keys that apply to any of these datasets, in schema order."""
    return tuple(key for key in KEYS if not key.datasets or set(key.datasets) & set(datasets))


def complete(config, datasets=None):
    """config with every key that applies to its dataset(s) and is missing taking the schema default.

    The config's own keys (and their order) come first; keys it lacks follow in schema order.
    """
    datasets = datasets or (config.get("dataset", SCHEMA["dataset"].default),)
    return {**config, **{k.name: k.default for k in keys_for(datasets) if k.name not in config}}


def experiment_identity(config, context=None):
    """{key: value} of what defines an experiment's result: identity keys (a scheduler's own keys only for
    it) with old folders' missing keys at their defaults, plus world_size from config.json's top level."""
    scheduler = config.get("scheduler", SCHEMA["scheduler"].default)
    used = SCHEDULE_KEYS.get(scheduler, ALL_SCHEDULE_KEYS)
    dataset = config.get("dataset", SCHEMA["dataset"].default)
    known = {k.name for k in keys_for((dataset,)) if k.identity and (k.name in used or k.name not in ALL_SCHEDULE_KEYS)}
    # a set epochs twin replaces its iteration key, whose value the run then never read
    known -= {of for of, twin in EPOCHS_TWINS.items() if config.get(twin) is not None}
    # keys the schema does not know (a newer or foreign writer's) still tell experiments apart
    unknown = {k: v for k, v in config.items() if k not in SCHEMA}
    identity = {**unknown, **{k: config.get(k, SCHEMA[k].default) for k in known}}
    context = context or {}
    identity.update({k: context.get(k, default) for k, default in CONTEXT_IDENTITY.items()})
    return identity


def trial_seed(config, k):
    """The seed trial k of a run ran with (seed + k): with the identity, what names one trial."""
    seed = config.get("seed", SCHEMA["seed"].default)
    return seed + k if isinstance(seed, int) and not isinstance(seed, bool) else f"{seed}+{k}"
