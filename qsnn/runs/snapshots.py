"""Model snapshots during training, the raw material of the loss-landscape analysis (landscape.py).

With `snapshots` set to "epoch" a trial saves its model at the start and after every epoch; with
"extrema" only at the start and at the schedule's LR troughs and peaks (which may fall inside an
epoch). Each snapshot is a small weights_only checkpoint in `snapshots_<exp>_t<k>/`:

    {"model": state_dict (latent float weights, BatchNorm buffers), "epoch": completed epochs (a
     float inside an epoch), "iteration": optimizer steps so far, "lr": the LR at that point,
     "kind": "start" | "epoch" | "trough" | "peak", "config": the run's config}
"""
import math
import re
from pathlib import Path

from qsnn.runs import runlog
from qsnn.errors import UserError
from qsnn.core.schedules import scheduled

SNAPSHOT_MODES = ("off", "epoch", "extrema")
SNAPSHOT_FILE = re.compile(r"^it(?P<iteration>\d{8})\.pt$")
# Schedulers whose LR has troughs and peaks that "extrema" can find.
PERIODIC_SCHEDULERS = ("cosine", "cosine_restarts", "cyclic")


def snapshot_folder(run_dir, exp, k):
    """Where trial k's snapshots go."""
    return Path(run_dir) / f"snapshots_{exp}_t{k}"


def snapshot_path(folder, iteration):
    """The snapshot file after `iteration` optimizer steps (sorted by name = sorted in time)."""
    return Path(folder) / f"it{iteration:08d}.pt"


def lr_extremum(cfg, iteration, iterations_per_epoch=None):
    """'trough', 'peak' or None: where the schedule's LR is after `iteration` steps.

    Periods stated in epochs (t_max_epochs, ...) need `iterations_per_epoch`, as the scheduler does.

    cosine: the LR reaches eta_min after each odd multiple of t_max and lr after each even one.
    cosine_restarts: the trough is the end of each period (the model just before the jump back up).
    cyclic: troughs at even multiples of step_size_up (base_lr), peaks at odd ones (lr).
    """
    name = cfg["scheduler"]
    if iteration <= 0:
        return None
    cfg = scheduled(cfg, iterations_per_epoch)  # the same iteration counts the scheduler was built with
    if name == "cosine":
        periods, rest = divmod(iteration, cfg["t_max"])
        return None if rest else ("trough" if periods % 2 else "peak")
    if name == "cyclic":
        periods, rest = divmod(iteration, cfg["step_size_up"])
        return None if rest else ("peak" if periods % 2 else "trough")
    if name == "cosine_restarts":
        return "trough" if iteration in restart_iterations(cfg, iteration) else None
    return None


def restart_iterations(cfg, up_to):
    """The iterations (<= up_to) at which CosineAnnealingWarmRestarts jumps back to the peak LR."""
    ends, length, total = set(), cfg["t_0"], 0
    while total + length <= up_to:
        total += length
        ends.add(total)
        length = max(1, int(length * cfg["t_mult"]))
    return ends


def check_snapshot_config(cfg):
    """A one-line problem if the snapshots setting cannot work with this schedule, else None."""
    mode = cfg.get("snapshots", "off")
    if mode == "extrema" and cfg["scheduler"] not in PERIODIC_SCHEDULERS:
        return (f"--snapshots extrema needs a schedule with LR troughs and peaks "
                f"({', '.join(PERIODIC_SCHEDULERS)}); --scheduler {cfg['scheduler']} has none: "
                "use --snapshots epoch")
    return None


class SnapshotSaver:
    """Saves one trial's snapshots as the configured mode asks; only rank 0 writes."""

    def __init__(self, cfg, run_dir, exp, k, iterations_per_epoch, write=True):
        self.cfg, self.mode, self.write = cfg, cfg.get("snapshots", "off"), write
        self.folder = snapshot_folder(run_dir, exp, k)
        self.per_epoch = iterations_per_epoch

    @property
    def enabled(self):
        return self.mode != "off" and self.write

    def start(self, model, iteration, lr):
        """Make the folder, drop snapshots past a resumed point, and save the starting model once."""
        if not self.enabled:
            return
        if self.folder.is_symlink() or (self.folder.exists() and not self.folder.is_dir()):
            raise UserError(f"{self.folder} is not a snapshot folder (a link or a file); move it away "
                            "and resume again")
        self.folder.mkdir(exist_ok=True)
        for path in self.folder.iterdir():
            match = SNAPSHOT_FILE.match(path.name)
            if match and int(match["iteration"]) > iteration and path.is_file() and not path.is_symlink():
                path.unlink()  # written by the epoch a resume discards; that epoch makes it again
        if iteration == 0:
            self.save(model, 0, lr, "start")

    def after_step(self, model, iteration, lr):
        """Called after every optimizer + scheduler step: snapshot at an LR extremum inside an epoch."""
        if self.enabled and self.mode == "extrema" and iteration % self.per_epoch:
            kind = lr_extremum(self.cfg, iteration, self.per_epoch)
            if kind is not None:
                self.save(model, iteration, lr, kind)

    def after_epoch(self, model, iteration, lr):
        """Called once an epoch is saved: every mode but off snapshots an epoch end at an extremum."""
        if not self.enabled:
            return
        kind = lr_extremum(self.cfg, iteration, self.per_epoch)
        if self.mode == "epoch" or kind is not None:
            self.save(model, iteration, lr, kind or "epoch")

    def save(self, model, iteration, lr, kind):
        """Write one snapshot atomically."""
        epoch = iteration / self.per_epoch
        payload = {"model": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
                   "epoch": int(epoch) if float(epoch).is_integer() else epoch, "iteration": iteration,
                   "lr": float(lr), "kind": kind, "config": self.cfg}
        runlog.save_checkpoint(payload, snapshot_path(self.folder, iteration))


def list_snapshots(folder):
    """Snapshot files of a folder in time order, as (iteration, path); plain files only."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        raise UserError(f"{folder} is not a snapshot folder; train with --snapshots epoch to make one")
    found = []
    for path in folder.iterdir():
        match = SNAPSHOT_FILE.match(path.name)
        if match and path.is_file() and not path.is_symlink():
            found.append((int(match["iteration"]), path))
    return sorted(found)


def load_snapshot(path):
    """A snapshot read with weights_only=True and checked for the fields the analysis uses."""
    snap = runlog.load_checkpoint(path, ("model", "epoch", "iteration", "lr", "kind", "config"),
                                  remedy="take it out of the snapshot folder, or train again with --snapshots epoch")
    bad = [k for k, t in (("iteration", int), ("lr", float), ("kind", str), ("config", dict), ("model", dict))
           if not isinstance(snap[k], t)]
    if bad or not isinstance(snap["epoch"], (int, float)) or not math.isfinite(snap["lr"]):
        raise UserError(f"{path} is not a snapshot this program wrote (bad {', '.join(bad) or 'epoch or lr'}); "
                        "take it out of the snapshot folder")
    return snap
