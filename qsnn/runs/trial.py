"""One trial of an experiment: seeded, trained epoch by epoch with early stopping, logged, checkpointed
and resumable. `run_experiment` (qsnn.runs.experiment) runs the trials of a config; the loop itself
(train_epoch, evaluate) is qsnn.core.loop.
"""
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from qsnn import distributed, progress
from qsnn.core.efficiency import EfficiencyMeter
from qsnn.core.loop import (NonFiniteLoss, StopRequested, build_training, evaluate, seed_everything, test_steps,
                            train_epoch)
from qsnn.errors import UserError
from qsnn.runs import runlog
from qsnn.runs.snapshots import SnapshotSaver


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
                  runlog.TrialLogs(files, acc_header, EfficiencyMeter.columns(model)), run_dir, snapshots)
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
