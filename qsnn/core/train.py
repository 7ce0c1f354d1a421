"""Training: one epoch, a test pass, and a trial with early stopping, checkpoints and logs.

`run_experiment` (in qsnn.runs.experiment) runs the trials of a config; this module holds the loop.
"""
import math
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import lru_cache

import numpy as np
import snntorch.functional as SF
import torch

from qsnn import distributed, progress

from qsnn.runs import runlog
from qsnn.core.efficiency import EfficiencyMeter
from qsnn.errors import UserError
from qsnn.core.models import build_model
from qsnn.core.schedules import build_optimizer, build_scheduler
from qsnn.runs.snapshots import SnapshotSaver


CHECK_EVERY = 20  # iterations between checks for NaN/inf and for a stop request shared by all ranks


class NonFiniteLoss(Exception):
    """The training loss became NaN or infinite."""


class StopRequested(Exception):
    """A signal asked the run to stop; the last completed epoch is saved."""


def train_steps(cfg):
    """Time steps per training sample."""
    return cfg.get("num_steps_train", cfg.get("num_steps"))


def test_steps(cfg):
    """Time steps per test sample."""
    return cfg.get("num_steps_test", cfg.get("num_steps"))


def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_rank_stream(seed, epoch):
    """Under torchrun, give each rank its own torch stream (dropout masks), also after a resume."""
    if distributed.world_size() > 1:
        torch.manual_seed(seed + 7919 * distributed.rank() + 104729 * epoch)


def rng_states(generator):
    """Every random state a resumed epoch needs to continue exactly, as plain values and CPU tensors."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": (kind, keys.tolist(), position, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle": generator.get_state()}


def set_rng_states(states, generator):
    """Restore what rng_states saved (the tensors must be CPU ByteTensors, as load_checkpoint gives)."""
    random.setstate(states["python"])
    kind, keys, position, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    generator.set_state(states["shuffle"])


@lru_cache(maxsize=None)
def snntorch_loss_is_per_step():
    """True if this snnTorch's mse_count_loss already divides by the number of steps (newer versions)."""
    spikes = torch.zeros(2, 1, 2)  # T=2, B=1, 2 classes; target 0 wants 2 spikes: MSE = (4 + 0) / 2
    return SF.mse_count_loss(correct_rate=1.0, incorrect_rate=0.0)(spikes, torch.tensor([0])).item() == 1.0


def logged_loss(loss, num_steps):
    """The paper logs mse_count_loss divided by the number of time steps."""
    return loss if snntorch_loss_is_per_step() else loss / num_steps


def run_network(model, x, num_steps, meter=None):
    """Output spikes [T, B, classes] for a batch of static images [B, C, H, W] or events [B, T, C, H, W].

    With an EfficiencyMeter, every layer's spikes of the same forward are counted too.
    """
    if x.dim() == 5:
        x, num_steps = x.transpose(0, 1), None  # [B, T, C, H, W] -> [T, B, C, H, W]
    if meter is None:
        return model(x, num_steps=num_steps)[0]
    layers = model(x, num_steps=num_steps, record=True)
    meter.add(x, layers)
    return layers[-1][0]


@torch.no_grad()
def evaluate(model, loader, num_steps, device, meter=None):
    """Accuracy in percent (snntorch accuracy_rate: class with most output spikes) over a loader.

    `meter` (an EfficiencyMeter), if given, counts the spikes of this same pass.
    """
    model.eval()
    correct, total = 0.0, 0
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if len(y):
            correct += SF.accuracy_rate(run_network(model, x, num_steps, meter), y) * len(y)
            total += len(y)
    correct, total = distributed.sum_over_ranks(correct, total, device=device)
    if meter is not None:
        meter.sum_over_ranks(device)
    return float(100.0 * correct / total)


