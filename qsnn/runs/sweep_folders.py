"""What a sweep cell's run folder says: finished or not, its best accuracy and progress, and whether another
process is training in it (run.py's folder lock)."""
from qsnn.runs import runlog
from qsnn.errors import UserError

BUSY = "another run (process"  # the start of run.py's message when a run folder is locked


def trial_done(status, cfg):
    """qsnn.runs.experiment.is_done without importing torch: failed, or finished and not extended by a larger epochs."""
    extendable = status.get("reason") == "max_epochs" and status.get("epochs_completed", 0) < cfg["epochs"]
    return status.get("state") == "failed" or (status.get("state") == "finished" and not extendable)


def folder_result(cell):
    """(True when run.py --resume would find every trial of the cell done, best accuracy in status.json or None)."""
    try:
        status = runlog.read_status(cell.run_dir)
    except UserError:  # a damaged status.json: run.py --resume says what is wrong with it
        return False, None
    scores = [t["best_score"] for t in status.values() if isinstance(t.get("best_score"), (int, float))]
    done = all(trial_done(status.get(str(k), {}), cell.cfg) for k in range(cell.cfg["num_trials"]))
    return done, max(scores, default=None)


def folder_progress(cell):
    """A few words on the cell's folder for --dry-run: finished, epochs done so far, or not started."""
    done, _ = folder_result(cell)
    if done:
        return "finished"
    try:
        epochs = sum(t.get("epochs_completed", 0) for t in runlog.read_status(cell.run_dir).values())
    except UserError as e:
        return f"unreadable: {str(e).split(';')[0]}"
    total = cell.cfg["epochs"] * cell.cfg["num_trials"]
    return f"{epochs} of {total} epochs" if epochs else "not started"


def folder_holder(cell):
    """None if no process holds the cell's run folder, else run.py's message naming the process that does."""
    if not cell.run_dir.parent.is_dir():
        return None
    try:
        runlog.lock_run_folder(cell.run_dir).close()
    except UserError as e:
        message = str(e)
        return message.split(";")[0] if message.startswith(BUSY) else None  # other problems: run.py says them
    return None

