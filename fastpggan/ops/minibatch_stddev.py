"""minibatch_stddev: the "minibatch standard deviation" layer of the paper (Sec. 3), official networks.py L127-139.

With G = min(group_size, N) and M = N / G, sample n belongs to group n % M. In fp32:

    s[m] = mean_{c,h,w} sqrt( mean_g (x[g,m] - mean_g x[g,m])^2 + 1e-8 )

(fp64 inputs stay fp64), and s[n % M] is appended to sample n as one extra constant feature map, giving (N, C+1, H, W).
"""

import dataclasses
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from fastpggan.kernels._tensors import empty_in_layout_of, like_layout

from . import _dispatch
from ._backends import KernelOp, register_backends
from ._util import upcast
from .opspec import CPU_OPS_RESULT, EXT_ON_CPU, Inputs, OpSpec, Probe, Variant

EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class GroupVariant(Variant):
    """The group size after capping at N; its text is e.g. 'group=4'."""

    group: int

    def __str__(self) -> str:
        return f"group={self.group}"

    @classmethod
    def parse(cls, text: str) -> "GroupVariant":
        name, _, value = text.partition("=")
        if name != "group" or not value.isdigit() or int(value) < 1:
            raise ValueError(f"minibatch_stddev variant must be like 'group=4', got {text!r}")
        return cls(int(value))


def minibatch_stddev(x: torch.Tensor, group_size: int = 4, *, impl: str = "auto") -> torch.Tensor:
    """Append the group stddev feature map: (N, C, H, W) -> (N, C+1, H, W).

    Args:
        x: (N, C, H, W) features, NCHW-contiguous or channels_last.
        group_size: samples per group, capped at N; N must be a multiple of the capped size (official rule).
        impl: 'auto', 'ref', 'triton', 'ext' or 'compiled' (see fastpggan.ops).

    Returns:
        (N, C+1, H, W) in x's dtype: x, then s[n % M] broadcast over one map. Differentiable twice.
    """
    if x.ndim != 4:
        raise ValueError(f"minibatch_stddev expects NCHW, got shape {tuple(x.shape)}")
    g = min(int(group_size), x.shape[0])
    if g < 1 or x.shape[0] % g:
        raise ValueError(
            f"minibatch_stddev: minibatch {x.shape[0]} must be divisible by the group size {g} "
            "(official PGGAN requirement); pick a minibatch that is a multiple of it"
        )
    return _dispatch.resolve("minibatch_stddev", impl, x, GroupVariant(g))(x, g)


