"""FashionMNIST: the paper's QSNN (4-bit weights, periodic cosine LR). Edit the dict or override any key:

    python fashion_mnist/run.py --num_bits None --num_trials 1
    python fashion_mnist/run.py --help        # every key with its default
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing
from qsnn import main  # noqa: E402

config = {
    "dataset": "fashion_mnist",  # fashion_mnist (the only dataset this run.py is for)
    "exp_name": "",  # run folder name; empty = <dataset>_<fp32|Nbit>_<scheduler>
    "output_dir": "runs",  # where run folders go (relative paths: from the repository root)
    "data_dir": "data",  # where datasets are downloaded/read (relative: from the repository root)
    # network
    "num_bits": 4,  # weight bit width (1..16); None = full-precision float weights
    "num_steps": 100,  # time steps per sample; the image is the input current at every step
    "beta": 0.974,  # LIF membrane decay per step
    "threshold": 2.473,  # LIF firing threshold
    "slope": 5.5565,  # fast-sigmoid surrogate gradient slope
    "dropout": 0.073556,  # dropout before the output layer
    "batch_norm": True,  # BatchNorm2d after each conv + pool
    "state_bits": None,  # LIF membrane bit width (snnTorch state_quant, levels -thr..1.2 thr); None = float
    # loss and optimisation
    "correct_rate": 0.8,  # mse_count_loss: target firing rate of the correct class
    "incorrect_rate": 0.2,  # mse_count_loss: target firing rate of the other classes
    "lr": 2.908e-3,  # Adam learning rate (the peak of the periodic schedules)
    "batch_size": 128,  # training mini-batch
    "test_batch_size": 1000,  # evaluation mini-batch (does not change results)
    "grad_clip": None,  # clip the gradient norm to this value; None = off
    "weight_clip": None,  # clamp weights to [-w, w] after every step; None = off
    # learning-rate schedule, stepped every iteration
    "scheduler": "cosine",  # cosine | cosine_restarts | cyclic | step | constant
    "t_max": 4690,  # cosine: iterations from lr down to eta_min (then back up): 10 epochs
    "eta_min": 0.0,  # cosine, cosine_restarts: lowest lr
    "t_0": 4690,  # cosine_restarts: iterations of the first period
    "t_mult": 1,  # cosine_restarts: growth factor of each next period
    "base_lr": 2.908e-4,  # cyclic: lower bound (the upper bound is lr)
    "step_size_up": 4690,  # cyclic: iterations from base_lr up to lr (and back down)
    "step_size": 4690,  # step: iterations between lr decays
    "gamma": 0.5,  # step: lr decay factor
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
    "tensor_data": True,  # batch from tensors on the device (fast); False = torchvision DataLoader
    "num_workers": 0,  # DataLoader worker processes (only with tensor_data False)
    "sync_batch_norm": False,  # under torchrun: BatchNorm statistics over all ranks (SyncBatchNorm)
    # analysis
    "snapshots": "off",  # save the model for landscape.py: off | epoch (every epoch end) | extrema (LR troughs, peaks)
}

if __name__ == "__main__":
    main(config)
