"""An experiment: the run folder, then num_trials seeded trials, with resume and safe stopping."""
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from . import distributed, runlog
from .data import make_loaders
from .errors import UserError
from .memory import keep_freed_memory
from .train import NonFiniteLoss, StopRequested, run_trial

# Keys that may differ when resuming: they change where and how fast, not what is computed.
RESUMABLE_KEYS = {"device", "data_dir", "output_dir", "num_workers", "epochs", "patience",
                  "num_trials", "execution", "time_chunk", "tensor_data", "test_batch_size"}


class Interrupted(UserError):
    """The run stopped on SIGINT/SIGTERM after saving everything; the message says how to resume."""
    exit_code = 130


def resolve_device(name):
    """torch.device for a config's device name; 'auto' is CUDA when available."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@contextmanager
def stop_on_signals():
    """Turn the first SIGINT/SIGTERM into a flag the training loop polls; a second one aborts at once."""
    received = []

    def handler(signum, frame):
        if received:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        received.append(signal.Signals(signum).name)
        print(f"\n{received[0]} received: stopping after this iteration (again to abort now)", file=sys.stderr)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield received
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def prepare_run_folder(cfg, resume, overwrite):
    """Create or reuse the run folder; returns (run_dir, cfg) with the saved config when resuming."""
    run_dir = runlog.run_folder(cfg)
    saved = runlog.read_run_config(run_dir)
    # A config.json alone (e.g. a run that stopped on missing data) holds no results to protect.
    has_results = (run_dir / "status.json").exists() or any(run_dir.glob("acc_*.csv"))
    if resume and overwrite:
        raise UserError("give either --resume or --overwrite, not both")
    if has_results and not (resume or overwrite):
        raise UserError(f"{run_dir} already holds results of this experiment; add --resume to continue it "
                        "or --overwrite to delete them and start again")
    distributed.barrier()  # every rank has checked before rank 0 changes anything
    if distributed.is_main():
        if overwrite and run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    if resume and saved is not None:
        cfg = merge_for_resume(saved["config"], cfg)
    return run_dir, cfg


def merge_for_resume(saved, requested):
    """The saved config, with only RESUMABLE_KEYS taken from the new command line."""
    ignored = [k for k in requested if k not in RESUMABLE_KEYS and saved.get(k) != requested[k]]
    if ignored:
        print("resuming with the saved values of " + ", ".join(f"{k}={saved.get(k)!r}" for k in ignored)
              + " (a checkpoint fixes them)", file=sys.stderr)
    return {**saved, **{k: v for k, v in requested.items() if k in RESUMABLE_KEYS}}


def resume_command():
    """The command line that continues this run."""
    args = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")]
    return " ".join(["python", sys.argv[0], *args, "--resume"])


def run_experiment(cfg, resume=False, overwrite=False):
    """Run every trial of cfg; returns {trial: best score} of the trials that ran to the end."""
    device = distributed.setup(resolve_device(cfg["device"]))
    keep_freed_memory()
    try:
        run_dir, cfg = prepare_run_folder(cfg, resume, overwrite)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if distributed.is_main():
            runlog.write_run_config(run_dir, cfg, device)
            print(f"experiment {runlog.experiment_name(cfg)} on {device} "
                  f"({distributed.world_size()} process(es)): results in {run_dir}")
        distributed.barrier()
        generator = torch.Generator()
        loaders = make_loaders(cfg, device, generator)
        results = {}
        with stop_on_signals() as received:
            for k in range(cfg["num_trials"]):
                results[k] = run_one(cfg, k, loaders, generator, run_dir, device, received, resume)
        if distributed.is_main():
            print_summary(cfg, results, run_dir)
        return results
    finally:
        distributed.teardown()


def run_one(cfg, k, loaders, generator, run_dir, device, received, resume):
    """Run or skip trial k; returns its best score (None if it failed)."""
    status = runlog.read_status(run_dir).get(str(k), {})
    if resume and status.get("state") in ("finished", "failed"):
        print(f"trial {k}: already {status['state']}, skipped")
        return status.get("best_score")
    try:
        state = run_trial(cfg, k, loaders, generator, run_dir, device, lambda: bool(received), resume)
    except StopRequested:
        signal_name = received[0] if received else "a signal"
        raise Interrupted(f"stopped by {signal_name} in trial {k}; every completed epoch is saved in "
                          f"{run_dir}. Resume with: {resume_command()}") from None
    except NonFiniteLoss as e:
        print(f"trial {k} stopped: {e}; its logs and best checkpoint are kept", file=sys.stderr)
        return None
    return state.best_score


def print_summary(cfg, results, run_dir):
    """Best score of each trial, then the best overall."""
    metric = "validation" if cfg["val_split"] > 0 else "test"
    scores = {k: v for k, v in results.items() if v is not None}
    for k, score in results.items():
        print(f"trial {k}: best {metric} accuracy " + ("failed" if score is None else f"{score:.2f}%"))
    if scores:
        print(f"best {metric} accuracy: {max(scores.values()):.2f}% (logs and checkpoints in {Path(run_dir)})")