def minibatch_stddev_ref(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Plain-PyTorch oracle. Differentiable to any order."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    y = upcast(x).reshape(g, -1, c, h, w)
    y = y - y.mean(dim=0, keepdim=True)
    y = (y.square().mean(dim=0) + EPS).sqrt()
    y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # (M,)
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # row g*M + m holds s[m]
    return torch.cat([x, y], dim=1)


def _deviations(x, group_size):
    """(x - mean_g x, std_g x) in the accumulator dtype, shaped (G, M, C*H*W) and (1, M, C*H*W)."""
    xf = upcast(x).reshape(group_size, x.shape[0] // group_size, -1)
    dev = xf - xf.mean(dim=0, keepdim=True)
    return dev, (dev.square().mean(dim=0, keepdim=True) + EPS).sqrt()


def _stat_grad(dout, c, group_size):
    """ds[m]: the gradient of the stddev map (channel c of dout) summed over m's group and its pixels, (1, M, 1)."""
    return upcast(dout[:, c]).reshape(group_size, dout.shape[0] // group_size, -1).sum(dim=(0, 2)).reshape(1, -1, 1)


def minibatch_stddev_double_backward(
    ddx: torch.Tensor, dout: torch.Tensor, x: torch.Tensor, group_size: int, need_dout: bool = True, need_x: bool = True
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Gradients of dx = dout[:, :C] + ds[m] u / (F G) w.r.t. (dout, x), given ddx; u = (x - mean_g) / std_g.

        d dout[:, :C]   = ddx
        d dout[n, C, :] = mean-free sum_{g,f} ddx u / (F G), for n's group
        d x             = ds / (F G std) * (ddx - mean_g ddx - u * mean_g(ddx u))

    Each is computed only if asked for (None otherwise). Plain PyTorch, so it is itself differentiable.
    """
    n, c, h, w = x.shape
    m, f = n // group_size, c * h * w
    dd = upcast(ddx).reshape(group_size, m, f)
    dev, sd = _deviations(x, group_size)
    u = dev / sd
    d_dout = d_x = None
    if need_dout:
        d_stat = (dd * u).sum(dim=(0, 2)) / (f * group_size)
        d_stat_map = d_stat.reshape(1, m, 1, 1, 1).expand(group_size, m, 1, h, w).reshape(n, 1, h, w)
        d_dout = torch.cat([ddx, d_stat_map.to(ddx.dtype)], dim=1)
    if need_x:
        ds = _stat_grad(dout, c, group_size)
        d_x = ds / (f * group_size) / sd * (dd - dd.mean(dim=0, keepdim=True) - u * (dd * u).mean(dim=0, keepdim=True))
        d_x = d_x.reshape(x.shape).to(x.dtype)
    return d_dout, d_x


# Fast backends: forward and first backward are kernel ops; the backward's backward is the plain-PyTorch formula
# above, which autograd can differentiate further.
#   minibatch_stddev       (x, group_size) -> (N, C+1, H, W)
#   minibatch_stddev_grad  (dout, x, group_size) -> dx


def _fake(x, group_size):
    n, c, h, w = x.shape
    return empty_in_layout_of(x, shape=(n, c + 1, h, w))


def _fake_grad(dout, x, group_size):
    return empty_in_layout_of(x)


def _autograd(k):
    def setup(ctx, inputs, output):
        x, ctx.group_size = inputs
        ctx.save_for_backward(x)

    def backward(ctx, dout):
        if not ctx.needs_input_grad[0]:
            return None, None
        (x,) = ctx.saved_tensors
        return k.minibatch_stddev_grad(dout, x, ctx.group_size), None

    def grad_setup(ctx, inputs, output):
        dout, x, ctx.group_size = inputs
        ctx.save_for_backward(dout, x)

    def grad_backward(ctx, ddx):
        dout, x = ctx.saved_tensors
        need_dout, need_x = ctx.needs_input_grad[:2]
        d_dout, d_x = minibatch_stddev_double_backward(ddx, dout, x, ctx.group_size, need_dout, need_x)
        return d_dout, d_x, None

    return {"minibatch_stddev": (setup, backward), "minibatch_stddev_grad": (grad_setup, grad_backward)}


def _call(k, x, group_size):
    return k.minibatch_stddev(x, int(group_size))


# The kernel ops in plain PyTorch, computed as the kernels compute them: the bodies of the compiled backend.


def _torch_minibatch_stddev(x, group_size):
    return like_layout(minibatch_stddev_ref(x, group_size), x)


def _torch_minibatch_stddev_grad(dout, x, group_size):
    """dx = dout[:, :C] + ds[m] (x - mean_g) / (F G std_g), ds[m] the sum of the stddev map's gradient over m's
    group."""
    c, f = x.shape[1], x[0].numel()
    dev, sd = _deviations(x, group_size)
    ds = _stat_grad(dout, c, group_size)
    dx = upcast(dout[:, :c]) + (ds * dev / (sd * (f * group_size))).reshape(x.shape)
    return like_layout(dx.to(x.dtype), x)


TORCH_KERNELS: Dict[str, Callable[..., Any]] = {
    "minibatch_stddev": _torch_minibatch_stddev,
    "minibatch_stddev_grad": _torch_minibatch_stddev_grad,
}


def _probe(v: GroupVariant, shape, extra, inputs: Inputs) -> Probe:
    x = inputs.tensor(shape)
    return Probe([x], [1], lambda impl: minibatch_stddev(x, v.group, impl=impl), True)


def _check_cases(dtype, layout, big):
    groups = [(8, 4), (6, 3), (1, 1)] + ([(64, 4)] if big else [])
    return [(GroupVariant(g), (n, 17, 5, 5), {}) for n, g in groups] + [(GroupVariant(4), (8, 16, 4, 4), {})]


def _bench_cases(shapes):
    n, c = shapes[4]  # D's last block, at 4x4
    return [("minibatch_stddev", 4, GroupVariant(4), (n, c, 4, 4), {})]


register_backends(
    OpSpec(
        "minibatch_stddev",
        minibatch_stddev_ref,
        GroupVariant,
        _probe,
        _check_cases,
        _bench_cases,
        # forward reads x and writes x plus one map; the backward reads dout and x and writes dx
        traffic=lambda v: (2, 5),
        # forward + backward at 4x4, fp32, vs ref: 3.4x on the CPU; CUDA: ref until checked on the GPU
        auto_order=EXT_ON_CPU,
        auto_order_source=CPU_OPS_RESULT,
    ),
    kernels="minibatch_stddev",
    torch_kernels=TORCH_KERNELS,
    autograd=_autograd,
    call=_call,
    kernel_ops={
        "minibatch_stddev": KernelOp("(Tensor x, int group_size) -> Tensor", _fake),
        "minibatch_stddev_grad": KernelOp("(Tensor dout, Tensor x, int group_size) -> Tensor", _fake_grad),
    },
)
