"""Learning-rate schedules, all stepped once per iteration (mini-batch), as in the paper."""
from torch.optim import lr_scheduler


def build_scheduler(optimizer, cfg):
    """The scheduler named by cfg["scheduler"]; the optimizer's lr (cfg["lr"]) is the peak LR.

    cosine: the paper's periodic CosineAnnealingLR: lr falls to eta_min over t_max iterations,
        then rises back to lr over the next t_max (the "boost"), and so on.
    cosine_restarts: CosineAnnealingWarmRestarts: falls over t_0 iterations, then jumps back to
        lr; each period is t_mult times longer than the previous.
    cyclic: triangular CyclicLR between base_lr and lr, step_size_up iterations each way.
    step: multiply the lr by gamma every step_size iterations.
    constant: lr throughout.
    """
    name = cfg["scheduler"]
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg["t_max"], eta_min=cfg["eta_min"])
    if name == "cosine_restarts":
        return lr_scheduler.CosineAnnealingWarmRestarts(
            optimizer, T_0=cfg["t_0"], T_mult=cfg["t_mult"], eta_min=cfg["eta_min"])
    if name == "cyclic":
        # Adam has no momentum to cycle; its betas stay as configured.
        return lr_scheduler.CyclicLR(optimizer, base_lr=cfg["base_lr"], max_lr=cfg["lr"],
                                     step_size_up=cfg["step_size_up"], mode="triangular",
                                     cycle_momentum=False)
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=cfg["step_size"], gamma=cfg["gamma"])
    if name == "constant":
        return lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise ValueError(f"unknown scheduler {name!r}")
