"""Speed of the reference and the fast execution of the paper's QSNNs, in one process.

For the MNIST config (batch 128, 100 steps, 4-bit) and the DVS128 Gesture config (batch 16,
100 steps), on synthetic inputs with a fixed seed:

- how far the fast path's outputs are from the reference's on the same weights and input
  (eval mode, per layer), and how far its gradients are (train mode, dropout off);
- training iterations (forward + mse_count_loss + backward + Adam step, plus the DVS config's
  gradient-norm clip and weight clamp) and evaluation forwards (eval mode, no_grad), timed
  alternately (ref, fast, ref, fast, ...) after a warm-up, so that drift hits every path alike;
- the peak extra memory of each path's iteration;
- on CUDA, one full MNIST training epoch (469 batches of 128 from 60,000 random uint8 images
  held on the GPU, batched by `qsnn.data.TensorBatches`, through `qsnn.train.train_epoch`).

    python bench/bench_speed.py                          # defaults; prints a markdown table
    python bench/bench_speed.py --steps 20 --iters 2 --warmup 1   # a quick look
    python bench/bench_speed.py --time-chunks 0,1,10,all --compile --profile
    python bench/bench_speed.py --help

See bench/README.md for how to read the output.
"""
import argparse
import contextlib
import copy
import ctypes
import gc
import platform
import re
import statistics
import sys
import time
import warnings
from pathlib import Path

START = time.perf_counter()  # before torch and Brevitas load, which takes seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

import torch  # noqa: E402
import snntorch  # noqa: E402
import snntorch.functional as SF  # noqa: E402
import brevitas  # noqa: E402

import qsnn.models as qmodels  # noqa: E402
from qsnn.data import TensorBatches  # noqa: E402
from qsnn.models import ARCHITECTURES, QSNN  # noqa: E402
from qsnn.train import clamp_weights, run_network, train_epoch  # noqa: E402

try:  # training (qsnn.experiment.run_experiment) keeps freed CPU memory in the process; so does the bench
    from qsnn.memory import keep_freed_memory  # noqa: E402
except ImportError:  # an older checkout
    keep_freed_memory = None

# The paper's settings (mnist/run.py, dvs128_gesture/run.py). Inputs are [B, ...] as the loaders
# give them; qsnn.train.run_network turns an event batch [B, T, ...] time-first, as training does.
CONFIGS = {
    "mnist": dict(kind="image", batch=128, steps=100, lr=5.4e-3, grad_clip=None, weight_clip=None,
                  model=dict(num_bits=4, beta=0.994, threshold=2.915, slope=13.84, dropout=0.003168,
                             batch_norm=True)),
    "dvs": dict(kind="event", batch=16, steps=100, lr=2.634e-3, grad_clip=1.0, weight_clip=1.0,
                model=dict(num_bits=4, beta=0.614, threshold=0.427, slope=4.413, dropout=0.203,
                           batch_norm=False)),
}
EVENT_DENSITY = 0.3  # DVS input: Bernoulli(0.3) events per pixel, polarity and step (--event-density)
EPOCH_SAMPLES = 60_000  # MNIST's training set
SEED = 0


# ---------------------------------------------------------------------------------------------
# Device, synchronisation, memory


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _proc_status_kib(key):
    with open("/proc/self/status") as f:
        match = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    return int(match.group(1)) if match else None


class MemoryMeter:
    """Peak extra memory of a region, over what was resident when it started.

    CUDA: torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus memory_allocated
    at the start (tensors only; the caching allocator's reserve is not counted).
    CPU (Linux): the process's peak resident set size (VmHWM) after resetting it through
    /proc/self/clear_refs, minus the resident size at the start, measured after gc and
    malloc_trim so that memory freed by an earlier path is handed back first. It counts every
    allocation of the process (PyTorch, oneDNN scratch, Python), not tensors only, and it can
    still under-count when the allocator reuses memory that it kept. Elsewhere: n/a.
    """

    def __init__(self, device):
        self.device = device
        self.kind = None
        self._trim = None
        if device.type == "cuda":
            self.kind = "cuda"
        elif sys.platform.startswith("linux"):
            try:
                self._reset_hwm()
                if _proc_status_kib("VmHWM") is not None:
                    self.kind = "rss"
            except OSError:
                pass
            try:
                self._trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass

    @property
    def label(self):
        return {"cuda": "peak +MiB (CUDA alloc.)", "rss": "peak +MiB (RSS)"}.get(self.kind, "peak mem")

    @staticmethod
    def _reset_hwm():
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # "reset the peak resident set size" (Linux >= 4.0)

    def start(self):
        if self.kind == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        elif self.kind == "rss":
            gc.collect()
            if self._trim is not None:
                self._trim(0)
            self._reset_hwm()
            self._base = _proc_status_kib("VmRSS") * 1024

    def stop(self):
        """Peak extra bytes since start(), or None when not measurable."""
        if self.kind == "cuda":
            sync(self.device)
            return torch.cuda.max_memory_allocated(self.device) - self._base
        if self.kind == "rss":
            return max(0, _proc_status_kib("VmHWM") * 1024 - self._base)
        return None