def clamp_weights(model, bound):
    """Clamp every conv/linear weight to [-bound, bound] (the paper's DVS setting)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.dim() > 1:
                param.clamp_(-bound, bound)


def train_epoch(model, loader, optimizer, scheduler, loss_fn, cfg, device, epoch, should_stop, after_step=None):
    """Train one epoch; returns (per-iteration logged losses, per-iteration learning rates).

    `after_step(steps_in_epoch)`, if given, is called after every optimizer and scheduler step.
    """
    model.train()
    num_steps = train_steps(cfg)
    losses, lrs, checked = [], [], 0
    bar = progress.progress(loader, desc=f"epoch {epoch}", leave=False, disable=not distributed.is_main())
    for x, y in bar:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        lrs.append(optimizer.param_groups[0]["lr"])
        loss = loss_fn(run_network(model, x, num_steps), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg["grad_clip"] is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        if cfg["weight_clip"] is not None:
            clamp_weights(model, cfg["weight_clip"])
        scheduler.step()
        losses.append(logged_loss(loss.detach(), num_steps))
        if after_step is not None:
            after_step(len(losses))
        if len(losses) - checked >= CHECK_EVERY or len(losses) == len(loader):
            # Reading values waits for the device, and under torchrun every rank must take the same
            # decision together: so check every few iterations only, in one collective.
            check_health(model, losses[checked:], epoch, checked, should_stop(), device)
            checked = len(losses)
            bar.set_postfix(loss=f"{losses[-1].item():.4f}", lr=f"{lrs[-1]:.2e}", refresh=False)
        elif distributed.world_size() == 1 and should_stop():
            raise StopRequested
    return mean_over_ranks(torch.stack(losses), device), lrs


def check_health(model, recent_losses, epoch, offset, stop_requested, device):
    """Raise NonFiniteLoss (NaN/inf loss or weights, on any rank) or StopRequested (a signal, on any rank)."""
    problem = first_non_finite(torch.stack(recent_losses).tolist(), epoch, offset)
    if problem is None and not all(torch.isfinite(p).all() for p in model.parameters()):
        problem = f"non-finite weights after epoch {epoch}, iteration {offset + len(recent_losses)} of the epoch"
    failed, stop = distributed.any_rank(problem is not None, stop_requested, device=device)
    if failed:
        raise NonFiniteLoss(problem or f"non-finite loss or weights on another rank in epoch {epoch}")
    if stop:
        raise StopRequested


def first_non_finite(values, epoch, offset):
    """A message naming the first NaN/inf loss's iteration within the epoch, or None."""
    for i, value in enumerate(values):
        if not math.isfinite(value):
            return f"non-finite loss ({value}) at epoch {epoch}, iteration {offset + i + 1} of the epoch"
    return None


def mean_over_ranks(losses, device):
    """Per-iteration losses averaged over ranks (each rank's loss is the mean over its equal slice)."""
    if distributed.world_size() == 1:
        return losses.tolist()
    reduced = distributed.sum_over_ranks(*losses.tolist(), device=device)
    return [value / distributed.world_size() for value in reduced]


@dataclass
class TrialState:
    """Progress of one trial: where its logs end and what early stopping needs."""
    epoch: int = 0
    iteration: int = 0
    best_score: float = -1.0
    best_epoch: int = 0


@dataclass
class Trial:
    """Everything one trial trains and writes: the network, its optimisation, its files and progress."""
    cfg: dict
    k: int
    model: torch.nn.Module
    network: torch.nn.Module  # the model, wrapped for DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: object
    files: dict
    logs: runlog.TrialLogs
    run_dir: object
    snapshots: SnapshotSaver
    state: TrialState = field(default_factory=TrialState)
    write: bool = field(default_factory=distributed.is_main)

    def running(self):
        """True while the epoch budget and the early-stopping patience allow another epoch."""
        s = self.state
        return s.epoch < self.cfg["epochs"] and s.epoch - s.best_epoch < self.cfg["patience"]


def build_training(cfg, device, iterations_per_epoch):
    """Model, optimizer, per-iteration LR scheduler (its epochs turned into iterations) and loss for a config."""
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg, iterations_per_epoch)
    loss_fn = SF.mse_count_loss(correct_rate=cfg["correct_rate"], incorrect_rate=cfg["incorrect_rate"])
    return model, optimizer, scheduler, loss_fn


