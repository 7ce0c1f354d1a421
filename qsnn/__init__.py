"""Quantized spiking neural networks (Brevitas + snnTorch) trained under periodic LR schedules."""
from .cli import main
from .errors import UserError

__all__ = ["main", "UserError"]
