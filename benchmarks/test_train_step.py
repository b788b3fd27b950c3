"""One full WGAN-GP training step (D step + G step, alpha 0.5) of the Table-2 networks, as img/s.

CPU: minibatch 16 at 8x8 and 16x16, the shapes ../shared/peers/progan_step.py times the peer pro-gan-pth on;
run `python ../shared/peers/progan_step.py RES 16 0.5 cpu` in the same call to get the ratio.
CUDA: the v2-1gpu minibatch at every resolution, fp32 and bf16 autocast.
"""
import pytest
import torch

from conftest import PGGAN_SHAPES, devices, record, run_synced
from fastpggan import losses
from fastpggan.networks import Discriminator, Generator


def _cases():
    out = []
    for dev in devices():
        if dev.values[0] == "cpu":
            out += [pytest.param("cpu", r, 16, None, id=f"cpu-{r}-fp32") for r in (8, 16)]
        else:
            for r, (n, _) in PGGAN_SHAPES.items():
                for amp in (None, torch.bfloat16):
                    out.append(pytest.param("cuda", r, n, amp, id=f"cuda-{r}-{'bf16' if amp else 'fp32'}",
                                            marks=dev.marks))
    return out


@pytest.mark.parametrize("device,res,batch,amp", _cases())
def test_train_step(benchmark, device, res, batch, amp):
    torch.manual_seed(0)
    G, D = Generator(resolution=res).to(device), Discriminator(resolution=res).to(device)
    opt_G = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    opt_D = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    reals = torch.randn(batch, 3, res, res, device=device)
    d_call = lambda x: D(x, 0.5)   # noqa: E731

    def step():
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            with torch.no_grad():
                fakes = G(torch.randn(batch, 512, device=device), res, 0.5)
            loss_d = losses.d_loss_wgan_gp(d_call, reals, fakes)
        opt_D.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_D.step()
        D.requires_grad_(False)
        with torch.autocast(device, dtype=amp or torch.float32, enabled=amp is not None):
            loss_g = losses.g_loss_wgan(d_call, G(torch.randn(batch, 512, device=device), res, 0.5))
        opt_G.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_G.step()
        D.requires_grad_(True)

    step()   # warm-up (cudnn autotune, allocator)
    benchmark.group = f"train step {device} {res}"
    record(benchmark, device, res=res, batch=batch, amp=str(amp), images=batch)
    run_synced(benchmark, step, device)
