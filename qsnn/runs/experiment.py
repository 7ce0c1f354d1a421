"""An experiment: the run folder, then num_trials seeded trials, with resume and safe stopping."""
import re
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from qsnn import distributed

from qsnn.runs import runlog
from qsnn.runs.config import RESUMABLE_KEYS, check_type, check_writable, validate
from qsnn.data.loaders import make_loaders
from qsnn.errors import UserError, shorten
from qsnn.runs.schema import SCHEMA, complete
from qsnn.runs.memory import check_memory, keep_freed_memory
from qsnn.core.loop import NonFiniteLoss, StopRequested
from qsnn.runs.trial import run_trial



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
    """Lock, then create or reuse the run folder; returns (run_dir, cfg, lock) with the saved config on resume.

    Only rank 0 touches the folder; the other ranks wait and then read what it decided.
    """
    if resume and overwrite:
        raise UserError("give either --resume or --overwrite, not both")
    run_dir, lock, error = runlog.run_folder(cfg), None, None
    if distributed.is_main():
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            lock = runlog.lock_run_folder(run_dir)
            set_up_folder(run_dir, cfg, resume, overwrite)
        except UserError as e:
            if lock is not None:
                lock.close()
            error = str(e)
    error = distributed.broadcast_object(error)  # every rank stops with rank 0's message
    if error is not None:
        raise UserError(error)
    distributed.barrier()  # rank 0 has decided; the folder is ready
    saved = saved_config(run_dir) if resume else None
    if saved is not None:
        try:
            cfg = merge_for_resume(checked_saved_config(run_dir, saved, cfg), cfg)
            check_epochs_not_shrunk(run_dir, cfg)
            check_folder_files(run_dir, cfg)
        except UserError:
            if lock is not None:
                lock.close()
            raise
    return run_dir, cfg, lock


def checked_saved_config(run_dir, saved, requested):
    """The saved config validated like a new one; keys an older version did not have take today's values.

    Today's value of a key that defines the experiment is its schema default: what the code computed
    before the key existed, whatever this command line asks for.
    """
    where = f"{run_dir / 'config.json'}"
    missing = [k for k in requested if k not in saved]
    filled = {k: SCHEMA[k].default if k in SCHEMA and not SCHEMA[k].resumable else requested[k] for k in missing}
    if missing:
        print(f"{where} predates the key(s) {', '.join(missing)}; resuming with "
              + ", ".join(f"{k}={shorten(v)}" for k, v in filled.items()), file=sys.stderr)
    saved = {**filled, **saved}
    try:
        for key in requested:
            saved[key] = check_type(key, saved[key], requested[key])
        validate({**saved, **{k: requested[k] for k in RESUMABLE_KEYS if k in requested}})
    except UserError as e:
        problems = "; ".join(str(e).splitlines())
        raise UserError(f"{where} holds values this version does not accept ({problems}); repair it, or start "
                        "again with --overwrite") from None
    return saved


def check_folder_files(run_dir, cfg):
    """Before anything is cut or written on resume: every trial's checkpoints belong to this experiment
    and every log row reads back."""
    record = runlog.read_run_config(run_dir)
    reference = record["config"] if record is not None else cfg
    exp = runlog.experiment_name(cfg)
    for k in range(max(cfg["num_trials"], trials_on_disk(run_dir, exp))):
        files = runlog.trial_files(run_dir, exp, k)
        for kind in ("last", "best"):
            if files[kind].exists() or files[kind].is_symlink():
                checkpoint = runlog.load_checkpoint(files[kind], ("model",))
                runlog.check_checkpoint_matches(files[kind], checkpoint, reference)
        for kind in ("loss", "lr", "acc", "eff"):
            runlog.read_log_rows(files[kind])


def trials_on_disk(run_dir, exp):
    """1 + the largest trial index that has a checkpoint in the folder (0 if none)."""
    indices = [int(m.group(1)) for p in run_dir.glob(f"*{exp}_t*.pt")
               if (m := re.fullmatch(rf"(?:last_)?{re.escape(exp)}_t(\d+)\.pt", p.name))]
    return max(indices, default=-1) + 1


