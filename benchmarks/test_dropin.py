"""The drop-in guide's step ratio: one WGAN-GP step (D then G, lambda 10) of the third-party-style PGGAN of
tests/thirdparty_pggan.py as written ('ref'), with our layers swapped in ('swapped': from_module, nothing fused) and
swapped with each LeakyReLU and pixel norm folded into the layer before it ('swapped+fused'), in the same run.

There is no torch.compile baseline: compiling G and D as modules, what a user of such a network would do, fails in
the penalty's double backward ("torch.compile with aot_autograd does not currently support double backward";
fastpggan's own `--compile-step` compiles the whole loss, penalty included, instead).

Sizes: 16x16 (widths 128, 128, 64) and 32x32 (128, 128, 64, 32), minibatch 16, float32. The default run keeps
32x32; --long adds 16x16. Blocks of one run drift by tens of percent on a shared 2-core VM: dropin_ratio.py gives
the ratio with the variants interleaved.
"""

import pathlib
import sys

import pytest
import torch

from conftest import LONG, devices, record, run_synced

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import thirdparty_pggan as tp  # noqa: E402  (tests/, where the drop-in test holds it)

WIDTHS = {16: (128, 128, 64), 32: (128, 128, 64, 32)}
LATENT, BATCH = 128, 16
VARIANTS = ("ref", "swapped", "swapped+fused")


def _cases():
    """(device, res) params; 16x16 only in the long form (the default keeps 32x32)."""
    return [
        pytest.param(dev.values[0], res, marks=tuple(dev.marks) + ((LONG,) if res == 16 else ()), id=f"{dev.id}-{res}")
        for dev in devices()
        for res in sorted(WIDTHS)
    ]


def make_step(variant, res, device):
    """One WGAN-GP step of the networks of `variant` at `res`, as a function of nothing."""
    torch.manual_seed(0)
    g = tp.generator(LATENT, WIDTHS[res]).to(device)
    d = tp.discriminator(tuple(reversed(WIDTHS[res]))).to(device)
    if variant != "ref":
        g, d = (tp.swap_layers(net, fuse=variant == "swapped+fused") for net in (g, d))
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    real = torch.randn(BATCH, 3, res, res, device=device)
    return lambda: tp.wgan_gp_step(g, d, opt_g, opt_d, real, LATENT)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("device,res", _cases())
def test_dropin_step(benchmark, device, res, variant):
    step = make_step(variant, res, device)
    for _ in range(2):  # warm-up: allocator, oneDNN/cuDNN primitives, the backend choice
        step()
    benchmark.group = f"dropin wgan-gp step {device} {res}x{res} N={BATCH}"
    record(benchmark, device, impl=variant, res=res, batch=BATCH, dtype="float32")
    run_synced(benchmark, step, device)
