"""The drop-in guide (README "Using our layers in your own GAN"): our layers swapped into a third-party-style PGGAN
(tests/thirdparty_pggan.py), the weights moved, the same outputs, and a WGAN-GP step on the swapped networks."""

import pytest
import torch

import thirdparty_pggan as tp
from conftest import skip_unless_runs, slow
from fastpggan.layers import EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear

OURS = (EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear)
LATENT = 32


def _nets():
    torch.manual_seed(0)
    return tp.generator(LATENT).double(), tp.discriminator().double()


@pytest.mark.parametrize(
    "fuse,impl",
    [
        (False, "auto"),
        (True, "auto"),
        (True, "ref"),
        (True, "ext"),
        (True, "triton"),
        slow(True, "compiled", id="fused-compiled"),
    ],
    ids=["swapped", "fused-auto", "fused-ref", "fused-ext", "fused-triton", "fused-compiled"],
)
def test_swapped_networks_compute_the_same(fuse, impl):
    """Every torch conv/linear becomes ours, its weight moved (stored = torch's / scale); G and D give the same
    outputs and input gradients (float64, 1e-10) on every backend. Fused, the LeakyReLU and pixel norm modules are
    gone (into our epilogue, run by `impl`)."""
    skip_unless_runs(impl)
    g, d = _nets()
    g2, d2 = tp.swap_layers(g, fuse=fuse, impl=impl), tp.swap_layers(d, fuse=fuse, impl=impl)
    for plain, ours in ((g, g2), (d, d2)):
        theirs = [m for m in plain if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear))]
        mine = [m for m in ours if isinstance(m, OURS)]
        assert len(mine) == len(theirs) and not any(isinstance(m, type(t)) for m, t in zip(mine, theirs))
        for t, m in zip(theirs, mine):
            torch.testing.assert_close(m.weight * m.scale, t.weight, rtol=1e-12, atol=0)
        left = [m for m in ours if isinstance(m, (torch.nn.LeakyReLU, tp.PixelNorm))]
        assert not fuse or left == ([ours[0]] if ours is g2 else [])  # G's pixel norm of the latent stays
    z = torch.randn(3, LATENT, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(g2(z), g(z), rtol=1e-10, atol=1e-10)
    x1 = g(z).detach().requires_grad_(True)
    x2 = x1.detach().clone().requires_grad_(True)
    torch.testing.assert_close(d2(x2), d(x1), rtol=1e-10, atol=1e-10)
    d(x1).sum().backward()
    d2(x2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-10, atol=1e-10)


def test_a_wgan_gp_step_on_the_swapped_networks():
    """The first step's D loss is the original's (the same function, the same draws); the step then trains every
    layer of ours (finite, moved). The updates themselves differ, as equalized LR means them to: Adam steps the
    stored N(0, 1) weight, so each layer learns at the same speed."""
    losses, moved = [], []
    for swap in (False, True):
        g, d = _nets()
        if swap:
            g, d = tp.swap_layers(g, fuse=True), tp.swap_layers(d, fuse=True)
        before = [p.detach().clone() for p in (*g.parameters(), *d.parameters())]
        opt_g = torch.optim.Adam(g.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
        opt_d = torch.optim.Adam(d.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
        torch.manual_seed(1)
        real = torch.randn(4, 3, 16, 16, dtype=torch.float64)
        losses.append(tp.wgan_gp_step(g, d, opt_g, opt_d, real, LATENT))
        after = [p.detach() for p in (*g.parameters(), *d.parameters())]
        assert all(torch.isfinite(p).all() for p in after)
        moved.append(sum(not torch.equal(a, b) for a, b in zip(after, before)) / len(after))
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-9, atol=1e-9)
    assert moved == [1.0, 1.0]
