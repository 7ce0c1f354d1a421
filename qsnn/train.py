"""Training: one epoch, a test pass, and a trial with early stopping, checkpoints and logs.

`run_experiment` (in qsnn.experiment) runs the trials of a config; this module holds the loop.
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
from tqdm.auto import tqdm

from . import distributed, runlog
from .efficiency import COLUMNS as EFFICIENCY_COLUMNS
from .efficiency import EfficiencyMeter
from .models import build_model
from .schedules import build_scheduler


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


def rng_states(generator):
    """Every random state a resumed epoch needs to continue exactly."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "shuffle": generator.get_state()}


def set_rng_states(states, generator):
    """Restore what rng_states saved."""
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
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


def train_epoch(model, loader, optimizer, scheduler, loss_fn, cfg, device, epoch, should_stop):
    """Train one epoch; returns (per-iteration logged losses, per-iteration learning rates)."""
    model.train()
    num_steps = train_steps(cfg)
    losses, lrs, shown = [], [], 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, disable=not distributed.is_main())
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
        if len(losses) - shown >= 20 or len(losses) == len(loader):
            # Reading the loss waits for the device, so do it every few iterations only.
            recent = torch.stack(losses[shown:]).tolist()
            check_finite(recent, epoch, shown)
            shown = len(losses)
            bar.set_postfix(loss=f"{recent[-1]:.4f}", lr=f"{lrs[-1]:.2e}")
        if distributed.any_rank(should_stop(), device):
            raise StopRequested
    return mean_over_ranks(torch.stack(losses), device), lrs


def mean_over_ranks(losses, device):
    """Per-iteration losses averaged over ranks (each rank's loss is the mean over its equal slice)."""
    if distributed.world_size() == 1:
        return losses.tolist()
    reduced = distributed.sum_over_ranks(*losses.tolist(), device=device)
    return [value / distributed.world_size() for value in reduced]


def check_finite(values, epoch, offset):
    """Raise NonFiniteLoss naming the first NaN/inf value's iteration within the epoch."""
    for i, value in enumerate(values):
        if not math.isfinite(value):
            raise NonFiniteLoss(f"non-finite loss ({value}) at epoch {epoch}, iteration {offset + i + 1} of the epoch")


@dataclass
class TrialState:
    """Progress of one trial: what the logs hold and what early stopping needs."""
    epoch: int = 0
    iteration: int = 0
    best_score: float = -1.0
    best_epoch: int = 0
    loss_rows: list = field(default_factory=list)
    lr_rows: list = field(default_factory=list)
    acc_rows: list = field(default_factory=list)
    eff_rows: list = field(default_factory=list)

    def __post_init__(self):
        # A checkpoint from before the eff log: its epochs were not measured (NaN), so the eff
        # CSV keeps one row per acc row.
        unmeasured = [math.nan] * (len(EFFICIENCY_COLUMNS) - 1)
        missing = len(self.acc_rows) - len(self.eff_rows)
        self.eff_rows = [(epoch, *unmeasured) for epoch in range(1, missing + 1)] + self.eff_rows

    def add_epoch(self, losses, lrs, accuracy_row, efficiency_row):
        """Append one finished epoch's rows."""
        self.epoch += 1
        first = self.iteration + 1
        self.loss_rows += [(self.epoch, first + i, v) for i, v in enumerate(losses)]
        self.lr_rows += [(self.epoch, first + i, v) for i, v in enumerate(lrs)]
        self.iteration += len(losses)
        self.acc_rows.append((self.epoch, *accuracy_row))
        self.eff_rows.append((self.epoch, *efficiency_row))

    def write_logs(self, files, acc_header):
        """Rewrite the four CSV logs (atomically)."""
        runlog.write_csv(files["loss"], ("epoch", "iteration", "loss"), self.loss_rows)
        runlog.write_csv(files["lr"], ("epoch", "iteration", "lr"), self.lr_rows)
        runlog.write_csv(files["acc"], acc_header, self.acc_rows)
        runlog.write_csv(files["eff"], EFFICIENCY_COLUMNS, self.eff_rows)


def build_training(cfg, device):
    """Model, Adam optimizer, per-iteration LR scheduler and loss for a config."""
    model = build_model(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], betas=(0.9, 0.999))
    scheduler = build_scheduler(optimizer, cfg)
    loss_fn = SF.mse_count_loss(correct_rate=cfg["correct_rate"], incorrect_rate=cfg["incorrect_rate"])
    return model, optimizer, scheduler, loss_fn


