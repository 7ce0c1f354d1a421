"""DVS128 Gesture: the paper's event-camera QSNN (4-bit weights, periodic cosine LR), via tonic.

    python dvs128_gesture/run.py --num_steps_train 150 --num_trials 1
    python dvs128_gesture/run.py --help        # every key with its default
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing
from qsnn import main  # noqa: E402

config = {
    "dataset": "dvs128_gesture",  # dvs128_gesture (the only dataset this run.py is for)
    "exp_name": "",  # run folder name; empty = <dataset>_<fp32|Nbit>_<scheduler>
    "output_dir": "runs",  # where run folders go (relative: from the repository root; for an installed qsnn, from the current folder)
    "data_dir": "data",  # where tonic's DVSGesture folder is (relative: as output_dir)
    # network and input
    "num_bits": 4,  # weight bit width (1..16), or a list: each conv layer's then the head's (--num_bits 8,4,4); None = full-precision float weights
    "num_steps_train": 100,  # 3 ms frames per training sample (the first 300 ms)
    "num_steps_test": 600,  # 3 ms frames per test sample (the first 1.8 s)
    "beta": 0.614,  # LIF membrane decay per step
    "threshold": 0.427,  # LIF firing threshold
    "slope": 4.413,  # fast-sigmoid surrogate gradient slope
    "dropout": 0.203,  # dropout before the output layer
    "batch_norm": False,  # BatchNorm2d after each conv + pool
    "state_bits": None,  # LIF membrane bit width (snnTorch state_quant, levels -thr..1.2 thr); None = float
    # the neuron (the paper's: snnTorch Leaky, reset by subtraction, fixed beta and threshold, fast sigmoid)
    "neuron": "leaky",  # leaky | synaptic (snnTorch Synaptic: a synaptic current decaying by alpha feeds the membrane)
    "alpha": 0.9,  # synaptic: synaptic current decay per step
    "reset_mechanism": "subtract",  # after a spike: subtract (the threshold) | zero | none
    "surrogate": "fast_sigmoid",  # spike gradient: fast_sigmoid, sigmoid (both use slope) | atan (surrogate_alpha) | triangular | straight_through
    "surrogate_alpha": 2.0,  # atan: the surrogate's alpha
    "learn_beta": False,  # train beta with the weights
    "learn_threshold": False,  # train the threshold with the weights
    "learn_per_channel": False,  # learned beta/threshold: one per output channel (conv) or class (head) instead of one per layer
    # conv layers: conv (no bias, zero padding) -> average pool -> BatchNorm -> LIF, then the linear head
    "conv_channels": None,  # output channels of each conv layer, e.g. [16, 32, 64] or --conv_channels 16,32,64 (three layers); None = the paper's 16, 32
    "kernel_size": 5,  # conv kernel side: one value for every conv layer, or one per layer (--kernel_size 5,3,3)
    "padding": 0,  # zero padding of each conv's input: one value, or one per conv layer
    "pool": 2,  # average-pool size after each conv (1 = no pooling): one value, or one per conv layer
    # loss and optimisation
    "correct_rate": 0.8,  # mse_count_loss: target firing rate of the correct class
    "incorrect_rate": 0.2,  # mse_count_loss: target firing rate of the other classes
    "lr": 2.634e-3,  # learning rate (the peak of the periodic schedules)
    "optimizer": "adam",  # adam (the paper's, betas 0.9/0.999) | adamw | sgd (with momentum)
    "weight_decay": 0.0,  # weight decay (adamw: decoupled; adam, sgd: L2 in the gradient)
    "momentum": 0.9,  # sgd: momentum
    "batch_size": 16,  # training mini-batch
    "test_batch_size": 32,  # evaluation mini-batch (does not change results)
    "grad_clip": 1.0,  # clip the gradient norm to this value; None = off
    "weight_clip": 1.0,  # clamp weights to [-w, w] after every step; None = off
    # learning-rate schedule, stepped every iteration
    "scheduler": "cosine",  # cosine | cosine_restarts | cyclic | step | constant | onecycle | warmup_cosine
    "t_max": 735,  # cosine: iterations from lr down to eta_min (then back up); t_max_epochs overrides it
    "t_max_epochs": None,  # cosine: the same fall in epochs; None = use t_max
    "eta_min": 0.0,  # cosine, cosine_restarts, warmup_cosine: lowest lr
    "t_0": 735,  # cosine_restarts: iterations of the first period; t_0_epochs overrides it
    "t_0_epochs": None,  # cosine_restarts: the first period in epochs; None = use t_0
    "t_mult": 1,  # cosine_restarts: growth factor of each next period
    "base_lr": 2.634e-4,  # cyclic: lower bound (the upper bound is lr)
    "step_size_up": 735,  # cyclic: iterations from base_lr up to lr (and back down); step_size_up_epochs overrides it
    "step_size_up_epochs": None,  # cyclic: the rise in epochs; None = use step_size_up
    "step_size": 735,  # step: iterations between lr decays; step_size_epochs overrides it
    "step_size_epochs": None,  # step: the time between decays in epochs; None = use step_size
    "gamma": 0.5,  # step: lr decay factor
    "pct_start": 0.3,  # onecycle: fraction of all iterations spent rising to lr
    "div_factor": 25.0,  # onecycle: the start lr is lr / div_factor
    "final_div_factor": 1e4,  # onecycle: the final lr is lr / div_factor / final_div_factor
    "warmup_epochs": 1.0,  # warmup_cosine: epochs of linear warmup from 0 to lr, then one cosine fall to eta_min
    # protocol
    "epochs": 500,  # maximum epochs per trial
    "patience": 100,  # early stopping: epochs without a better test (or validation) accuracy
    "num_trials": 3,  # trials; trial k is seeded with seed + k
    "seed": 0,  # base random seed
    "val_split": 0.0,  # fraction of training data held out to select the model (0 = paper: test)
    # execution
    "device": "auto",  # auto (CUDA if available) | cpu | cuda | cuda:N
    "execution": "fast",  # fast (layer by layer over time; same maths, tested equal) | reference (per-step loop)
    "time_chunk": 0,  # fast: time steps per conv call; 0 = all at once (fastest measured on CPU)
    "tensor_data": True,  # batch from the frame cache held as tensors; False = DataLoader
    "num_workers": 0,  # DataLoader worker processes (only with tensor_data False)
    "sync_batch_norm": False,  # under torchrun: BatchNorm statistics over all ranks (SyncBatchNorm)
    "compute_precision": "fp32",  # fp32 | bf16: spike-fed layers on integer codes with exact sums (CPU: oneDNN int8), their gradients in bf16; LIF, BatchNorm, first layer stay fp32
    # analysis
    "snapshots": "off",  # save the model for landscape.py: off | epoch (every epoch end) | extrema (LR troughs, peaks)
}

if __name__ == "__main__":
    main(config)
