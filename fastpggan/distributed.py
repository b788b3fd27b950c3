"""Data-parallel training over torch.distributed, launched by torchrun (NCCL on CUDA, gloo on CPU).

    torchrun --nproc_per_node=N -m fastpggan.train ...            (multi-node: the usual --nnodes/--rdzv flags)

The preset's minibatch is the global one; rank r takes rows [r*B/N, (r+1)*B/N) of every global random draw
(latents, GP mixing factors, mirror flips, class labels) and of every global batch of the shared sampler, so a
run's numbers do not depend on how many processes share them. Gradients are averaged with one flattened
all-reduce per network per step (the stock DDP wrapper does not support the WGAN-GP double backward well),
which keeps G, D, the optimizers and G_ema identical on every rank. Only rank 0 writes files.
"""

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import UserError, env_int
from .runtime import pick_device


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self):
        return self.rank == 0

    def shard(self, n):
        """The slice of a global batch of n rows that this rank owns."""
        per = n // self.world
        return slice(self.rank * per, (self.rank + 1) * per)


def world_size_from_env() -> int:
    return env_int("WORLD_SIZE", 1, min=1)


def init(device_spec):
    """(Context, device) for this process; joins the process group when started by torchrun."""
    world = world_size_from_env()
    if world <= 1:
        return Context(), pick_device(device_spec)
    rank, local = env_int("RANK", -1, min=0), env_int("LOCAL_RANK", 0, min=0)
    if not 0 <= rank < world:
        raise UserError(
            f"the environment variable RANK must be set to a rank below WORLD_SIZE={world} (torchrun sets "
            f"both), got {os.environ.get('RANK')!r}"
        )
    use_cuda = torch.cuda.is_available() and device_spec in ("auto", "cuda")
    if use_cuda:
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = pick_device("cpu" if device_spec == "auto" else device_spec)
    if not dist.is_initialized():
        timeout_min = env_int("FASTPGGAN_DIST_TIMEOUT_MIN", 30, min=1)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=datetime.timedelta(minutes=timeout_min)
        )
    return Context(rank, world, local), device


def all_reduce_mean_(tensors, ctx):
    """Average a list of tensors over ranks, in place, through one flattened buffer."""
    if ctx.world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    flat /= ctx.world
    offset = 0
    for t in tensors:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()


def all_reduce_grads_(module, ctx):
    """Average every parameter gradient of `module` over ranks (missing grads count as zero)."""
    if ctx.world == 1:
        return
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    all_reduce_mean_([p.grad for p in params], ctx)


def broadcast_object(obj, ctx):
    if ctx.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_cat(t, ctx):
    """Concatenate equally shaped tensors from every rank along dim 0, in rank order."""
    if ctx.world == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(ctx.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def barrier(ctx):
    if ctx.world > 1:
        dist.barrier()


def shutdown():
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