def device_description(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        if found:
            name = found.group(1).strip()
    except OSError:
        pass
    return f"CPU ({name})"


# ---------------------------------------------------------------------------------------------
# Workloads


def make_batch(cfg, steps, device, generator, density=EVENT_DENSITY):
    """Synthetic (inputs, labels): MNIST uniform [0, 1] images, DVS Bernoulli events [B, T, 2, 32, 32]."""
    arch = ARCHITECTURES[cfg["kind"]]
    side, channels = arch["input_size"], arch["in_channels"]
    if cfg["kind"] == "image":
        x = torch.rand(cfg["batch"], channels, side, side, generator=generator)
    else:
        x = (torch.rand(cfg["batch"], steps, channels, side, side, generator=generator) < density).float()
    y = torch.randint(0, arch["num_classes"], (cfg["batch"],), generator=generator)
    return x.to(device), y.to(device)


def model_input(x, cfg):
    """The arguments QSNN.forward gets for a loader batch (as qsnn.train.run_network passes them)."""
    return (x,) if cfg["kind"] == "image" else (x.transpose(0, 1),)


class Runner:
    """One way of running the network: its own copy of the weights and its own optimizer."""

    def __init__(self, label, module, cfg, execution, time_chunk=0, compiled=False):
        self.label, self.cfg = label, cfg
        self.module = module
        module.execution, module.time_chunk = execution, time_chunk
        # dynamic=False: the shapes never change here, and dynamic-shape tracing of the LIF loop can fail.
        self.model = torch.compile(module, dynamic=False) if compiled else module
        self.optimizer = torch.optim.Adam(module.parameters(), lr=cfg["lr"], betas=(0.9, 0.999))
        self.times = {"train": [], "eval": []}
        self.memory = {"train": [], "eval": []}
        self.warmup_s = {"train": 0.0, "eval": 0.0}


def train_iteration(path, x, y, steps, loss_fn):
    """What qsnn.train.train_epoch does per batch (without the LR scheduler and logging)."""
    cfg = path.cfg
    loss = loss_fn(run_network(path.model, x, steps), y)
    path.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg["grad_clip"] is not None:
        torch.nn.utils.clip_grad_norm_(path.module.parameters(), cfg["grad_clip"])
    path.optimizer.step()
    if cfg["weight_clip"] is not None:
        clamp_weights(path.module, cfg["weight_clip"])


def eval_iteration(path, x, y, steps, loss_fn):
    with torch.no_grad():
        run_network(path.model, x, steps)


def time_phase(paths, phase, x, y, steps, loss_fn, warmup, iters, device, meter, log, notes):
    """Warm up, time every path `iters` times alternating between paths, then one memory pass each.

    The memory pass is a separate, untimed iteration: measuring CPU memory hands freed memory
    back to the system first (malloc_trim), which would add page faults to a timed iteration.
    """
    step = train_iteration if phase == "train" else eval_iteration
    for path in paths:
        path.module.train(phase == "train")

    def attempt(path):
        try:
            step(path, x, y, steps, loss_fn)
            return True
        except Exception as e:  # only torch.compile is allowed to fail; the others are bugs
            if not path.label.startswith("fast+compile"):
                raise
            message = f"{path.label}: {phase} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); dropped"
            log(f"  {message}")
            notes.append(message)
            paths.remove(path)
            return False

    for i in range(warmup + iters):
        for path in list(paths):
            sync(device)
            start = time.perf_counter()
            if not attempt(path):
                continue
            sync(device)
            elapsed = time.perf_counter() - start
            if i < warmup:
                path.warmup_s[phase] += elapsed
            else:
                path.times[phase].append(elapsed)
        done = "warm-up" if i < warmup else f"timed {i - warmup + 1}/{iters}"
        if i >= warmup and (i - warmup + 1) % max(1, iters // 5) and i != warmup + iters - 1:
            continue  # about five progress lines per phase
        log(f"  {phase} {done}: " + ", ".join(
            f"{p.label} {(p.times[phase] or [p.warmup_s[phase]])[-1]:.3f}s" for p in paths))
    for path in list(paths):
        meter.start()
        if attempt(path):
            path.memory[phase].append(meter.stop())


# ---------------------------------------------------------------------------------------------
# Agreement of the fast path with the reference


@torch.no_grad()
def all_layers(path, x, cfg, steps):
    """(spikes, membrane) of every layer, eval mode."""
    path.module.eval()
    kwargs = dict(num_steps=steps) if cfg["kind"] == "image" else {}
    return path.model(*model_input(x, cfg), record=True, **kwargs)


@torch.no_grad()
def output_differences(layers_ref, layers_fast):
    """Per layer: spikes of the reference, differing spikes, max |spike-count diff|, max |membrane diff|.

    A spike that flips (a membrane within rounding of the threshold) moves that membrane by about
    one threshold from then on, so the membrane difference is also given before the first step
    at which any layer's spikes differ: there it shows the rounding alone.
    """
    steps = layers_ref[0][0].shape[0]
    first_flip = steps
    for (spk_r, _), (spk_f, _) in zip(layers_ref, layers_fast):
        differs = (spk_r != spk_f).flatten(1).any(1).nonzero()
        if len(differs):
            first_flip = min(first_flip, int(differs[0]))
    rows = []
    names = [f"conv{i + 1}" for i in range(len(layers_ref) - 1)] + ["output"]
    for name, (spk_r, mem_r), (spk_f, mem_f) in zip(names, layers_ref, layers_fast):
        row = dict(layer=name, spikes=int(spk_r.sum()), elements=spk_r.numel(),
                   differing=int((spk_r != spk_f).sum()),
                   count=float((spk_r.sum(0) - spk_f.sum(0)).abs().max()),
                   mem=float((mem_r - mem_f).abs().max()),
                   mem_before=float((mem_r[:first_flip] - mem_f[:first_flip]).abs().max()) if first_flip else None,
                   first_flip=first_flip if first_flip < steps else None)
        if name == "output":
            row["predictions"] = int((spk_r.sum(0).argmax(-1) != spk_f.sum(0).argmax(-1)).sum())
        rows.append(row)
    return rows


def gradient_difference(base, x, y, cfg, steps, loss_fn, time_chunk):
    """Train mode with dropout off: loss difference, and max |grad diff| / max |grad| over parameters."""
    grads, losses = {}, {}
    for execution in ("reference", "fast"):
        module = copy.deepcopy(base)
        module.execution, module.time_chunk = execution, time_chunk
        module.head.dropout.p = 0.0
        module.train()
        loss = loss_fn(run_network(module, x, steps), y)
        loss.backward()
        losses[execution] = float(loss)
        grads[execution] = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    worst = 0.0
    for name, g_ref in grads["reference"].items():
        scale = float(g_ref.abs().max())
        diff = float((g_ref - grads["fast"][name]).abs().max())
        worst = max(worst, diff / scale if scale > 0 else diff)
    return abs(losses["reference"] - losses["fast"]), worst, losses["reference"]


# ---------------------------------------------------------------------------------------------
# Profile


@contextlib.contextmanager
def labelled_regions():
    """Wrap qsnn.models' helpers in profiler ranges (in this process only, while profiling)."""
    names = ["lif_sequence", "conv_over_time", "effective_weight", "fold_avg_pool",
             "batch_norm_static", "batch_norm_over_time"]
    originals = {n: getattr(qmodels, n) for n in names if hasattr(qmodels, n)}

    def wrap(name, fn):
        def wrapped(*args, **kwargs):
            with torch.profiler.record_function(f"qsnn.{name}"):
                return fn(*args, **kwargs)
        return wrapped

    for name, fn in originals.items():
        setattr(qmodels, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(qmodels, name, fn)


def profile_fast(name, base, cfg, x, y, steps, loss_fn, device, time_chunk, iters):
    """torch.profiler over a few fast training iterations: top ops by self time, and a breakdown (markdown)."""
    lines = []
    out = lines.append
    from torch.profiler import ProfilerActivity, profile, record_function

    path = Runner("fast", copy.deepcopy(base), cfg, "fast", time_chunk)
    path.module.train()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with labelled_regions():
        train_iteration(path, x, y, steps, loss_fn)  # warm-up
        sync(device)
        with profile(activities=activities) as prof:
            for _ in range(iters):
                with record_function("bench.forward+loss"):
                    loss = loss_fn(run_network(path.model, x, steps), y)
                path.optimizer.zero_grad(set_to_none=True)
                with record_function("bench.backward"):
                    loss.backward()
                with record_function("bench.optimizer"):
                    if cfg["grad_clip"] is not None:
                        torch.nn.utils.clip_grad_norm_(path.module.parameters(), cfg["grad_clip"])
                    path.optimizer.step()
                    if cfg["weight_clip"] is not None:
                        clamp_weights(path.module, cfg["weight_clip"])
            sync(device)
    events = prof.key_averages()
    on_cuda = device.type == "cuda"
    sort = "self_cuda_time_total" if on_cuda else "self_cpu_time_total"
    try:
        table = events.table(sort_by=sort, row_limit=15)
    except Exception:  # newer torch names it self_device_time_total
        sort = "self_device_time_total"
        table = events.table(sort_by=sort, row_limit=15)
    out(f"\n### Profile: {name}, fast path (time_chunk={time_chunk}), {iters} training iterations, top 15 by {sort}\n")
    out("```")
    out(table)
    out("```")
    # Inclusive time of the regions: forward helpers, autograd backward nodes, the bench's phases.
    # On CUDA the device column (kernel time attributed to the region) is the one that counts;
    # CPU time there is mostly launch overhead.
    def device_us(e):
        return getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0) or 0

    measure = device_us if on_cuda else (lambda e: e.cpu_time_total)
    if on_cuda:  # all kernel time (backward kernels are launched from autograd's own thread)
        total = sum(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0
                    for e in events) or 1
    else:
        total = sum(e.cpu_time_total for e in events if e.key.startswith("bench.")) or 1
    rows = []
    for e in events:
        if e.key.startswith(("bench.", "qsnn.", "autograd::engine::evaluate_function: ")):
            rows.append((measure(e), e.key.replace("autograd::engine::evaluate_function: ", "backward: "), e))
    rows.sort(key=lambda r: r[0], reverse=True)
    what = "device (kernel)" if on_cuda else "CPU"
    of = "all kernel time" if on_cuda else "forward+loss, backward and optimizer together"
    out(f"\nInclusive {what} time by region ({name}; % of {of}; regions nest, so the rows do not add up):\n")
    out("| region | calls | CPU ms | " + ("device ms | " if on_cuda else "") + "% |")
    out("|---|---:|---:|" + ("---:|" if on_cuda else "") + "---:|")
    for value, key, e in rows[:20]:
        device_col = f" {device_us(e) / 1000:.1f} |" if on_cuda else ""
        out(f"| {key} | {e.count} | {e.cpu_time_total / 1000:.1f} |{device_col} {100 * value / total:.1f} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Full epoch (CUDA by default)


def full_epoch(base, cfg, steps, device, execution, time_chunk, log):
    """One MNIST epoch through qsnn.train.train_epoch on random uint8 images held on the device."""
    from torch.optim import lr_scheduler

    generator = torch.Generator().manual_seed(SEED)
    images = torch.randint(0, 256, (EPOCH_SAMPLES, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (EPOCH_SAMPLES,), generator=generator)
    loader = TensorBatches(images.to(device), labels.to(device), cfg["batch"], shuffle=True, generator=generator)
    module = copy.deepcopy(base)
    module.execution, module.time_chunk = execution, time_chunk
    optimizer = torch.optim.Adam(module.parameters(), lr=cfg["lr"], betas=(0.9, 0.999))
    scheduler = lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    loss_fn = SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)
    train_cfg = dict(num_steps=steps, grad_clip=cfg["grad_clip"], weight_clip=cfg["weight_clip"])
    meter = MemoryMeter(device)
    log(f"  full epoch, {execution}: {len(loader)} iterations ...")
    meter.start()
    sync(device)
    start = time.perf_counter()
    losses, _ = train_epoch(module, loader, optimizer, scheduler, loss_fn, train_cfg, device, 1, lambda: False)
    sync(device)
    seconds = time.perf_counter() - start
    return seconds, len(losses), meter.stop()


# ---------------------------------------------------------------------------------------------
# Report


def fmt_mib(values):
    values = [v for v in values if v is not None]
    return f"{max(values) / 2**20:.0f}" if values else "n/a"


def fmt_ratio(ratio):
    return "–" if ratio is None else f"{ratio:.2f}"


def fmt_s(seconds):
    return f"{seconds:.4f}" if seconds < 0.1 else f"{seconds:.3f}" if seconds < 10 else f"{seconds:.1f}"


def parse_time_chunks(text, steps):
    """'0,1,10,all' -> [(label, value)]; 'all' = every step in one conv call."""
    chunks = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        value = steps if item == "all" else int(item)
        if value < 0:
            raise SystemExit(f"--time-chunks: {item!r} is negative")
        if (item, value) not in chunks:
            chunks.append((item, value))
    return chunks


def chunk_label(item, value, device):
    if value == 0:
        return "fast (time_chunk=0: all steps)"
    return f"fast (time_chunk={item})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto (CUDA if available) | cpu | cuda | cuda:N")
    parser.add_argument("--iters", type=int, default=None,
                        help="timed iterations per path and phase (default 5 on CPU, 30 on CUDA)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed iterations per path and phase first (default 1 on CPU, 5 on CUDA)")
    parser.add_argument("--steps", type=int, default=None, help="time steps per sample (default: the paper's 100)")
    parser.add_argument("--configs", default="mnist,dvs", help="comma-separated: mnist, dvs")
    parser.add_argument("--time-chunks", default="0",
                        help="fast-path time_chunk values to time, e.g. 0,1,10,all (0 = the model's auto; all = T)")
    parser.add_argument("--compile", action="store_true",
                        help="also time the fast path under torch.compile (skipped if it fails)")
    parser.add_argument("--profile", action="store_true",
                        help="torch.profiler over a few fast training iterations per config")
    parser.add_argument("--profile-iters", type=int, default=3, help="training iterations under the profiler (default 3)")
    parser.add_argument("--full-epoch", choices=("auto", "yes", "no"), default="auto",
                        help="time one full MNIST training epoch (auto: on CUDA only)")
    parser.add_argument("--full-epoch-reference", action="store_true", help="time the full epoch for the reference path too")
    parser.add_argument("--event-density", type=float, default=EVENT_DENSITY,
                        help=f"DVS input: probability of an event per pixel, polarity and step (default {EVENT_DENSITY})")
    parser.add_argument("--no-reference", action="store_true",
                        help="time the fast path(s) only (no × ref column, no agreement checks), "
                             "e.g. to pick --time-chunks")
    parser.add_argument("--no-check", action="store_true", help="skip the output/gradient agreement checks")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--malloc-default", action="store_true",
                        help="leave glibc's malloc as it is, instead of qsnn.memory.keep_freed_memory() as training does")
    args = parser.parse_args()

    wall_start = START
    warnings.filterwarnings("ignore", category=UserWarning)  # Brevitas/snnTorch deprecation chatter
    if args.threads:
        torch.set_num_threads(args.threads)
    if keep_freed_memory is None:
        malloc = "malloc: default (no qsnn.memory)"
    elif args.malloc_default:
        malloc = "malloc: default (--malloc-default)"
    else:
        malloc = "malloc: keep freed memory" if keep_freed_memory() else "malloc: default (keep_freed_memory n/a here)"
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available in this torch build or machine")
    on_cuda = device.type == "cuda"
    iters = args.iters if args.iters is not None else (30 if on_cuda else 5)
    warmup = args.warmup if args.warmup is not None else (5 if on_cuda else 1)
    if iters < 1 or warmup < 0:
        raise SystemExit("--iters must be >= 1 and --warmup >= 0")
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in names if c not in CONFIGS]
    if unknown or not names:
        raise SystemExit(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    meter = MemoryMeter(device)
    want_epoch = args.full_epoch == "yes" or (args.full_epoch == "auto" and on_cuda)
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # as qsnn.experiment sets it for training

    def log(message):
        print(f"[{time.perf_counter() - wall_start:7.1f}s] {message}", file=sys.stderr, flush=True)

    header = (f"device: {device_description(device)} | torch {torch.__version__} | snntorch {snntorch.__version__}"
              f" | brevitas {brevitas.__version__}"
              f"{f' | CUDA {torch.version.cuda}, cudnn.benchmark on' if on_cuda else ''}"
              f" | threads {torch.get_num_threads()}"
              f" (interop {torch.get_num_interop_threads()}) | {malloc}"
              f" | warm-up {warmup}, timed {iters} per path and phase")
    log(header)

    results, checks, grad_checks, epochs, notes, profiles = [], [], [], [], [], []
    if want_epoch and "mnist" not in names:
        notes.append("the full epoch is an MNIST epoch: add mnist to --configs to time it")
    for name in names:
        cfg = CONFIGS[name]
        steps = args.steps or cfg["steps"]
        chunks = parse_time_chunks(args.time_chunks, steps) or [("0", 0)]
        torch.manual_seed(SEED)
        base = QSNN(**ARCHITECTURES[cfg["kind"]], **cfg["model"]).to(device)
        generator = torch.Generator().manual_seed(SEED)
        x, y = make_batch(cfg, steps, device, generator, args.event_density)
        loss_fn = SF.mse_count_loss(correct_rate=0.8, incorrect_rate=0.2)
        paths = [] if args.no_reference else [Runner("reference", copy.deepcopy(base), cfg, "reference")]
        paths += [Runner(chunk_label(item, value, device), copy.deepcopy(base), cfg, "fast", value)
                  for item, value in chunks]
        if args.compile:
            paths.append(Runner(f"fast+compile (time_chunk={chunks[0][0]})", copy.deepcopy(base), cfg,
                               "fast", chunks[0][1], compiled=True))
        log(f"{name}: batch {cfg['batch']}, {steps} steps, paths: {', '.join(p.label for p in paths)}")

        for phase in ("train", "eval"):
            log(f"{name}: timing {phase}")
            time_phase(paths, phase, x, y, steps, loss_fn, warmup, iters, device, meter, log, notes)
            ref_median = None if args.no_reference else statistics.median(paths[0].times[phase])
            for path in paths:
                if not path.times[phase]:
                    continue
                median = statistics.median(path.times[phase])
                results.append(dict(config=f"{name} (B={cfg['batch']}, T={steps})", phase=phase, path=path.label,
                                    median=median, low=min(path.times[phase]), high=max(path.times[phase]),
                                    speedup=ref_median / median if ref_median else None,
                                    memory=fmt_mib(path.memory[phase])))
                if path.label.startswith("fast+compile"):
                    notes.append(f"{name} {phase}: torch.compile warm-up (compilation included) took "
                                 f"{path.warmup_s[phase]:.1f} s")

        if not (args.no_check or args.no_reference):
            # On the reference path's weights after its training iterations (a fresh network
            # hardly spikes, which would make the comparison vacuous), copied into every fast path.
            log(f"{name}: output agreement (eval mode)")
            layers_ref = all_layers(paths[0], x, cfg, steps)
            for fast in paths[1:]:
                fast.module.load_state_dict(paths[0].module.state_dict())
                try:
                    rows = output_differences(layers_ref, all_layers(fast, x, cfg, steps))
                except Exception as e:
                    if not fast.label.startswith("fast+compile"):
                        raise
                    notes.append(f"{name}: {fast.label} failed in eval ({type(e).__name__}); not compared")
                    continue
                checks += [dict(config=name, path=fast.label, **r) for r in rows]
                silent = [r["layer"] for r in rows if r["spikes"] == 0]
                if silent and fast is paths[1]:
                    notes.append(f"{name}: no reference spikes in {', '.join(silent)} on this synthetic batch, so the "
                                 "spike columns there compare silence with silence; the membrane column still compares"
                                 + (" (try a larger --event-density)" if cfg["kind"] == "event" else ""))
            log(f"{name}: gradient agreement (train mode, dropout off)")
            loss_diff, grad_rel, loss_ref = gradient_difference(paths[0].module, x, y, cfg, steps, loss_fn,
                                                                chunks[0][1])
            grad_checks.append(dict(config=name, loss=loss_ref, loss_diff=loss_diff, grad_rel=grad_rel))

        if name == "mnist" and want_epoch:
            for execution in ("fast", "reference") if args.full_epoch_reference else ("fast",):
                seconds, count, peak = full_epoch(base, cfg, steps, device, execution, chunks[0][1], log)
                epochs.append(dict(path=execution, seconds=seconds, iterations=count, steps=steps,
                                   memory=fmt_mib([peak])))

        if args.profile:
            log(f"{name}: profiling the fast path")
            profiles.append(profile_fast(name, base, cfg, x, y, steps, loss_fn, device, chunks[0][1],
                                         args.profile_iters))

        del paths, base, x, y
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()

    # The report: markdown on stdout.
    print()
    print(header)
    print()
    print(f"| config | phase | path | s/it median [min–max] | it/s | × ref | {meter.label} |")
    print("|---|---|---|---|---:|---:|---:|")
    for r in results:
        print(f"| {r['config']} | {r['phase']} | {r['path']} | {fmt_s(r['median'])} [{fmt_s(r['low'])}–{fmt_s(r['high'])}]"
              f" | {1 / r['median']:.2f} | {fmt_ratio(r['speedup'])} | {r['memory']} |")
    print()
    print("train = forward + mse_count_loss + backward + Adam step (DVS: + grad-norm clip 1.0 and weight clamp 1.0);"
          " eval = forward under no_grad in eval mode, same batch. × ref = reference median / this median.")
    if meter.kind == "cuda":
        print("peak +MiB (one extra, untimed iteration per path): torch.cuda.max_memory_allocated during it minus "
              "what was allocated before it (weights, Adam state, the batch and the last gradients stay resident "
              "and are not counted; neither is the caching allocator's reserve).")
    elif meter.kind == "rss":
        print("peak +MiB (one extra, untimed iteration per path): the process's peak resident set size during it "
              "(VmHWM, reset through /proc/self/clear_refs) minus its resident size before it (after gc and "
              "malloc_trim); all of the process's memory, not only tensors (oneDNN scratch, Python objects), "
              "give or take a few MiB.")
    else:
        print("peak mem: n/a (no CUDA, and no /proc/self/clear_refs to reset the peak RSS on this system).")

    if checks:
        print()
        print(f"Fast vs reference on the same weights (the reference path's after its {warmup + iters} training"
              " iterations, copied into each fast path) and the same batch, eval mode (dropout off):")
        print()
        print("| config | fast path | layer | spikes (ref) | differing spikes | max abs spike-count diff"
              " | max abs membrane diff | ... before the first differing spike | differing predictions |")
        print("|---|---|---|---:|---:|---:|---:|---:|---:|")
        for c in checks:
            before = "n/a (step 0)" if c["mem_before"] is None else f"{c['mem_before']:.3g}" + (
                f" (steps < {c['first_flip']})" if c["first_flip"] is not None else " (none differ)")
            print(f"| {c['config']} | {c['path']} | {c['layer']} | {c['spikes']} / {c['elements']} | {c['differing']}"
                  f" | {c['count']:g} | {c['mem']:.3g} | {before} | {c.get('predictions', '')} |")
    if grad_checks:
        print()
        print("| config | train loss (ref) | abs loss diff | max abs grad diff / max abs grad (worst parameter) |")
        print("|---|---:|---:|---:|")
        for g in grad_checks:
            print(f"| {g['config']} | {g['loss']:.6g} | {g['loss_diff']:.3g} | {g['grad_rel']:.3g} |")
        print("(same weights and batch; train mode with dropout set to 0, so BatchNorm uses batch statistics;"
              " one forward + backward per path)")
    if epochs:
        print()
        print(f"Full MNIST epoch ({EPOCH_SAMPLES:,} random uint8 images on the device, batch {CONFIGS['mnist']['batch']},"
              " qsnn.data.TensorBatches + qsnn.train.train_epoch, data loading included):")
        print()
        print(f"| path | steps | iterations | seconds | it/s | {meter.label} |")
        print("|---|---:|---:|---:|---:|---:|")
        for e in epochs:
            print(f"| {e['path']} | {e['steps']} | {e['iterations']} | {e['seconds']:.1f}"
                  f" | {e['iterations'] / e['seconds']:.2f}"
                  f" | {e['memory']} |")
    for note in notes:
        print(f"\nnote: {note}")
    for text in profiles:
        print(text)
    print(f"\nbench/bench_speed.py took {time.perf_counter() - wall_start:.0f} s in all.")


if __name__ == "__main__":
    main()
