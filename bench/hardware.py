"""What the host offers and what oneDNN used: CPU features, matmul peaks, the kernels a call ran, and the dense
arithmetic of a QSNN iteration (for achieved GFLOP/s). Used by bench_speed.py."""
import os
import re
import tempfile
import time
from pathlib import Path

import torch

from qsnn.core.geometry import map_sizes

# The /proc/cpuinfo flags that decide the low-precision kernels, best first.
FEATURES = ("amx_int8", "amx_bf16", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def cpu_features():
    """The FEATURES this CPU reports (Linux /proc/cpuinfo), and torch's CPU capability, as one line."""
    info = Path("/proc/cpuinfo")
    flags = set(re.search(r"^flags\s*:(.*)$", info.read_text(), re.MULTILINE).group(1).split()) if info.exists() \
        else set()
    found = [f for f in FEATURES if f in flags] or ["none of " + ", ".join(FEATURES)]
    bf16 = "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "no bf16 hardware"
    return f"CPU features: {' '.join(found)} ({bf16}) | torch CPU capability {torch.backends.cpu.get_cpu_capability()}"


def onednn_kernels(run):
    """Run run() with oneDNN's verbose log on; the (primitive, implementation) pairs it executed, in order."""
    if not torch.backends.mkldnn.is_available():
        return []
    with tempfile.TemporaryFile(mode="w+") as log:
        saved = os.dup(1)
        try:
            os.dup2(log.fileno(), 1)  # oneDNN writes to the C stdout
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                run()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = log.read().splitlines()
    pairs = []
    for line in lines:
        fields = line.split(",")
        if len(fields) > 6 and fields[0] == "onednn_verbose" and "exec" in fields:
            at = fields.index("exec")
            pair = (fields[at + 2], fields[at + 3])  # e.g. ("convolution", "brg_conv_fwd:avx512_core_amx")
            if pair not in pairs:
                pairs.append(pair)
    return pairs


PEAK_SIZE = 2048


def matmul_peaks(device, size=PEAK_SIZE, repeats=3):
    """Achieved GFLOP/s (GOP/s for int8) of a size^3 matmul in fp32, bf16 and int8 (torch._int_mm)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    cases = {"fp32": (a, b), "bf16": (a.bfloat16(), b.bfloat16()),
             "int8": (a.clamp(-1, 1).mul(100).to(torch.int8), b.clamp(-1, 1).mul(100).to(torch.int8))}
    peaks = {}
    for name, (x, y) in cases.items():
        multiply = torch._int_mm if name == "int8" else torch.mm
        try:
            multiply(x, y)
        except RuntimeError:  # no int8 matmul on this device
            continue
        best = float("inf")
        for _ in range(repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            multiply(x, y)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - start)
        peaks[name] = 2 * size**3 / best / 1e9
    return peaks


def dense_gflop(model, input_size, batch, steps, static_input):
    """(train, eval) GFLOP of one iteration's convolutions and head, as the fast path runs them (pools folded
    into the kernels); training adds the input and weight gradients (no input gradient for the first layer)."""
    layers = [(b.conv.weight.shape[0], b.conv.weight.shape[-1], b.padding, b.pool_size) for b in model.blocks]
    forward = backward = 0.0
    for i, ((out, kernel, _, pool), (_, side)) in enumerate(zip(layers, map_sizes(input_size, layers))):
        in_channels = model.blocks[i].conv.weight.shape[1]
        per_map = 2 * side**2 * out * in_channels * (kernel + pool - 1) ** 2  # a stride-pool conv, folded kernel
        maps = batch * (1 if i == 0 and static_input else steps)
        forward += per_map * maps
        backward += per_map * maps * (1 if i == 0 else 2)
    head = 2 * model.head.fc.weight.numel() * batch * steps
    return (forward + backward + 3 * head) / 1e9, (forward + head) / 1e9
