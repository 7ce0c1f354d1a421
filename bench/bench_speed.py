"""Speed of the reference and the fast execution of the paper's QSNNs, in one process.

The MNIST config (batch 128, 100 steps, 4-bit) and the DVS128 Gesture config (batch 16, 100 steps)
on synthetic inputs: training iterations and evaluation forwards timed alternately (ref, fast, ref,
...), the peak extra memory of each, the fast path's agreement with the reference, and on CUDA one
full MNIST training epoch.

    python bench/bench_speed.py                                   # defaults; prints a markdown table
    python bench/bench_speed.py --steps 20 --iters 2 --warmup 1   # a quick look
    python bench/bench_speed.py --time-chunks 0,1,10,all --compile --profile
    python bench/bench_speed.py --no-reference --precisions fp32,bf16 --eval-batch 1000   # compute_precision

See bench/README.md for how to read the output.
"""
import argparse
import copy
import ctypes
import gc
import platform
import re
import sys
import time
import warnings
from pathlib import Path

START = time.perf_counter()  # before torch and Brevitas load, which takes seconds
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import brevitas  # noqa: E402
import snntorch  # noqa: E402
import snntorch.functional as SF  # noqa: E402
import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function  # noqa: E402
from torch.utils.benchmark import Measurement  # noqa: E402
from torch.utils.benchmark.utils.common import TaskSpec  # noqa: E402
from torch.utils.benchmark.utils.timer import timer as synced_clock  # noqa: E402  (waits for CUDA)

from qsnn.data.loaders import TensorBatches  # noqa: E402
from qsnn.core.equivalence import compare_executions  # noqa: E402
from qsnn.runs.memory import keep_freed_memory  # noqa: E402
from qsnn.core import models  # noqa: E402  (CHANNELS_LAST_ON_CPU, switched per path with --nchw)
from qsnn.core.models import QSNN, architecture  # noqa: E402
from qsnn.data import registry  # noqa: E402
from qsnn.core.loop import clamp_weights, run_network, train_epoch  # noqa: E402
from qsnn.core.precision import PRECISIONS  # noqa: E402
import hardware  # noqa: E402  (bench/hardware.py: CPU features, peaks, oneDNN kernels, dense GFLOP)

# The paper's settings (mnist/run.py, dvs128_gesture/run.py). Inputs are [B, ...] as the loaders
# give them; qsnn.core.loop.run_network turns an event batch [B, T, ...] time-first, as training does.
CONFIGS = {
    "mnist": dict(kind="image", batch=128, steps=100, lr=5.4e-3, grad_clip=None, weight_clip=None,
                  model=dict(num_bits=4, beta=0.994, threshold=2.915, slope=13.84, dropout=0.003168,
                             batch_norm=True)),
    "dvs": dict(kind="event", batch=16, steps=100, lr=2.634e-3, grad_clip=1.0, weight_clip=1.0,
                model=dict(num_bits=4, beta=0.614, threshold=0.427, slope=4.413, dropout=0.203,
                           batch_norm=False)),
}
# The two input kinds' networks, as build_model makes them for MNIST and DVS128 Gesture.
ARCHITECTURES = {"image": architecture(registry.get("mnist")), "event": architecture(registry.get("dvs128_gesture"))}
EVENT_DENSITY = 0.3  # DVS input: Bernoulli(0.3) events per pixel, polarity and step (--event-density)
EPOCH_SAMPLES = 60_000  # MNIST's training set
SEED = 0
LOSS = SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)


def log(message):
    """Progress on stderr (the report goes to stdout)."""
    print(f"[{time.perf_counter() - START:7.1f}s] {message}", file=sys.stderr, flush=True)


