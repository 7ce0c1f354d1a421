"""A sweep cell's run.py subprocess: started in its own process group, stopped with its worker, its stderr passed
through, and SIGINT/SIGTERM handed on to it the way run.py's own signal handling expects."""
import ctypes
import os
import signal
import subprocess
import sys
from collections import deque

PR_SET_PDEATHSIG = 1  # Linux prctl option: a signal for the child when its parent dies
ERROR_TAIL = 20  # lines of a run's stderr kept to name why it failed


class StopSignals:
    """SIGINT/SIGTERM for a worker: passed on once to the running run.py (it saves and stops), a second aborts it.

    The run has its own process group, so a Ctrl-C in the terminal reaches it only through this handler: once
    per press, as run.py's own first-signal (stop after this iteration) and second-signal (abort) handling expects.
    """

    def __init__(self):
        self.received, self.child, self.previous = [], None, {}

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum, frame):
        """Note the signal; pass SIGINT on to the running cell."""
        self.received.append(signal.Signals(signum).name)
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signal.SIGINT)
            then = "again to abort it now" if len(self.received) == 1 else "aborting it"
            print(f"\n{self.received[-1]} received: the running cell saves and stops ({then})", file=sys.stderr)
        else:
            print(f"\n{self.received[-1]} received: stopping before the next cell", file=sys.stderr)


def stop_with_worker():
    """A preexec_fn for Linux: the run gets SIGTERM (run.py saves and stops) when its worker dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return None
    prctl, worker_pid = ctypes.CDLL(None, use_errno=True).prctl, os.getpid()

    def in_child():
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != worker_pid:  # the worker died before the call above
            os.kill(os.getpid(), signal.SIGTERM)

    return in_child


def start_run(grid, cell):
    """`python RUN.py ARGS` in its own process group, stderr piped through the worker, output unbuffered."""
    return subprocess.Popen([sys.executable, str(grid.run_py), *cell.argv], stderr=subprocess.PIPE, text=True,
                            errors="replace", bufsize=1, start_new_session=True, preexec_fn=stop_with_worker(),
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # log lines in the order they happen


def forward_stderr(proc):
    """Copy the run's stderr to the worker's, line by line; returns its last ERROR_TAIL lines."""
    last = deque(maxlen=ERROR_TAIL)
    for line in proc.stderr:
        sys.stderr.write(line)
        sys.stderr.flush()
        last.append(line.rstrip("\n"))
    return list(last)


def error_line(lines):
    """The run's last 'error:' line, else its last non-empty line, else None."""
    errors = [line for line in lines if line.startswith("error:")]
    rest = [line for line in lines if line.strip()]
    return (errors or rest or [None])[-1]
