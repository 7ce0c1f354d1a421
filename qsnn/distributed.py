"""Multi-process data parallelism (torchrun + DistributedDataParallel); a no-op in one process.

`torchrun --nproc_per_node N mnist/run.py ...` starts N processes. The config's batch_size stays
the global batch: each rank trains on its 1/N slice of every global batch, gradients are averaged,
metrics are summed over ranks, and only rank 0 writes files.
"""
import os

import torch
import torch.distributed as dist


def world_size():
    """Number of processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def rank():
    """This process's rank (0 without torchrun)."""
    return dist.get_rank() if dist.is_initialized() else 0


def is_main():
    """True in the process that writes logs and checkpoints."""
    return rank() == 0


def setup(device):
    """Join the process group when started by torchrun; returns the device this rank uses."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def teardown():
    """Leave the process group (if any)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier():
    """Wait for every rank."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(value):
    """Rank 0's value on every rank (a picklable Python object)."""
    if not dist.is_initialized():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def sum_over_ranks(*values, device):
    """Python numbers summed over all ranks (returned unchanged in one process)."""
    if not dist.is_initialized():
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tuple(tensor.tolist())


def any_rank(*flags, device):
    """For each flag, True on every rank if it is true on any rank (one collective for all of them)."""
    if not dist.is_initialized():
        return tuple(bool(f) for f in flags)
    return tuple(total > 0 for total in sum_over_ranks(*(float(f) for f in flags), device=device))


def broadcast_buffers(model):
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank, so all evaluate one model."""
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def wrap(model, device, sync_batch_norm):
    """DistributedDataParallel around the model when running under torchrun."""
    if not dist.is_initialized():
        return model
    if sync_batch_norm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def shard(index, equal=False):
    """This rank's contiguous slice of a batch's sample indices.

    With equal=True (training) every rank gets the same number of samples, so that averaging the ranks'
    gradients weights every sample alike: a short last batch loses its last len % world_size samples.
    """
    if not dist.is_initialized():
        return index
    if equal:
        index = index[:len(index) - len(index) % world_size()]
    return index.tensor_split(world_size())[rank()]
