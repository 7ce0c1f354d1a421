"""Learning-rate schedules and optimisers; schedules are stepped once per iteration (mini-batch), as in the paper.

A schedule's periods are stated in iterations (t_max, t_0, step_size_up, step_size: the paper's values)
or in epochs by their twins (t_max_epochs, ...), which override them when set. `resolve_schedule` turns
a config into the iteration counts a trial uses, from the iterations per epoch its training loader
makes (which val_split, batch_size and world size decide), so that both the scheduler and the
snapshots' LR extrema read the same counts.
"""
import math

import torch
from torch.optim import lr_scheduler

from qsnn.errors import UserError

# The schedules' periods counted in iterations: key -> (its scheduler, what it times). Each has an epochs
# twin `<key>_epochs` (declared in the schema from this table) that states it in epochs and overrides it.
PERIODS = {"t_max": ("cosine", "the fall from lr to eta_min"),
           "t_0": ("cosine_restarts", "the first period"),
           "step_size_up": ("cyclic", "the rise from base_lr to lr"),
           "step_size": ("step", "the time between lr decays")}
EPOCHS_TWINS = {key: f"{key}_epochs" for key in PERIODS}  # iteration key -> its epochs twin


def epochs_to_iterations(key, epochs, iterations_per_epoch):
    """round(epochs * iterations_per_epoch), refused below one iteration."""
    iterations = round(epochs * iterations_per_epoch)
    if iterations < 1:
        raise UserError(f"--{key} {epochs!r} is under one iteration at {iterations_per_epoch} iterations per "
                        "epoch; choose a longer period")
    return iterations


def resolve_schedule(cfg, iterations_per_epoch=None, epochs=None):
    """The iteration counts a trial's schedule uses: each period (an epochs twin, when set, overrides its
    iteration key), `warmup` (warmup_epochs), `total` (epochs * iterations_per_epoch) and `per_epoch`.

    `epochs` defaults to cfg["epochs"]; without iterations_per_epoch only iteration keys can be used.
    """
    epochs = cfg.get("epochs") if epochs is None else epochs
    counts = {key: cfg[key] for key in EPOCHS_TWINS if key in cfg}
    for key, twin in EPOCHS_TWINS.items():
        if cfg.get(twin) is not None:
            if iterations_per_epoch is None:
                raise ValueError(f"{twin} needs the iterations per epoch")
            counts[key] = epochs_to_iterations(twin, cfg[twin], iterations_per_epoch)
    known = iterations_per_epoch is not None
    counts["per_epoch"] = iterations_per_epoch
    counts["total"] = epochs * iterations_per_epoch if known and epochs is not None else None
    counts["warmup"] = round(cfg.get("warmup_epochs", 0.0) * iterations_per_epoch) if known else None
    return counts


def scheduled(cfg, iterations_per_epoch=None, epochs=None):
    """cfg with its periods in resolved iterations, plus warmup, total and per_epoch."""
    return {**cfg, **resolve_schedule(cfg, iterations_per_epoch, epochs)}


class OneCycle:
    """LR factor of torch's OneCycleLR (cosine phases, two of them), held at the final LR after `total`.

    A callable object, not a closure: LambdaLR saves its attributes in the checkpoint, so a resumed trial
    keeps the cycle it started with even when --epochs is extended.
    """

    def __init__(self, total, pct_start, div_factor, final_div_factor):
        self.peak_step = float(pct_start * total) - 1  # OneCycleLR's end of the rise
        self.last_step = total - 1
        self.start, self.end = 1 / div_factor, 1 / (div_factor * final_div_factor)

    def __call__(self, step):
        """The factor of lr after `step` scheduler steps."""
        if step <= self.peak_step:
            return cosine_between(self.start, 1.0, step / self.peak_step)
        return cosine_between(1.0, self.end, min(1.0, (step - self.peak_step) / (self.last_step - self.peak_step)))


class WarmupCosine:
    """LR factor of a linear warmup from 0 to 1 over `warmup` steps, then one cosine fall to `floor` at
    `total`, held there after (a callable object for the same reason as OneCycle)."""

    def __init__(self, warmup, total, floor):
        self.warmup, self.total, self.floor = warmup, total, floor

    def __call__(self, step):
        """The factor of lr after `step` scheduler steps."""
        if step < self.warmup:
            return step / self.warmup
        return cosine_between(1.0, self.floor, min(1.0, (step - self.warmup) / (self.total - self.warmup)))