def _proc_status_kib(key):
    return int(re.search(rf"^{key}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE).group(1))


class PeakMemory:
    """Peak extra memory of a region: CUDA tensor allocations, or on Linux the process's resident set."""

    def __init__(self, device):
        self.device = device
        self.kind = "cuda" if device.type == "cuda" else "rss" if Path("/proc/self/clear_refs").exists() else None
        self.label = {"cuda": "peak +MiB (CUDA alloc.)", "rss": "peak +MiB (RSS)"}.get(self.kind, "peak mem")

    def start(self):
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.kind == "rss":
            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand memory freed by an earlier path back first
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux >= 4.0)
            self._base = _proc_status_kib("VmRSS") * 1024

    def stop(self):
        """Peak extra bytes since start(), or None where that cannot be measured."""
        if self.kind == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._base
        if self.kind == "rss":
            return max(0, _proc_status_kib("VmHWM") * 1024 - self._base)
        return None


def device_description(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
    return f"CPU ({found.group(1).strip() if found else platform.processor() or platform.machine()})"


def make_batch(cfg, steps, device, density):
    """Synthetic (inputs, labels): MNIST uniform [0, 1] images, DVS Bernoulli events [B, T, 2, 32, 32]."""
    arch, generator = ARCHITECTURES[cfg["kind"]], torch.Generator().manual_seed(SEED)
    side, channels = arch["input_size"], arch["in_channels"]
    if cfg["kind"] == "image":
        x = torch.rand(cfg["batch"], channels, side, side, generator=generator)
    else:
        x = (torch.rand(cfg["batch"], steps, channels, side, side, generator=generator) < density).float()
    y = torch.randint(0, arch["num_classes"], (cfg["batch"],), generator=generator)
    return x.to(device), y.to(device)


class Runner:
    """One way of running the network: its own copy of the weights, its own optimizer, its timings."""

    def __init__(self, label, base, cfg, execution, time_chunk=0, compiled=False, channels_last=True,
                 precision="fp32"):
        self.label, self.cfg, self.precision = label, cfg, precision
        self.channels_last = channels_last  # models.CHANNELS_LAST_ON_CPU while this path runs
        self.module = copy.deepcopy(base)
        self.module.execution, self.module.time_chunk = execution, time_chunk
        self.module.compute_precision = precision
        # dynamic=False: the shapes never change here, and dynamic-shape tracing of the LIF loop can fail.
        self.model = torch.compile(self.module, dynamic=False) if compiled else self.module
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=cfg["lr"], betas=(0.9, 0.999))
        self.times, self.memory = {"train": [], "eval": []}, {}


def train_iteration(path, x, y, steps):
    """What qsnn.core.loop.train_epoch does per batch (without the LR scheduler and logging)."""
    with record_function("bench.forward+loss"):
        loss = LOSS(run_network(path.model, x, steps), y)
    path.optimizer.zero_grad(set_to_none=True)
    with record_function("bench.backward"):
        loss.backward()
    with record_function("bench.optimizer"):
        if path.cfg["grad_clip"] is not None:
            torch.nn.utils.clip_grad_norm_(path.module.parameters(), path.cfg["grad_clip"])
        path.optimizer.step()
        if path.cfg["weight_clip"] is not None:
            clamp_weights(path.module, path.cfg["weight_clip"])


@torch.no_grad()
def eval_iteration(path, x, y, steps):
    run_network(path.model, x, steps)


def compiles(path, x, y, steps, notes):
    """Compile a torch.compile path by running it in both phases; False (and a note) if that fails."""
    start = time.perf_counter()
    try:
        train_iteration(path, x, y, steps)
        path.module.eval()
        eval_iteration(path, x, y, steps)
    except Exception as e:  # torch.compile may not handle every op; the bench carries on without it
        notes.append(f"{path.label} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); not timed")
        return False
    notes.append(f"{path.label}: compiling (a training and an eval iteration) took {time.perf_counter() - start:.0f} s")
    return True


def time_phase(paths, phase, x, y, steps, warmup, iters, meter):
    """Warm up, time every path `iters` times alternating between paths, then one memory pass each.

    Timer.timeit/blocked_autorange run extra untimed executions per call, which would multiply the
    cost of alternated single iterations, so each iteration is timed with the benchmark module's
    clock (it waits for CUDA) and the times are collected in a Measurement. The memory pass is
    untimed: measuring CPU memory first hands freed memory back to the system (page faults).
    """
    step = train_iteration if phase == "train" else eval_iteration
    for path in paths:
        path.module.train(phase == "train")
    for i in range(warmup + iters):
        for path in paths:
            models.CHANNELS_LAST_ON_CPU = path.channels_last
            start = synced_clock()
            step(path, x, y, steps)
            if i >= warmup:
                path.times[phase].append(synced_clock() - start)
        if i >= warmup and (i - warmup + 1) % max(1, iters // 5) == 0:  # about five progress lines
            log(f"  {phase} timed {i - warmup + 1}/{iters}: "
                + ", ".join(f"{p.label} {p.times[phase][-1]:.3f}s" for p in paths))
    for path in paths:
        models.CHANNELS_LAST_ON_CPU = path.channels_last
        meter.start()
        step(path, x, y, steps)
        path.memory[phase] = meter.stop()
    models.CHANNELS_LAST_ON_CPU = True
    return {path.label: Measurement(1, path.times[phase], TaskSpec(f"{phase}()", "pass", label=path.label,
                                                                   num_threads=torch.get_num_threads()))
            for path in paths}


def profile_fast(name, base, cfg, x, y, steps, device, time_chunk, iters):
    """torch.profiler over a few fast training iterations: top ops by self time and a region breakdown."""
    path = Runner("fast", base, cfg, "fast", time_chunk)
    path.module.train()
    on_cuda = device.type == "cuda"
    train_iteration(path, x, y, steps)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(iters):
            train_iteration(path, x, y, steps)
        if on_cuda:
            torch.cuda.synchronize(device)
    events = prof.key_averages()
    sort = "self_device_time_total" if on_cuda else "self_cpu_time_total"
    lines = [f"\n### Profile: {name}, fast path (time_chunk={time_chunk}), {iters} training iterations, "
             f"top 15 by {sort}\n", "```", events.table(sort_by=sort, row_limit=15), "```"]
    # Inclusive time of the labelled regions: the bench's phases (record_function above), the LIF
    # Function's forward, qsnn's own record_function labels if any, and the autograd backward nodes.
    measure = (lambda e: e.device_time_total) if on_cuda else (lambda e: e.cpu_time_total)
    total = (sum(e.self_device_time_total for e in events) if on_cuda
             else sum(e.cpu_time_total for e in events if e.key.startswith("bench."))) or 1
    backward = "autograd::engine::evaluate_function: "
    rows = sorted((e for e in events if e.key == "_LIFSequence" or e.key.startswith(("bench.", "qsnn.", backward))),
                  key=measure, reverse=True)
    lines += [f"\nInclusive {'device' if on_cuda else 'CPU'} time by region ({name}; % of "
              f"{'all kernel time' if on_cuda else 'the three bench.* phases'}; regions nest):\n",
              "| region | calls | CPU ms | device ms | % |", "|---|---:|---:|---:|---:|"]
    for e in rows[:20]:
        device_ms = f"{e.device_time_total / 1000:.1f}" if on_cuda else "–"
        lines.append(f"| {e.key.replace(backward, 'backward: ')} | {e.count} | {e.cpu_time_total / 1000:.1f}"
                     f" | {device_ms} | {100 * measure(e) / total:.1f} |")
    return "\n".join(lines)


def full_epoch(base, cfg, steps, device, execution, time_chunk):
    """One MNIST epoch through qsnn.core.loop.train_epoch on random uint8 images held on the device."""
    generator = torch.Generator().manual_seed(SEED)
    images = torch.randint(0, 256, (EPOCH_SAMPLES, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (EPOCH_SAMPLES,), generator=generator)
    loader = TensorBatches(images.to(device), labels.to(device), cfg["batch"], shuffle=True, generator=generator)
    path = Runner(execution, base, cfg, execution, time_chunk)
    scheduler = torch.optim.lr_scheduler.LambdaLR(path.optimizer, lambda _: 1.0)
    train_cfg = dict(num_steps=steps, grad_clip=cfg["grad_clip"], weight_clip=cfg["weight_clip"])
    meter = PeakMemory(device)
    log(f"  full epoch, {execution}: {len(loader)} iterations ...")
    meter.start()
    start = synced_clock()
    losses, _ = train_epoch(path.module, loader, path.optimizer, scheduler, LOSS, train_cfg, device, 1,
                            lambda: False)
    return dict(path=execution, seconds=synced_clock() - start, iterations=len(losses), steps=steps,
                memory=fmt_mib(meter.stop()))


def fmt_mib(value):
    return "n/a" if value is None else f"{value / 2**20:.0f}"


def fmt_s(seconds):
    return f"{seconds:.4f}" if seconds < 0.1 else f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def parse_time_chunks(text, steps):
    """'0,1,10,all' -> [(label, value)]; 'all' = every step in one conv call, 0 = the model's default (all)."""
    chunks = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item != "all" and not item.isdigit():
            raise SystemExit(f"--time-chunks: {item!r} is not a non-negative integer or 'all'")
        if (item, steps if item == "all" else int(item)) not in chunks:
            chunks.append((item, steps if item == "all" else int(item)))
    return chunks or [("0", 0)]


OPTIONS = [  # (flag, argparse keywords)
    ("--device", dict(default="auto", help="auto (CUDA if available) | cpu | cuda | cuda:N")),
    ("--iters", dict(type=int, help="timed iterations per path and phase (default 5 on CPU, 30 on CUDA)")),
    ("--warmup", dict(type=int, help="untimed iterations per path and phase first (default 1 on CPU, 5 on CUDA)")),
    ("--steps", dict(type=int, help="time steps per sample (default: the paper's 100)")),
    ("--configs", dict(default="mnist,dvs", help="comma-separated: mnist, dvs")),
    ("--time-chunks", dict(default="0", help="fast-path time_chunk values, e.g. 0,1,10,all (0, all: every step)")),
    ("--compile", dict(action="store_true", help="also time the fast path under torch.compile (dropped if it fails)")),
    ("--profile", dict(action="store_true", help="torch.profiler over a few fast training iterations per config")),
    ("--profile-iters", dict(type=int, default=3, help="training iterations under the profiler (default 3)")),
    ("--full-epoch", dict(choices=("auto", "yes", "no"), default="auto", help="time a full MNIST epoch (auto: CUDA)")),
    ("--full-epoch-reference", dict(action="store_true", help="time the full epoch for the reference path too")),
    ("--event-density", dict(type=float, default=EVENT_DENSITY, help="DVS: P(event) per pixel, polarity, step")),
    ("--no-reference", dict(action="store_true", help="time the fast path(s) only (no × ref, no agreement checks)")),
    ("--no-check", dict(action="store_true", help="skip the output/gradient agreement checks")),
    ("--nchw", dict(action="store_true", help="also time the fast path with NCHW convolutions (on CPU it uses "
                                              "channels_last: qsnn.core.models.CHANNELS_LAST_ON_CPU)")),
    ("--precisions", dict(default="fp32", help="comma-separated compute_precision values of the fast path, e.g. "
                                               "fp32,bf16 (each its own path, timed side by side)")),
    ("--eval-batch", dict(type=int, help="evaluation batch (default: the training batch; the paper evaluates "
                                         "MNIST in batches of 1000)")),
    ("--threads", dict(type=int, help="torch.set_num_threads (default: torch's choice)")),
    ("--malloc-default", dict(action="store_true", help="no qsnn.runs.memory.keep_freed_memory() (training calls it)")),
]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    for flag, keywords in OPTIONS:
        parser.add_argument(flag, **keywords)
    args = parser.parse_args()
    auto = "cuda" if torch.cuda.is_available() else "cpu"
    args.device = torch.device(auto if args.device == "auto" else args.device)
    if args.device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available in this torch build or machine")
    on_cuda = args.device.type == "cuda"
    args.iters = args.iters if args.iters is not None else (30 if on_cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be >= 1 and --warmup >= 0")
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    if not args.configs or set(args.configs) - set(CONFIGS):
        parser.error(f"--configs: choose from {', '.join(CONFIGS)}")
    args.full_epoch = args.full_epoch == "yes" or (args.full_epoch == "auto" and on_cuda)
    args.precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not args.precisions or set(args.precisions) - set(PRECISIONS):
        parser.error(f"--precisions: choose from {', '.join(PRECISIONS)}")
    if args.eval_batch is not None and args.eval_batch < 1:
        parser.error("--eval-batch must be >= 1")
    return args


def check_agreement(name, cfg, reference, x, y, steps, chunks, report):
    """qsnn.core.equivalence on the reference's weights after its training iterations (a fresh net hardly spikes)."""
    model_x, num_steps = (x, steps) if cfg["kind"] == "image" else (x.transpose(0, 1), None)
    for k, (item, value) in enumerate(chunks):
        agreement = compare_executions(reference.module, model_x, num_steps, labels=y if k == 0 else None,
                                       time_chunk=value)
        report["checks"] += [dict(config=name, path=f"time_chunk={item}", row=r) for r in agreement.layers]
        if agreement.train is not None:
            report["grads"].append(dict(config=name, train=agreement.train))
        silent = ", ".join(r.layer for r in agreement.layers if r.spikes == 0)
        if silent and k == 0:
            hint = " (try a larger --event-density)" if cfg["kind"] == "event" else ""
            report["notes"].append(f"{name}: no reference spikes in {silent} on this synthetic batch; the membrane "
                                   f"column still compares{hint}")


def compare_precisions(name, cfg, runners, x, steps, report):
    """Each compute_precision's fast path against the first one's, on the first's trained weights (eval mode):
    differing output spikes and predictions, and the oneDNN kernels each ran (training, 8 samples)."""
    fast = [p for p in runners if p.label.startswith("fast") and "NCHW" not in p.label]
    first = fast[0]
    with torch.no_grad():
        first.module.eval()
        counts = run_network(first.module, x, steps).sum(0)
        for path in fast:
            clone = copy.deepcopy(first.module)
            clone.compute_precision = path.precision
            other = run_network(clone, x, steps).sum(0)
            same = (other.argmax(1) == counts.argmax(1)).float().mean().item()
            # one training forward + backward on 8 samples: the forward's and the gradients' kernels
            with torch.enable_grad():
                kernels = hardware.onednn_kernels(lambda: run_network(clone.train(), x[:8], steps).sum().backward())
            report["precisions"].append(dict(
                config=name, path=path.label, spikes=int((other != counts).sum()), elements=counts.numel(),
                same=100 * same, kernels=", ".join(f"{kind} {impl}" for kind, impl in kernels) or "n/a"))


def bench_config(name, args, meter, report):
    """Time, check and optionally profile one config; adds rows to the report's lists."""
    cfg, device = CONFIGS[name], args.device
    steps = args.steps or cfg["steps"]
    chunks = parse_time_chunks(args.time_chunks, steps)
    torch.manual_seed(SEED)
    base = QSNN(**ARCHITECTURES[cfg["kind"]], **cfg["model"]).to(device)
    x, y = make_batch(cfg, steps, device, args.event_density)
    runners = [] if args.no_reference else [Runner("reference", base, cfg, "reference")]
    runners += [Runner(f"fast (time_chunk={item}{': all steps' if value in (0, steps) else ''})"
                       + ("" if precision == "fp32" else f", {precision}"), base, cfg, "fast", value,
                       precision=precision) for precision in args.precisions for item, value in chunks]
    if args.nchw:  # the default layout beside the channels_last one the fast path uses on CPU
        runners.append(Runner(f"fast (time_chunk={chunks[0][0]}), NCHW convs", base, cfg, "fast", chunks[0][1],
                              channels_last=False))
    if args.compile:
        compiled = Runner(f"fast+compile (time_chunk={chunks[0][0]})", base, cfg, "fast", chunks[0][1], True)
        runners += [compiled] if compiles(compiled, x, y, steps, report["notes"]) else []
    log(f"{name}: batch {cfg['batch']}, {steps} steps, paths: {', '.join(p.label for p in runners)}")
    eval_batch = args.eval_batch or cfg["batch"]
    x_eval, y_eval = make_batch(dict(cfg, batch=eval_batch), steps, device, args.event_density)
    static = cfg["kind"] == "image"
    gflop = dict(zip(("train", "eval"), (
        hardware.dense_gflop(base, ARCHITECTURES[cfg["kind"]]["input_size"], cfg["batch"], steps, static)[0],
        hardware.dense_gflop(base, ARCHITECTURES[cfg["kind"]]["input_size"], eval_batch, steps, static)[1])))
    for phase in ("train", "eval"):
        log(f"{name}: timing {phase}")
        batch_x, batch_y = (x, y) if phase == "train" else (x_eval, y_eval)
        timed = time_phase(runners, phase, batch_x, batch_y, steps, args.warmup, args.iters, meter)
        ref_median = None if args.no_reference else timed["reference"].median
        for path in runners:
            m = timed[path.label]
            batch = cfg["batch"] if phase == "train" else eval_batch
            report["timings"].append(dict(config=f"{name} (B={batch}, T={steps})", phase=phase, m=m,
                                          path=path.label, speedup=ref_median / m.median if ref_median else None,
                                          memory=fmt_mib(path.memory[phase]), gflop=gflop[phase]))
    if len(args.precisions) > 1:
        compare_precisions(name, cfg, runners, x_eval, steps, report)
    if not (args.no_reference or args.no_check):
        log(f"{name}: agreement of the fast path with the reference")
        check_agreement(name, cfg, runners[0], x, y, steps, chunks, report)
    if name == "mnist" and args.full_epoch:
        for execution in ("fast", "reference") if args.full_epoch_reference else ("fast",):
            report["epochs"].append(full_epoch(base, cfg, steps, device, execution, chunks[0][1]))
    if args.profile:
        log(f"{name}: profiling the fast path")
        report["profiles"].append(profile_fast(name, base, cfg, x, y, steps, device, chunks[0][1],
                                               args.profile_iters))


MEMORY_NOTES = {  # bench/README.md explains each
    "cuda": "peak +MiB: max_memory_allocated during one extra, untimed iteration minus what was allocated before.",
    "rss": "peak +MiB: peak resident set size (VmHWM) during one extra, untimed iteration minus the RSS before.",
    None: "peak mem: n/a (no CUDA, and no /proc/self/clear_refs to reset the peak RSS on this system).",
}


def print_table(header, rows):
    """A markdown table: header cells (a trailing ':' right-aligns the column) and rows of cells."""
    print("| " + " | ".join(h.rstrip(":") for h in header) + " |")
    print("|" + "|".join("---:" if h.endswith(":") else "---" for h in header) + "|")
    for row in rows:
        print("| " + " | ".join(str(cell) for cell in row) + " |")


def print_agreement(report, args):
    print(f"\nFast vs reference (qsnn.core.equivalence.compare_executions) on the reference's weights after its "
          f"{args.warmup + args.iters + 1} training iterations and the same batch, eval mode:\n")
    rows = []
    for c in report["checks"]:
        r = c["row"]
        before = "n/a (step 0)" if r.max_mem_diff_before_flip is None else f"{r.max_mem_diff_before_flip:.3g}" + (
            f" (steps < {r.first_flip})" if r.first_flip is not None else " (none differ)")
        rows.append([c["config"], c["path"], r.layer, f"{r.spikes} / {r.elements}", r.differing_spikes,
                     f"{r.max_count_diff:g}", f"{r.max_mem_diff:.3g}", before,
                     "" if r.differing_predictions is None else r.differing_predictions])
    print_table(["config", "fast path", "layer", "spikes (ref):", "differing spikes:", "max abs spike-count diff:",
                 "max abs membrane diff:", "... before the first differing spike:", "differing predictions:"], rows)
    print()
    print_table(["config", "train loss (ref):", "abs loss diff:",
                 "max abs grad diff / max abs grad (worst parameter):"],
                [[g["config"], f"{g['train'].loss:.6g}", f"{g['train'].loss_diff:.3g}",
                  "{1:.3g} ({0})".format(*g["train"].worst_gradient())] for g in report["grads"]])
    print("(train mode with dropout off, so BatchNorm uses batch statistics; one forward + backward per execution)")


def print_report(header, report, meter, args):
    """The markdown report on stdout."""
    print(f"\n{header}\n")
    peaks = report["peaks"]
    print("Host peaks (" + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peaks.items()) + f"): a "
          f"{hardware.PEAK_SIZE}^3 matmul, best of 3.\n")
    print_table(["config", "phase", "path", "s/it median [min–max]", "it/s:", "× ref:", "GFLOP/it:", "GFLOP/s:",
                 "% of fp32 / bf16 / int8 peak:", meter.label + ":"],
                [[r["config"], r["phase"], r["path"], f"{fmt_s(r['m'].median)} [{fmt_s(min(r['m'].times))}–"
                  f"{fmt_s(max(r['m'].times))}]", f"{1 / r['m'].median:.2f}",
                  "–" if r["speedup"] is None else f"{r['speedup']:.2f}", f"{r['gflop']:.1f}",
                  f"{r['gflop'] / r['m'].median:.0f}",
                  " / ".join(f"{100 * r['gflop'] / r['m'].median / peaks[k]:.0f}" if k in peaks else "–"
                             for k in ("fp32", "bf16", "int8")), r["memory"]] for r in report["timings"]])
    print("\nGFLOP/it: the dense arithmetic of the convolutions (pools folded in) and the head, as the fast path "
          "runs them: eval the forward; train also the input and weight gradients. The reference path does the "
          "same arithmetic with unfolded kernels.")
    if report["precisions"]:
        print("\ncompute_precision against the first fast path (its weights after its training iterations, eval "
              "mode, the eval batch), and the oneDNN kernels each ran in a training forward + backward:\n")
        print_table(["config", "path", "differing output spike counts:", "same prediction %:", "oneDNN kernels"],
                    [[c["config"], c["path"], f"{c['spikes']} / {c['elements']}", f"{c['same']:.2f}", c["kernels"]]
                     for c in report["precisions"]])
    print("\ntrain = forward + mse_count_loss + backward + Adam step (DVS: + grad-norm clip 1.0 and weight clamp 1.0);"
          " eval = forward under no_grad in eval mode, same batch. × ref = reference median / this median.")
    print(MEMORY_NOTES[meter.kind])
    if report["checks"]:
        print_agreement(report, args)
    if report["epochs"]:
        print(f"\nFull MNIST epoch ({EPOCH_SAMPLES:,} random uint8 images on the device, batch 128, "
              "qsnn.data.loaders.TensorBatches + qsnn.core.loop.train_epoch, data loading included):\n")
        print_table(["path", "steps:", "iterations:", "seconds:", "it/s:", meter.label + ":"],
                    [[e["path"], e["steps"], e["iterations"], f"{e['seconds']:.1f}",
                      f"{e['iterations'] / e['seconds']:.2f}", e["memory"]] for e in report["epochs"]])
    for note in report["notes"]:
        print(f"\nnote: {note}")
    for text in report["profiles"]:
        print(text)
    print(f"\nbench/bench_speed.py took {time.perf_counter() - START:.0f} s in all.")


def main():
    args = parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)  # Brevitas/snnTorch deprecation chatter
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = ("default (--malloc-default)" if args.malloc_default
              else "keep freed memory" if keep_freed_memory() else "default (keep_freed_memory n/a here)")
    on_cuda = args.device.type == "cuda"
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # as qsnn.runs.experiment sets it for training
        torch.cuda.set_device(args.device.index or 0)  # the benchmark clock synchronises the current device
    cuda = f" | CUDA {torch.version.cuda}, cudnn.benchmark on" if on_cuda else ""
    features = "" if on_cuda else f" | {hardware.cpu_features()}"
    header = (f"device: {device_description(args.device)}{features} | torch {torch.__version__}"
              f" | snntorch {snntorch.__version__}"
              f" | brevitas {brevitas.__version__}{cuda}"
              f" | threads {torch.get_num_threads()} (interop {torch.get_num_interop_threads()}) | malloc: {malloc}"
              f" | warm-up {args.warmup}, timed {args.iters} per path and phase")
    log(header)
    meter = PeakMemory(args.device)
    report = dict(timings=[], checks=[], grads=[], epochs=[], notes=[], profiles=[], precisions=[])
    log("measuring the host's matmul peaks")
    report["peaks"] = hardware.matmul_peaks(args.device)
    if args.full_epoch and "mnist" not in args.configs:
        report["notes"].append("the full epoch is an MNIST epoch: add mnist to --configs to time it")
    for name in args.configs:
        bench_config(name, args, meter, report)
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
    print_report(header, report, meter, args)


if __name__ == "__main__":
    main()
