"""One Adam step over the parameters of Table-2 G and D: optim.TFAdam (the official TF update, what the trainer
runs) against torch.optim.Adam(fused=True) (what fastpggan 0.1 ran, impl 'ref' here), in the same run.

Both are one fused pass per tensor: read p, g, m, v and write p, m, v, so `bytes` = 7 x 4 B per parameter, and
bytes / median / measured copy bandwidth is the roofline fraction. TFAdam adds a few 0-d ops per step (its lr_t).
Networks: at 16x16 on the CPU (G and D about 15M parameters together), at 1024x1024 on CUDA (46M).
"""

import pytest
import torch

from conftest import devices, record, run_synced
from fastpggan.networks import Discriminator, Generator
from fastpggan.optim import TFAdam

OPTIMIZERS = {
    "ref": lambda params, lr: torch.optim.Adam(
        params, lr=lr, betas=(0.0, 0.99), eps=1e-8, fused=True, capturable=isinstance(lr, torch.Tensor)
    ),
    "tfadam": lambda params, lr: TFAdam(params, lr=lr, betas=(0.0, 0.99), eps=1e-8),
}


def _params(device, res):
    torch.manual_seed(0)
    nets = [Generator(resolution=res), Discriminator(resolution=res)]
    params = [p.detach().to(device).requires_grad_(True) for n in nets for p in n.parameters()]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    return params


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_adam_step(benchmark, device, name):
    res = 1024 if device == "cuda" else 16
    params = _params(device, res)
    lr = torch.tensor(1e-3, device=device) if device == "cuda" else 1e-3  # the trainer's CUDA-graph lr
    opt = OPTIMIZERS[name](params, lr)
    n = sum(p.numel() for p in params)
    benchmark.group = f"adam step {device} G+D at {res}"
    record(benchmark, device, impl=name, params=n, bytes=7 * 4 * n)
    opt.step()  # lazy state
    run_synced(benchmark, opt.step, device)