def cosine_between(start, end, fraction):
    """Half a cosine from start (fraction 0) to end (fraction 1)."""
    return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))


def run_length(name, counts):
    """The trial's total iterations, which a whole-run schedule needs."""
    if counts["total"] is None:
        raise ValueError(f"{name} needs the iterations per epoch and the epochs")
    return counts["total"]


def check_warmup(total, per_epoch, warmup):
    """Refuse a warmup that leaves the cosine fall no iterations."""
    if warmup >= total:
        raise UserError(f"--warmup_epochs: the warmup takes {warmup} of the run's {total} iterations "
                        f"({per_epoch} per epoch), leaving none to fall; train more epochs or shorten it")


def build_scheduler(optimizer, cfg, iterations_per_epoch=None):
    """The scheduler named by cfg["scheduler"]; the optimizer's lr (cfg["lr"]) is the peak LR.

    cosine: the paper's periodic CosineAnnealingLR: lr falls to eta_min over t_max iterations,
        then rises back to lr over the next t_max (the "boost"), and so on.
    cosine_restarts: CosineAnnealingWarmRestarts: falls over t_0 iterations, then jumps back to
        lr; each period is t_mult times longer than the previous.
    cyclic: triangular CyclicLR between base_lr and lr, step_size_up iterations each way.
    step: multiply the lr by gamma every step_size iterations.
    constant: lr throughout.
    onecycle: OneCycleLR's shape over all epochs: up from lr / div_factor to lr over pct_start of the
        iterations, then down to lr / div_factor / final_div_factor.
    warmup_cosine: linear from 0 to lr over warmup_epochs, then one cosine fall to eta_min at the end.
    Periods are in iterations; resolve_schedule turns their epochs twins into iterations.
    """
    name, s = cfg["scheduler"], scheduled(cfg, iterations_per_epoch)
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=s["t_max"], eta_min=s["eta_min"])
    if name == "cosine_restarts":
        return lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=s["t_0"], T_mult=s["t_mult"], eta_min=s["eta_min"])
    if name == "cyclic":
        # Adam has no momentum to cycle, and SGD's stays as configured: only the LR cycles.
        return lr_scheduler.CyclicLR(optimizer, base_lr=s["base_lr"], max_lr=s["lr"],
                                     step_size_up=s["step_size_up"], mode="triangular",
                                     cycle_momentum=False)
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=s["step_size"], gamma=s["gamma"])
    if name == "constant":
        return lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if name == "onecycle":
        total = run_length(name, s)
        # OneCycleLR's rise ends at step pct_start * total - 1, which must come after step 0 (its fall,
        # to step total - 1, is then never empty since pct_start < 1).
        if s["pct_start"] * total <= 1:
            raise UserError(f"--scheduler onecycle: pct_start {s['pct_start']!r} of the run's {total} iterations "
                            f"({s['per_epoch']} per epoch) leaves no rise; train more epochs or raise pct_start")
        return lr_scheduler.LambdaLR(optimizer, OneCycle(total, s["pct_start"], s["div_factor"],
                                                         s["final_div_factor"]))
    if name == "warmup_cosine":
        total = run_length(name, s)
        check_warmup(total, s["per_epoch"], s["warmup"])
        return lr_scheduler.LambdaLR(optimizer, WarmupCosine(s["warmup"], total, s["eta_min"] / s["lr"]))
    raise ValueError(f"unknown scheduler {name!r}")


def build_optimizer(parameters, cfg):
    """The optimizer named by cfg["optimizer"] (Adam when absent: what every run before the key used)."""
    name, lr, decay = cfg.get("optimizer", "adam"), cfg["lr"], cfg.get("weight_decay", 0.0)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, betas=(0.9, 0.999), weight_decay=decay)
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, betas=(0.9, 0.999), weight_decay=decay)
    if name == "sgd":
        return torch.optim.SGD(parameters, lr=lr, momentum=cfg.get("momentum", 0.9), weight_decay=decay)
    raise ValueError(f"unknown optimizer {name!r}")
