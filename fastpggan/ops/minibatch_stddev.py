"""minibatch_stddev: the "minibatch standard deviation" layer of the paper (Sec. 3), official networks.py L127-139.

With G = min(group_size, N) and M = N / G, sample n belongs to group n % M. In fp32:

    s[m] = mean_{c,h,w} sqrt( mean_g (x[g,m] - mean_g x[g,m])^2 + 1e-8 )

(fp64 inputs stay fp64), and s[n % M] is appended to sample n as one extra constant feature map, giving (N, C+1, H, W).
"""
import torch

from . import _dispatch
from ._util import upcast


def minibatch_stddev_ref(x, group_size):
    n, c, h, w = x.shape
    g = min(group_size, n)
    y = upcast(x).reshape(g, -1, c, h, w)
    y = y - y.mean(dim=0, keepdim=True)
    y = (y.square().mean(dim=0) + 1e-8).sqrt()
    y = y.mean(dim=(1, 2, 3)).to(x.dtype)                     # (M,)
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)             # row g*M + m holds s[m]
    return torch.cat([x, y], dim=1)


_dispatch.register("minibatch_stddev", "ref", minibatch_stddev_ref)


def minibatch_stddev(x, group_size=4, *, impl="auto"):
    """Append the group stddev feature map: (N, C, H, W) -> (N, C+1, H, W)."""
    if x.ndim != 4:
        raise ValueError(f"minibatch_stddev expects NCHW, got shape {tuple(x.shape)}")
    g = min(int(group_size), x.shape[0])
    if g < 1 or x.shape[0] % g:
        raise ValueError(f"minibatch_stddev: minibatch {x.shape[0]} must be divisible by the group size {g} "
                         "(official PGGAN requirement); pick a minibatch that is a multiple of it")
    return _dispatch.resolve("minibatch_stddev", impl, x)(x, g)
