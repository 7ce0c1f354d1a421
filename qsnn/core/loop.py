"""The training loop, in one screen each: the network on a batch, the loss as the paper logs it, one epoch
of training and a test pass. Everything about files, checkpoints and resuming is in qsnn.runs.trial.
"""
import math
import random
from functools import lru_cache

import numpy as np
import snntorch.functional as SF
import torch

from qsnn import distributed, progress
from qsnn.core.models import build_model
from qsnn.core.schedules import build_optimizer, build_scheduler


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


def build_training(cfg, device, iterations_per_epoch):
    """Model, optimizer, per-iteration LR scheduler (its epochs turned into iterations) and loss for a config."""
    model = build_model(cfg).to(device)
    optimizer = build_optimizer(model.parameters(), cfg)
    scheduler = build_scheduler(optimizer, cfg, iterations_per_epoch)
    loss_fn = SF.mse_count_loss(correct_rate=cfg["correct_rate"], incorrect_rate=cfg["incorrect_rate"])
    return model, optimizer, scheduler, loss_fn