def start_trial(cfg, k, run_dir, device, generator, use_val, resume, iterations_per_epoch):
    """Seed trial k (seed + k), build its training, and restore its last epoch when resuming."""
    seed_everything(cfg["seed"] + k)
    generator.manual_seed(cfg["seed"] + k)
    model, optimizer, scheduler, loss_fn = build_training(cfg, device, iterations_per_epoch)
    network = distributed.wrap(model, device, cfg.get("sync_batch_norm", False))
    files = runlog.trial_files(run_dir, runlog.experiment_name(cfg), k)
    acc_header = ("epoch", "test_acc", *(("val_acc",) if use_val else ()), "train_loss", "train_time")
    snapshots = SnapshotSaver(cfg, run_dir, runlog.experiment_name(cfg), k, iterations_per_epoch,
                              write=distributed.is_main())
    trial = Trial(cfg, k, model, network, optimizer, scheduler, loss_fn, files,
                  runlog.TrialLogs(files, acc_header), run_dir, snapshots)
    if resume and files["last"].exists():
        trial.state = load_last(trial, generator)
        print(f"trial {k}: resuming after epoch {trial.state.epoch} "
              f"(best {trial.state.best_score:.2f}% at epoch {trial.state.best_epoch})")
    seed_rank_stream(cfg["seed"] + k, trial.state.epoch)
    if trial.write:
        trial.logs.start(trial.state.epoch)
        trial.snapshots.start(model, trial.state.iteration, current_lr(optimizer))
        runlog.update_status(run_dir, k, state="running", epochs_completed=trial.state.epoch)
    return trial


def current_lr(optimizer):
    """The LR the next step will use (the schedule's value at this point)."""
    return optimizer.param_groups[0]["lr"]


def run_trial(cfg, k, loaders, generator, run_dir, device, should_stop, resume=False, on_epoch=None):
    """Train trial k (seeded with seed + k) with early stopping; returns its TrialState.

    `generator` is the one the training loader shuffles with; it is re-seeded for the trial.
    `on_epoch(epoch, score)`, if given, is called after each saved epoch (e.g. to prune a search).
    """
    trial = start_trial(cfg, k, run_dir, device, generator, "val" in loaders, resume, len(loaders["train"]))
    with recording_outcome(trial):
        while trial.running():
            epoch, done = trial.state.epoch + 1, trial.state.iteration
            start = time.perf_counter()

            def after_step(steps, done=done):
                trial.snapshots.after_step(trial.model, done + steps, current_lr(trial.optimizer))

            losses, lrs = train_epoch(trial.network, loaders["train"], trial.optimizer, trial.scheduler,
                                      trial.loss_fn, cfg, device, epoch, should_stop,
                                      after_step if trial.snapshots.enabled else None)
            train_time = time.perf_counter() - start
            distributed.broadcast_buffers(trial.model)  # every rank evaluates the model that is saved
            meter = EfficiencyMeter(trial.model)
            test_acc = evaluate(trial.model, loaders["test"], test_steps(cfg), device, meter)
            val_acc = evaluate(trial.model, loaders["val"], test_steps(cfg), device) if "val" in loaders else None
            save_epoch(trial, losses, lrs, (test_acc, val_acc), meter.row(), train_time, generator)
            if on_epoch is not None:
                on_epoch(epoch, test_acc if val_acc is None else val_acc)
    if trial.write:
        reason = "early_stopping" if trial.state.epoch < cfg["epochs"] else "max_epochs"
        runlog.update_status(run_dir, k, state="finished", reason=reason, epochs_completed=trial.state.epoch,
                             best_score=trial.state.best_score, best_epoch=trial.state.best_epoch)
    return trial.state