def run_trial(cfg, k, loaders, generator, run_dir, device, should_stop, resume=False, on_epoch=None):
    """Train trial k (seeded with seed + k) with early stopping; returns its TrialState.

    `generator` is the one the training loader shuffles with; it is re-seeded for the trial.
    `on_epoch(epoch, score)`, if given, is called after each saved epoch (e.g. to prune a search).
    """
    exp = runlog.experiment_name(cfg)
    files = runlog.trial_files(run_dir, exp, k)
    seed_everything(cfg["seed"] + k)
    generator.manual_seed(cfg["seed"] + k)
    model, optimizer, scheduler, loss_fn = build_training(cfg, device)
    network = distributed.wrap(model, device, cfg.get("sync_batch_norm", False))
    if distributed.world_size() > 1:
        torch.manual_seed(cfg["seed"] + k + 7919 * distributed.rank())  # own dropout masks per rank
    state = TrialState()
    if resume and files["last"].exists():
        state = load_last(files["last"], model, optimizer, scheduler, generator, device)
        print(f"trial {k}: resuming after epoch {state.epoch} (best {state.best_score:.2f}% at epoch {state.best_epoch})")
    use_val = "val" in loaders
    acc_header = ("epoch", "test_acc", *(("val_acc",) if use_val else ()), "train_loss", "train_time")
    write = distributed.is_main()
    if write:
        runlog.update_status(run_dir, k, state="running", epochs_completed=state.epoch)
    with recording_outcome(run_dir, k, write):
        while state.epoch < cfg["epochs"] and state.epoch - state.best_epoch < cfg["patience"]:
            epoch = state.epoch + 1
            start = time.perf_counter()
            losses, lrs = train_epoch(network, loaders["train"], optimizer, scheduler, loss_fn, cfg, device,
                                      epoch, should_stop)
            train_time = time.perf_counter() - start
            meter = EfficiencyMeter(model)
            test_acc = evaluate(model, loaders["test"], test_steps(cfg), device, meter)
            val_acc = evaluate(model, loaders["val"], test_steps(cfg), device) if use_val else None
            score = val_acc if use_val else test_acc
            row = (test_acc, *((val_acc,) if use_val else ()), float(np.mean(losses)), round(train_time, 3))
            state.add_epoch(losses, lrs, row, meter.row())
            improved = score > state.best_score
            if improved:
                state.best_score, state.best_epoch = score, epoch
            if write:
                if improved:
                    runlog.save_checkpoint({"model": model.state_dict(), "epoch": epoch, "test_acc": test_acc,
                                            "val_acc": val_acc, "config": cfg}, files["best"])
                save_epoch(state, files, acc_header, model, optimizer, scheduler, generator)
                runlog.update_status(run_dir, k, state="running", epochs_completed=epoch,
                                     best_score=state.best_score, best_epoch=state.best_epoch)
                tqdm.write(epoch_summary(cfg, k, epoch, state, np.mean(losses), test_acc, val_acc, lrs[-1],
                                         train_time))
            if on_epoch is not None:
                on_epoch(epoch, score)
    if write:
        reason = "early_stopping" if state.epoch < cfg["epochs"] else "max_epochs"
        runlog.update_status(run_dir, k, state="finished", reason=reason, epochs_completed=state.epoch,
                             best_score=state.best_score, best_epoch=state.best_epoch)
    return state


@contextmanager
def recording_outcome(run_dir, k, write):
    """Record in status.json why trial k stopped early (signal or non-finite loss), then re-raise."""
    try:
        yield
    except StopRequested:
        if write:
            runlog.update_status(run_dir, k, state="interrupted", reason="stopped by a signal")
        raise
    except NonFiniteLoss as e:
        if write:
            runlog.update_status(run_dir, k, state="failed", reason=str(e))
        raise


def save_epoch(state, files, acc_header, model, optimizer, scheduler, generator):
    """Rewrite the logs, then the resume checkpoint (logs first: a crash between keeps both usable)."""
    state.write_logs(files, acc_header)
    runlog.save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "state": asdict(state),
                            "rng": rng_states(generator)}, files["last"])


def load_last(path, model, optimizer, scheduler, generator, device):
    """Restore a trial from its resume checkpoint; returns its TrialState."""
    checkpoint = torch.load(path, map_location=device, weights_only=False)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    set_rng_states(checkpoint["rng"], generator)
    return TrialState(**checkpoint["state"])


def epoch_summary(cfg, k, epoch, state, loss, test_acc, val_acc, lr, seconds):
    """One line per epoch."""
    val = f" | val {val_acc:6.2f}%" if val_acc is not None else ""
    return (f"trial {k} epoch {epoch:>3}/{cfg['epochs']} | loss {loss:.4f} | test {test_acc:6.2f}%{val}"
            f" | best {state.best_score:6.2f}% @ {state.best_epoch} | lr {lr:.2e} | {seconds:.1f} s")
