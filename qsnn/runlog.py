"""The run folder: config.json, per-trial CSV logs, checkpoints and status, all written atomically.

Layout of `<output_dir>/<exp>/`:
    config.json            resolved config, package versions, device, git commit, command
    status.json            state of each trial (running / finished / failed / interrupted)
    loss_<exp>_t<k>.csv    epoch, iteration, loss     (one row per training iteration)
    lr_<exp>_t<k>.csv      epoch, iteration, lr
    acc_<exp>_t<k>.csv     epoch, test_acc, [val_acc,] train_loss, train_time
    <exp>_t<k>.pt          best model of trial k
    last_<exp>_t<k>.pt     full training state after the last completed epoch (for --resume)
"""
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from .config import REPO_ROOT, precision_name, resolve_path


def experiment_name(cfg):
    """cfg["exp_name"], or dataset_precision_scheduler when it is empty."""
    return cfg["exp_name"] or f"{cfg['dataset']}_{precision_name(cfg['num_bits'])}_{cfg['scheduler']}"


def run_folder(cfg):
    """The experiment's folder under output_dir."""
    return resolve_path(cfg["output_dir"]) / experiment_name(cfg)


def trial_files(run_dir, exp, k):
    """Paths of trial k's logs and checkpoints."""
    return {"loss": run_dir / f"loss_{exp}_t{k}.csv", "lr": run_dir / f"lr_{exp}_t{k}.csv",
            "acc": run_dir / f"acc_{exp}_t{k}.csv", "best": run_dir / f"{exp}_t{k}.pt",
            "eff": run_dir / f"eff_{exp}_t{k}.csv",
            "last": run_dir / f"last_{exp}_t{k}.pt"}


@contextmanager
def atomic_path(target):
    """A temporary path beside target that replaces it if the block succeeds (and is removed if not).

    The temporary name keeps target's suffix (numpy appends .npy otherwise) and starts with a dot.
    """
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=target.suffix)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path, write):
    """Call write(file_object) on a temporary file beside path, then move it into place."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def write_text(path, text):
    """Atomically replace a text file."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def save_checkpoint(obj, path):
    """Atomically torch.save obj to path (timm's temp-file-then-replace)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def write_csv(path, header, rows):
    """Atomically write a CSV with a header; floats keep full precision (repr)."""
    lines = [",".join(header)]
    lines += [",".join(repr(float(v)) if isinstance(v, float) else str(v) for v in row) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def package_versions():
    """Versions of the packages that decide the numbers."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "snntorch", "brevitas", "tonic", "numpy"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions[name] = getattr(module, "__version__", "unknown")
    return versions


def git_commit():
    """The repository's HEAD commit (with '+dirty' for uncommitted changes), or None."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def write_run_config(run_dir, cfg, device):
    """config.json: everything needed to know what produced the files beside it."""
    record = {
        "exp_name": experiment_name(cfg), "dataset": cfg["dataset"],
        "precision": precision_name(cfg["num_bits"]), "config": cfg,
        "versions": package_versions(), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "git_commit": git_commit(), "created": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    write_text(run_dir / "config.json", json.dumps(record, indent=2) + "\n")


def read_run_config(run_dir):
    """The config.json of a run folder, or None if it has none."""
    path = Path(run_dir) / "config.json"
    return json.loads(path.read_text()) if path.exists() else None


def read_status(run_dir):
    """{trial index (str): status dict} from status.json ({} when absent)."""
    path = Path(run_dir) / "status.json"
    return json.loads(path.read_text())["trials"] if path.exists() else {}


def update_status(run_dir, k, **fields):
    """Merge fields into trial k's entry of status.json."""
    trials = read_status(run_dir)
    trials.setdefault(str(k), {}).update(fields)
    write_text(Path(run_dir) / "status.json", json.dumps({"trials": trials}, indent=2) + "\n")
