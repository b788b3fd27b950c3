"""The peer: pro-gan-pth 3.4 (akanimax/pro_gan_pytorch on PyPI), the pip-installable PyTorch PGGAN a user would
otherwise pick, set up for the work our step benchmark times: one WGAN-GP D step and one G step at Table-2 widths
(its defaults: latent 512, feature maps capped at 512), minibatch `batch`, fade-in alpha 0.5, fp32 (it has no
mixed precision). It has no EMA in its step; ours updates G_ema too.

It is imported where it is installed, or from the folder that `pytest benchmarks/ --peer PATH` or
FASTPGGAN_PEER=PATH names, for example one made by
`pip install --target PATH --no-deps pro-gan-pth torchvision tensorboard absl-py` (it imports torchvision and
tensorboard at module level; tensorboard needs absl).
"""

import contextlib
import importlib
import io
import math
import sys
from typing import Callable, Optional

import torch

INSTALL = "pip install --no-deps pro-gan-pth torchvision tensorboard absl-py (or --target PATH, then --peer PATH)"
NAME = "peer pro-gan-pth"


class PeerMissing(Exception):
    """The peer cannot be imported; the message says why and how to install it."""


def load(path: Optional[str] = None):
    """Import pro_gan_pytorch (from `path` first, if given) -> (gan, losses, networks) modules."""
    if path:
        sys.path.insert(0, path)
    try:
        return tuple(importlib.import_module(f"pro_gan_pytorch.{m}") for m in ("gan", "losses", "networks"))
    except Exception as e:  # not installed, or its torchvision/tensorboard imports fail
        raise PeerMissing(f"the peer pro-gan-pth does not import ({type(e).__name__}: {e}); {INSTALL}") from e
    finally:
        if path:
            sys.path.remove(path)


def _old_output_padding(cls):
    """pro-gan-pth calls ConvTranspose's private _output_padding with torch 1.10's arguments; torch 2 added a
    required num_spatial_dims. Default it to 2 on the peer's own transposed-conv class only."""
    base = torch.nn.ConvTranspose2d._output_padding

    def _output_padding(self, input, output_size, stride, padding, kernel_size, num_spatial_dims=2, dilation=None):
        return base(self, input, output_size, stride, padding, kernel_size, num_spatial_dims, dilation)

    cls._output_padding = _output_padding


def make_step(
    device: str, res: int, batch: int, path: Optional[str] = None, alpha: float = 0.5, seed: int = 0
) -> Callable[[], None]:
    """The peer's D step + G step at `res`, as a function of no arguments that draws its own latents."""
    gan_mod, losses, networks = load(path)
    _old_output_padding(importlib.import_module("pro_gan_pytorch.custom_layers").EqualizedConvTranspose2d)
    dev, depth = torch.device(device), int(math.log2(res))
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints both networks
        gan = gan_mod.ProGAN(networks.Generator(depth=depth), networks.Discriminator(depth=depth), device=dev)
    loss = losses.WganGP()
    opt_g = torch.optim.Adam(gan.gen.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    opt_d = torch.optim.Adam(gan.dis.parameters(), lr=1e-3, betas=(0.0, 0.99), eps=1e-8)
    reals = torch.rand(batch, 3, res, res, device=dev) * 2 - 1

    def step():
        z = torch.randn(batch, gan.latent_size, device=dev)
        gan.optimize_discriminator(loss, opt_d, z, reals, depth, alpha)
        gan.optimize_generator(loss, opt_g, z, reals, depth, alpha)

    return step
