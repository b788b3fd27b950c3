"""A third-party-style PGGAN at one resolution, written as the public ports write theirs (plain nn.Conv2d,
nn.ConvTranspose2d and nn.Linear, their own pixel norm and minibatch stddev, LeakyReLU modules), and the swap of
fastpggan's layers into it: the drop-in guide of README "Using our layers in your own GAN" runs this code
(tests/test_dropin.py, benchmarks/test_dropin.py).

`swap_layers(net)` replaces every torch conv/linear with ours built by `from_module` (the same function, the weights
moved); `swap_layers(net, fuse=True)` also folds each LeakyReLU and pixel norm that follows a layer into it (one
epilogue pass), and the D's LeakyReLU + AvgPool2d pairs stay as they are.
"""

import torch
import torch.nn as nn

from fastpggan.layers import EqualizedConv2d, EqualizedConvTranspose2d, EqualizedLinear


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-8)


class MinibatchStd(nn.Module):
    """The stddev over the whole minibatch, averaged, as one more feature map (the group is the minibatch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sqrt(x.var(0, unbiased=False) + 1e-8).mean().expand(x.shape[0], 1, *x.shape[2:])
        return torch.cat([x, s], 1)


def _lrelu() -> nn.Module:
    return nn.LeakyReLU(0.2)


def generator(latent: int = 32, widths: tuple = (32, 32, 16), channels: int = 3) -> nn.Sequential:
    """z (N, latent, 1, 1) -> images (N, channels, 4 * 2^(len(widths) - 1), same)."""
    layers = [PixelNorm(), nn.ConvTranspose2d(latent, widths[0], 4), _lrelu(), PixelNorm()]
    layers += [nn.Conv2d(widths[0], widths[0], 3, padding=1), _lrelu(), PixelNorm()]
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [nn.Upsample(scale_factor=2.0, mode="nearest")]
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1), _lrelu(), PixelNorm()]
        layers += [nn.Conv2d(c_out, c_out, 3, padding=1), _lrelu(), PixelNorm()]
    return nn.Sequential(*layers, nn.Conv2d(widths[-1], channels, 1))


def discriminator(widths: tuple = (16, 32, 32), channels: int = 3) -> nn.Sequential:
    """images (N, channels, R, R) -> scores (N, 1), R = 4 * 2^(len(widths) - 1)."""
    layers = [nn.Conv2d(channels, widths[0], 1), _lrelu()]
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [nn.Conv2d(c_in, c_in, 3, padding=1), _lrelu(), nn.Conv2d(c_in, c_out, 3, padding=1), _lrelu()]
        layers += [nn.AvgPool2d(2)]
    c = widths[-1]
    layers += [MinibatchStd(), nn.Conv2d(c + 1, c, 3, padding=1), _lrelu(), nn.Conv2d(c, c, 4), _lrelu()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c, 1))


_OURS = {nn.Conv2d: EqualizedConv2d, nn.ConvTranspose2d: EqualizedConvTranspose2d, nn.Linear: EqualizedLinear}


def swap_layers(net: nn.Sequential, fuse: bool = False, impl: str = "auto") -> nn.Sequential:
    """`net` with each torch conv/linear replaced by ours (from_module: the weights moved, the outputs the same);
    with `fuse`, a following LeakyReLU(0.2) and then PixelNorm go into that layer's epilogue, run by `impl`."""
    mods, out, i = list(net), [], 0
    while i < len(mods):
        m, i = mods[i], i + 1
        if type(m) not in _OURS:
            out.append(m)
            continue
        kwargs = {"impl": impl}
        if fuse and i < len(mods) and isinstance(mods[i], nn.LeakyReLU) and mods[i].negative_slope == 0.2:
            kwargs["act"], i = "lrelu", i + 1
            if i < len(mods) and isinstance(mods[i], PixelNorm):
                kwargs["pixel_norm"], i = True, i + 1
        out.append(_OURS[type(m)].from_module(m, **kwargs))
    return nn.Sequential(*out)


def wgan_gp_step(g: nn.Module, d: nn.Module, opt_g, opt_d, real: torch.Tensor, latent: int) -> torch.Tensor:
    """One WGAN-GP step (D then G, lambda 10, drift 1e-3, as PGGAN); returns the D loss."""
    n = real.shape[0]
    z = torch.randn(n, latent, 1, 1, device=real.device, dtype=real.dtype)
    fake = g(z).detach()
    u = torch.rand(n, 1, 1, 1, device=real.device, dtype=real.dtype)
    mixed = (real + u * (fake - real)).requires_grad_(True)
    (grad,) = torch.autograd.grad(d(mixed).sum(), mixed, create_graph=True)
    real_score = d(real)
    gp = (grad.flatten(1).norm(dim=1) - 1).square()
    loss_d = (d(fake) - real_score + 10 * gp[:, None] + 1e-3 * real_score.square()).mean()
    opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    opt_d.step()
    loss_g = -d(g(torch.randn_like(z))).mean()
    opt_g.zero_grad(set_to_none=True)
    loss_g.backward()
    opt_g.step()
    return loss_d.detach()