def set_up_folder(run_dir, cfg, resume, overwrite):
    """Rank 0, holding the lock: delete (--overwrite), refuse a collision, create, and clean the folder."""
    if run_dir.is_symlink() or (run_dir.exists() and not run_dir.is_dir()):
        kind = "a link" if run_dir.is_symlink() else "a file"
        raise UserError(f"the run folder {run_dir} is {kind}, not a folder; move it away or choose another "
                        "--exp_name")
    if overwrite and run_dir.exists():
        runlog.remove_run_folder(run_dir)
    if resume and not run_dir.exists():
        print(f"--resume: nothing to resume in {run_dir}; starting a new run there")
    elif not resume and has_results(run_dir):
        raise UserError(collision_message(run_dir, saved_config(run_dir), cfg))
    try:
        run_dir.mkdir(exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the run folder {run_dir} ({e.strerror}); choose another --output_dir") from None
    problem = check_writable(run_dir)
    if problem:
        raise UserError(f"the run folder {run_dir} is not writable; make it writable or choose another "
                        "--output_dir or --exp_name")
    runlog.remove_stale_temp_files(run_dir)


def has_results(run_dir):
    """True if the folder holds a trial's status or logs (a config.json alone holds no results)."""
    return (run_dir / "status.json").exists() or any(run_dir.glob("acc_*.csv")) or any(run_dir.glob("last_*.pt"))


def saved_config(run_dir):
    """The config a run folder was made with: config.json's, else the one inside a resume checkpoint.

    A folder that holds checkpoints but neither is refused: rebuilding its network from the command
    line could load a 4-bit checkpoint into an 8-bit network.
    """
    record = runlog.read_run_config(run_dir)
    if record is not None:
        return record["config"]
    for path in sorted(run_dir.glob("last_*.pt")):
        return runlog.load_checkpoint(path, ("config",))["config"]
    if any(run_dir.glob("*.pt")):
        raise UserError(f"{run_dir} holds checkpoints but no config.json, so its network is unknown; "
                        "restore config.json or start again with --overwrite")
    return None


def collision_message(run_dir, saved, cfg):
    """Why a new run cannot start in a folder with results, with the keys that differ and what to do."""
    differing = [k for k in cfg if k not in RESUMABLE_KEYS and saved is not None and saved.get(k) != cfg[k]]
    if differing:
        what = ", ".join(f"{k}={cfg[k]!r} (saved: {saved.get(k)!r})" for k in differing)
        return (f"{run_dir} holds results of a different experiment ({what}); choose a new folder with "
                "--exp_name NAME, or --overwrite to delete those results")
    return (f"{run_dir} already holds results of this experiment; add --resume to continue it "
            "or --overwrite to delete them and start again")


def check_epochs_not_shrunk(run_dir, cfg):
    """Refuse an --epochs on resume below what a trial already completed (config.json would contradict its logs)."""
    done = max((t.get("epochs_completed", 0) for t in runlog.read_status(run_dir).values()), default=0)
    if cfg["epochs"] < done:
        raise UserError(f"--epochs {cfg['epochs']} is below the {done} epochs a trial in {run_dir} already "
                        f"completed; resume with --epochs {done} or more")


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
    cfg = complete(cfg)  # a key the caller's dict lacks takes the schema default, not a KeyError mid-run
    device = distributed.setup(resolve_device(cfg["device"]))
    keep_freed_memory()
    lock = None
    try:
        check_memory(cfg, device)
        run_dir, cfg, lock = prepare_run_folder(cfg, resume, overwrite)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        if distributed.is_main():
            runlog.write_run_config(run_dir, cfg, device, resumed=resume)
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
        if lock is not None:
            lock.close()
        distributed.teardown()


def run_one(cfg, k, loaders, generator, run_dir, device, received, resume):
    """Run or skip trial k; returns its best score (None if it failed)."""
    status = runlog.read_status(run_dir).get(str(k), {})
    if resume and is_done(status, cfg):
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


def is_done(status, cfg):
    """True for a failed trial, or a finished one that a larger --epochs does not extend."""
    extendable = status.get("reason") == "max_epochs" and status.get("epochs_completed", 0) < cfg["epochs"]
    return status.get("state") == "failed" or (status.get("state") == "finished" and not extendable)


def print_summary(cfg, results, run_dir):
    """Best score of each trial, then the best overall."""
    metric = "validation" if cfg["val_split"] > 0 else "test"
    scores = {k: v for k, v in results.items() if v is not None}
    for k, score in results.items():
        print(f"trial {k}: best {metric} accuracy " + ("failed" if score is None else f"{score:.2f}%"))
    if scores:
        print(f"best {metric} accuracy: {max(scores.values()):.2f}% (logs and checkpoints in {Path(run_dir)})")
