"""fade_in: the blend that grows a new resolution in smoothly (paper Sec. 3, Fig. 2).

    y = (1 - alpha) * upsample_nearest(low, to high's size) + alpha * high

`low` is at high's resolution or half of it. Written as (1-a)*u + a*h rather than lerp, so that alpha=0 gives
exactly u and alpha=1 gives exactly h: the grown network then equals the smaller one bit for bit.
"""
import torch
import torch.nn.functional as F

from . import _dispatch


def upsample2x_nearest(x):
    """2x nearest-neighbour upsampling (official `upscale2d`)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def fade_in_ref(low, high, alpha):
    if low.shape[-1] != high.shape[-1]:
        low = upsample2x_nearest(low)
    return (1 - alpha) * low + alpha * high


_dispatch.register("fade_in", "ref", fade_in_ref)


def fade_in(low, high, alpha, *, impl="auto"):
    """Blend `low` (upsampled 2x if it is half of high's size) into `high` with weight alpha on high."""
    if low.ndim != 4 or high.ndim != 4 or low.shape[:2] != high.shape[:2]:
        raise ValueError(f"fade_in needs NCHW tensors with equal N and C, got {tuple(low.shape)} and {tuple(high.shape)}")
    lh, hh = low.shape[-2:], high.shape[-2:]
    if not (lh == hh or (lh[0] * 2 == hh[0] and lh[1] * 2 == hh[1])):
        raise ValueError(f"fade_in: low {tuple(lh)} must be high's size {tuple(hh)} or half of it")
    if isinstance(alpha, torch.Tensor) and alpha.ndim != 0:
        raise ValueError("fade_in: alpha must be a float or a 0-d tensor")
    return _dispatch.resolve("fade_in", impl, high)(low, high, alpha)
