"""Quantized spiking neural networks (Brevitas + snnTorch) trained under periodic LR schedules."""
from qsnn.runs.cli import main
from qsnn.errors import UserError

__all__ = ["main", "UserError"]
