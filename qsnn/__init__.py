"""Quantized spiking neural networks (Brevitas + snnTorch) trained under periodic LR schedules.

Importing `qsnn` imports nothing heavy: the NumPy-only integer runtime (qsnn.deploy.runtime) must load
without torch. `qsnn.main` (what each run.py calls) is imported on first use.
"""
from qsnn.errors import UserError

__all__ = ["main", "UserError"]


def __getattr__(name):
    """qsnn.main, imported lazily (it pulls in torch, Brevitas and snnTorch)."""
    if name == "main":
        from qsnn.runs.cli import main

        return main
    raise AttributeError(f"module 'qsnn' has no attribute {name!r}")
