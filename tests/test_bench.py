"""The benchmark scripts run (tiny shapes, one iteration): a refactor that breaks one is caught here, not by its user.

Only that they run and print their tables is checked; their timings are measured by running them, never in tests.
"""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_bench(script, *args):
    """stdout of `python bench/SCRIPT ARGS` on one thread; fails the test with its stderr if it fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_speed_times_the_fast_path():
    out = run_bench("bench_speed.py", "--device", "cpu", "--iters", "1", "--warmup", "0", "--steps", "2",
                    "--configs", "mnist", "--no-reference", "--threads", "1")
    assert "mnist" in out.lower() and "s/it" in out


def test_bench_neurons_times_fused_and_stepped_neurons():
    out = run_bench("bench_neurons.py", "--batch", "2", "--steps", "2", "--iters", "1", "--warmup", "0",
                    "--threads", "1", "--cases", "1,2")
    assert "default (subtract, fast_sigmoid)" in out and "reset zero" in out
