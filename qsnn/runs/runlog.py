"""The run folder: config.json, per-trial CSV logs, checkpoints and status, all written atomically.

Layout of `<output_dir>/<exp>/`:
    config.json            resolved config, package versions, device, git commit, command
    status.json            state of each trial (running / finished / failed / interrupted)
    loss_<exp>_t<k>.csv    epoch, iteration, loss     (one row per training iteration)
    lr_<exp>_t<k>.csv      epoch, iteration, lr
    acc_<exp>_t<k>.csv     epoch, test_acc, [val_acc,] train_loss, train_time
    eff_<exp>_t<k>.csv     epoch, rate_<layer>, synops[_<layer>], input_macs, weight_kib[_fp32] (the model's layers)
    <exp>_t<k>.pt          best model of trial k
    last_<exp>_t<k>.pt     full training state after the last completed epoch (for --resume)
"""
import datetime
import fcntl
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

from qsnn.paths import REPO_ROOT, from_checkout, resolve_path
from qsnn.runs.config import RESUMABLE_KEYS, precision_name
from qsnn.runs.schema import FOLDER_NAME_KEYS
from qsnn.core.efficiency import COLUMNS as EFFICIENCY_COLUMNS  # the eff CSV header of the paper's 2 conv layers
from qsnn.files import atomic_path, atomic_write, read_json_object, refuse_link, write_text  # noqa: F401 (atomic_path: re-exported)
from qsnn.errors import UserError, shorten

# mkstemp's names for atomic_path: "." + target name + "." + 8 random characters + target suffix.
TEMP_FILE = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]*)?$")


def experiment_name(cfg):
    """cfg["exp_name"], or the schema's FOLDER_NAME_KEYS joined (dataset_precision_scheduler) when it is empty."""
    parts = (precision_name(cfg[k]) if k == "num_bits" else str(cfg[k]) for k in FOLDER_NAME_KEYS)
    return cfg["exp_name"] or "_".join(parts)


NAME_MAX = 255  # the longest file name Linux, macOS and Windows file systems all accept


def check_folder_name(name, num_trials=1):
    """Refuse a run-folder name that is not one plain folder name (it could reach outside output_dir),
    or so long that a file the run writes (temporary names included) would not fit in a file name."""
    if name in ("", ".", "..") or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise UserError(f"--exp_name {shorten(name)} is not allowed; use a plain folder name such as my_run "
                        "(no path separators, not starting with a dot)")
    longest = longest_file_name(name, num_trials)
    if longest > NAME_MAX:
        room = len(name) - (longest - NAME_MAX)
        raise UserError(f"--exp_name of {len(name)} characters is too long: the run's files would get names of "
                        f"{longest} characters (at most {NAME_MAX}); use at most {max(room, 1)} characters")


def longest_file_name(exp, num_trials=1):
    """Length of the longest name a run folder of this experiment gets: its files' temporary names."""
    names = [*(p.name for p in trial_files(Path("."), exp, max(num_trials - 1, 0)).values()),
             f"snapshots_{exp}_t{max(num_trials - 1, 0)}"]
    # atomic_path's temporary name: "." + name + "." + 8 random characters + the name's suffix
    return max(len(f".{n}.12345678{Path(n).suffix}") for n in names)


def run_folder(cfg):
    """The experiment's folder: always a direct child of output_dir."""
    name = experiment_name(cfg)
    check_folder_name(name, cfg.get("num_trials", 1))
    return resolve_path(cfg["output_dir"]) / name


def remove_run_folder(run_dir):
    """Delete a run folder for --overwrite, only if this program made it (it holds a config.json)."""
    run_dir = Path(run_dir)
    if run_dir.is_symlink() or not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a run folder (a link or a file); remove it yourself or choose "
                        "another --exp_name")
    if not (run_dir / "config.json").is_file():
        raise UserError(f"{run_dir} was not made by this program (it has no config.json), so --overwrite "
                        "leaves it alone; choose another --exp_name or remove it yourself")
    shutil.rmtree(run_dir)