@contextmanager
def recording_outcome(trial):
    """Record in status.json why a trial stopped early (signal, non-finite loss, any error), then re-raise."""
    try:
        yield
    except BaseException as e:
        if trial.write:
            # Only a diverged trial is final; after a signal or an error (disk full...) --resume continues it.
            signalled = isinstance(e, (StopRequested, KeyboardInterrupt))
            reason = "stopped by a signal" if signalled else (str(e) or type(e).__name__)
            try:
                runlog.update_status(trial.run_dir, trial.k, reason=reason,
                                     state="failed" if isinstance(e, NonFiniteLoss) else "interrupted")
            except (OSError, UserError):
                pass  # e.g. the disk is full: status.json keeps its last consistent state
        raise


def save_epoch(trial, losses, lrs, accuracies, efficiency_row, train_time, generator):
    """Log a finished epoch, then checkpoint it, then mark it in status.json (rank 0 only).

    If the checkpoints cannot be written (disk full), the epoch's log rows are taken back, so that the
    logs, the resume checkpoint and status.json all still end at the previous epoch.
    """
    (test_acc, val_acc), s, epoch = accuracies, trial.state, trial.state.epoch + 1
    score = test_acc if val_acc is None else val_acc
    improved = score > s.best_score
    row = (test_acc, *(() if val_acc is None else (val_acc,)), float(np.mean(losses)), round(train_time, 3))
    previous = TrialState(**asdict(s))
    s.epoch, s.iteration = epoch, s.iteration + len(losses)
    if improved:
        s.best_score, s.best_epoch = score, epoch
    if not trial.write:
        return
    sizes = trial.logs.append_epoch(epoch, previous.iteration + 1, losses, lrs, row, efficiency_row)
    try:
        if improved:
            runlog.save_checkpoint(best_checkpoint(trial, epoch, test_acc, val_acc), trial.files["best"])
        runlog.save_checkpoint({"model": trial.model.state_dict(), "optimizer": trial.optimizer.state_dict(),
                                "scheduler": trial.scheduler.state_dict(), "state": asdict(s),
                                "rng": rng_states(generator), "config": trial.cfg}, trial.files["last"])
        trial.snapshots.after_epoch(trial.model, s.iteration, current_lr(trial.optimizer))
        runlog.update_status(trial.run_dir, trial.k, state="running", epochs_completed=epoch,
                             best_score=s.best_score, best_epoch=s.best_epoch)
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as RuntimeError
        trial.logs.rollback(sizes)
        trial.state = previous
        raise UserError(f"could not save epoch {epoch} in {trial.run_dir} ({e}); free some space and "
                        "continue with --resume (the files end at the previous epoch)") from None
    progress.write(epoch_summary(trial.cfg, trial.k, epoch, s, row[-2], test_acc, val_acc, lrs[-1], train_time))


def best_checkpoint(trial, epoch, test_acc, val_acc):
    """The best model of a trial: tensors and plain values only, loadable with weights_only=True."""
    return {"model": trial.model.state_dict(), "epoch": epoch, "test_acc": test_acc, "val_acc": val_acc,
            "config": trial.cfg}


def load_last(trial, generator):
    """Restore a trial from its resume checkpoint; returns its TrialState."""
    checkpoint = runlog.load_checkpoint(trial.files["last"], ("model", "optimizer", "scheduler", "state", "rng"))
    try:
        trial.model.load_state_dict(checkpoint["model"])
        trial.optimizer.load_state_dict(checkpoint["optimizer"])
        trial.scheduler.load_state_dict(checkpoint["scheduler"])
        set_rng_states(checkpoint["rng"], generator)
        state = TrialState(**{k: checkpoint["state"][k] for k in asdict(TrialState())})
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise UserError(f"{trial.files['last']} does not fit this experiment's network or format "
                        f"({type(e).__name__}); delete it to redo that trial, or use --overwrite") from None
    return state


def epoch_summary(cfg, k, epoch, state, loss, test_acc, val_acc, lr, seconds):
    """One line per epoch."""
    val = f" | val {val_acc:6.2f}%" if val_acc is not None else ""
    return (f"trial {k} epoch {epoch:>3}/{cfg['epochs']} | loss {loss:.4f} | test {test_acc:6.2f}%{val}"
            f" | best {state.best_score:6.2f}% @ {state.best_epoch} | lr {lr:.2e} | {seconds:.1f} s")
