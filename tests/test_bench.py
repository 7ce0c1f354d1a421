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
                    "--configs", "mnist", "--no-reference", "--threads", "1", "--precisions", "fp32,bf16",
                    "--eval-batch", "16")
    assert "mnist" in out.lower() and "s/it" in out
    assert "CPU features:" in out and "Host peaks (fp32" in out and "% of fp32 / bf16 / int8 peak" in out
    assert "mnist (B=16, T=2) | eval | fast (time_chunk=0: all steps), bf16" in out
    assert "| mnist | fast (time_chunk=0: all steps), bf16 | 0 / 160 | 100.00 |" in out  # exact: same counts


def test_precision_agreement_compares_fp32_and_bf16_on_a_checkpoint(tmp_path):
    from conftest import untrained_run_folder

    folder = untrained_run_folder(tmp_path)
    out = run_bench("precision_agreement.py", str(folder / "tiny_t0.pt"), "--threads", "1")
    assert "fp32: test accuracy" in out and "bf16: test accuracy" in out and "identical predictions:" in out


def test_bench_neurons_times_fused_and_stepped_neurons():
    out = run_bench("bench_neurons.py", "--batch", "2", "--steps", "2", "--iters", "1", "--warmup", "0",
                    "--threads", "1", "--cases", "1,2")
    assert "default (subtract, fast_sigmoid)" in out and "reset zero" in out