def lock_run_folder(run_dir):
    """Hold an exclusive lock on a run folder for this process's life; refuse if another run holds it.

    The lock file sits beside the folder (so --overwrite can delete the folder while holding it) and the
    operating system releases the lock when the process ends, however it ends. It is opened without
    following links and must be a plain file: a link there could make the PID overwrite any file.
    """
    run_dir = Path(run_dir)
    path = run_dir.parent / f".{run_dir.name}.lock"
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except OSError as e:
        kind = "a link" if path.is_symlink() else "a folder" if path.is_dir() else None
        what = f"is {kind}, not a lock file this program made" if kind else f"cannot be opened ({e.strerror})"
        raise UserError(f"the lock file {path} {what}; remove it yourself or choose another --exp_name") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UserError(f"the lock file {path} is not a plain file; remove it yourself or choose another --exp_name")
    handle = os.fdopen(fd, "r+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = "".join(c for c in handle.read(32) if c.isdigit()) or "unknown"
        handle.close()
        raise UserError(f"another run (process {owner}) is writing to {run_dir}; wait for it to end or "
                        "choose another --exp_name") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def remove_stale_temp_files(run_dir):
    """Delete temporary files that a killed run left half-written (only atomic_path's hidden names)."""
    for path in Path(run_dir).glob(".*"):
        match = TEMP_FILE.match(path.name)
        if match and path.is_file() and (match["suffix"] or "") == Path(match["target"]).suffix:
            path.unlink()


def trial_files(run_dir, exp, k):
    """Paths of trial k's logs and checkpoints."""
    return {"loss": run_dir / f"loss_{exp}_t{k}.csv", "lr": run_dir / f"lr_{exp}_t{k}.csv",
            "acc": run_dir / f"acc_{exp}_t{k}.csv", "best": run_dir / f"{exp}_t{k}.pt",
            "eff": run_dir / f"eff_{exp}_t{k}.csv",
            "last": run_dir / f"last_{exp}_t{k}.pt"}


def save_checkpoint(obj, path):
    """Atomically torch.save obj to path (timm's temp-file-then-replace)."""
    import torch  # imported here: the results scripts use this module without needing torch

    atomic_write(path, lambda f: torch.save(obj, f))


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
    """The repository's HEAD commit (with '+dirty' for uncommitted changes), or None (e.g. an installed qsnn)."""
    if not from_checkout():  # site-packages may sit inside some other git repository
        return None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def execution_context():
    """Threads and processes: CPU results are bit-identical across runs only at equal thread counts."""
    import torch

    from qsnn import distributed

    return {"world_size": distributed.world_size(),
            "threads": {"torch": torch.get_num_threads(), "torch_interop": torch.get_num_interop_threads(),
                        **{name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}}}


def device_name(device):
    """The GPU's name, or the CPU's."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return platform.processor()


def write_run_config(run_dir, cfg, device, resumed=False):
    """config.json: everything needed to know what produced the files beside it.

    A resume keeps the record of the run that started the folder and appends its own (commit,
    versions, device, command) to "resumes", so the file tells which code wrote which epochs.
    """
    session = {"versions": package_versions(), "device": str(device), "device_name": device_name(device),
               "git_commit": git_commit(), "created": datetime.datetime.now().isoformat(timespec="seconds"),
               "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
               "script": str(Path(sys.argv[0]).resolve()) if sys.argv and sys.argv[0] else None,
               **execution_context()}
    previous = read_run_config(run_dir) if resumed else None
    if previous is None:
        record = {"exp_name": experiment_name(cfg), "dataset": cfg["dataset"],
                  "precision": precision_name(cfg["num_bits"]), "config": cfg, **session}
    else:
        record = {**previous, "config": cfg, "resumes": [*previous.get("resumes", []), session]}
    write_text(run_dir / "config.json", json.dumps(record, indent=2) + "\n")


def read_run_config(run_dir):
    """The config.json of a run folder, or None if it has none."""
    path = Path(run_dir) / "config.json"
    record = read_json_object(path)
    if record is not None and not isinstance(record.get("config"), dict):
        raise UserError(f"{path} has no \"config\" object; repair it or start again with --overwrite")
    return record


def read_status(run_dir):
    """{trial index (str): status dict} from status.json ({} when absent)."""
    path = Path(run_dir) / "status.json"
    record = read_json_object(path) or {"trials": {}}
    trials = record.get("trials")
    if not isinstance(trials, dict) or not all(isinstance(v, dict) for v in trials.values()):
        raise UserError(f"{path} has no \"trials\" object; repair or delete it, or start again with --overwrite")
    return trials


def update_status(run_dir, k, **fields):
    """Merge fields into trial k's entry of status.json."""
    trials = read_status(run_dir)
    trials.setdefault(str(k), {}).update(fields)
    write_text(Path(run_dir) / "status.json", json.dumps({"trials": trials}, indent=2) + "\n")


RESUME_REMEDY = "delete it to redo that trial, or start again with --overwrite"


def load_checkpoint(path, required, remedy=RESUME_REMEDY):
    """A checkpoint read on the CPU with weights_only=True (no code can run); UserError if damaged.

    Everything, RNG states included, stays on the CPU: torch.set_rng_state and Generator.set_state
    accept only CPU ByteTensors, and load_state_dict moves model and optimizer tensors where they belong.
    """
    import torch

    refuse_link(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, not a torch file, pickled code: torch raises many kinds
        raise UserError(f"{path} is not a readable checkpoint ({type(e).__name__}); {remedy}") from None
    missing = [key for key in required if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise UserError(f"{path} is not the kind of checkpoint expected here (it lacks {', '.join(missing)}); "
                        f"{remedy}")
    return checkpoint


def differing_experiment_keys(saved, other):
    """Keys that define the experiment (not RESUMABLE_KEYS) on which two configs disagree (both must have them)."""
    return sorted(k for k in set(saved) & set(other) if k not in RESUMABLE_KEYS and saved[k] != other[k])


def check_checkpoint_matches(path, checkpoint, folder_config):
    """Refuse, in one line, a checkpoint whose config is not the experiment of its folder's config.json.

    `checkpoint` is what load_checkpoint returned; `folder_config` the config.json's "config" (None: no
    config.json, nothing to compare with). A checkpoint without a config cannot be vouched for.
    """
    if folder_config is None:
        return
    saved = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict):
        raise UserError(f"{path} carries no config, so it cannot be checked against its folder's config.json; "
                        "it was not written by this program's training: move it out of the folder")
    differing = differing_experiment_keys(folder_config, saved)
    if differing:
        what = ", ".join(f"{k}={shorten(saved[k])} (config.json: {shorten(folder_config[k])})" for k in differing[:4])
        more = f" and {len(differing) - 4} more" if len(differing) > 4 else ""
        raise UserError(f"{path} belongs to another experiment ({what}{more}); it was copied in from elsewhere: "
                        "move it out of the folder, or start again with --overwrite")


class TrialLogs:
    """A trial's CSV logs (loss and lr per iteration, one acc and one eff row per epoch), appended per epoch."""

    HEADERS = {"loss": ("epoch", "iteration", "loss"), "lr": ("epoch", "iteration", "lr")}

    def __init__(self, files, acc_header, eff_header=EFFICIENCY_COLUMNS):
        """eff_header: the model's eff CSV columns (EfficiencyMeter.columns), the paper's network's by default."""
        self.headers = {**self.HEADERS, "acc": tuple(acc_header), "eff": tuple(eff_header)}
        self.paths = {kind: files[kind] for kind in self.headers}

    def start(self, completed_epochs):
        """Begin empty logs, or cut existing ones back to the epochs a resume checkpoint holds."""
        kept = self.rows_to_keep(completed_epochs)
        for kind, path in self.paths.items():
            write_text(path, "\n".join([",".join(self.headers[kind]), *kept[kind]]) + "\n")

    def rows_to_keep(self, completed_epochs):
        """{kind: the rows of epochs <= completed_epochs}, after checking every row (nothing is written)."""
        kept = {kind: [] for kind in self.paths}
        if completed_epochs:
            for kind, path in self.paths.items():
                kept[kind] = [line for epoch, line in read_log_rows(path) if epoch <= completed_epochs]
        return kept

    def append_epoch(self, epoch, first_iteration, losses, lrs, acc_row, eff_row):
        """Append one epoch's rows to each file (flushed and fsynced); returns the old sizes for rollback."""
        sizes = {kind: path.stat().st_size for kind, path in self.paths.items()}
        rows = {"loss": [(epoch, first_iteration + i, v) for i, v in enumerate(losses)],
                "lr": [(epoch, first_iteration + i, v) for i, v in enumerate(lrs)],
                "acc": [(epoch, *acc_row)], "eff": [(epoch, *eff_row)]}
        try:
            for kind, path in self.paths.items():
                with open(path, "a") as f:
                    f.write("".join(csv_line(row) for row in rows[kind]))
                    f.flush()
                    os.fsync(f.fileno())
        except OSError:
            self.rollback(sizes)
            raise
        return sizes

    def rollback(self, sizes):
        """Cut the files back to the given sizes (an epoch whose checkpoint could not be saved)."""
        for kind, size in sizes.items():
            with open(self.paths[kind], "r+") as f:
                f.truncate(size)


def read_log_rows(path):
    """[(epoch, line)] of a CSV log this program wrote, each row checked against the file's own header
    (numbers only, as many as the header has columns); a damaged row is one UserError."""
    path = Path(path)
    refuse_link(path)
    if not path.exists():
        return []
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not a text log (undecodable bytes at offset {e.start}); "
                        f"{LOG_REMEDY}") from None
    rows, columns = [], len(lines[0].split(",")) if lines else 0
    for number, line in enumerate(lines[1:], start=2):
        if not line:
            continue
        fields = line.split(",")
        try:
            epoch = int(fields[0])
            [float(v) for v in fields[1:]]
        except ValueError:
            epoch = None
        if epoch is None or epoch < 1 or len(fields) != columns:
            raise UserError(f"{path} line {number} is not a log row ({shorten(line)}); {LOG_REMEDY}")
        rows.append((epoch, line))
    return rows


LOG_REMEDY = "delete that line or file to redo the trial from its checkpoint's epoch, or start again with --overwrite"


def csv_line(row):
    """One CSV line; floats keep full precision (repr)."""
    return ",".join(repr(float(v)) if isinstance(v, float) else str(v) for v in row) + "\n"
