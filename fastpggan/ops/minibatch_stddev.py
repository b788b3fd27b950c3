"""minibatch_stddev: the "minibatch standard deviation" layer of the paper (Sec. 3), official networks.py L127-139.

With G = min(group_size, N) and M = N / G, sample n belongs to group n % M. In fp32:

    s[m] = mean_{c,h,w} sqrt( mean_g (x[g,m] - mean_g x[g,m])^2 + 1e-8 )

(fp64 inputs stay fp64), and s[n % M] is appended to sample n as one extra constant feature map, giving (N, C+1, H, W).
"""
import torch

from fastpggan.kernels._layout import empty_in_layout_of

from . import _dispatch, _ext
from ._util import triton_unavailable, upcast

EPS = 1e-8


def minibatch_stddev_ref(x, group_size):
    n, c, h, w = x.shape
    g = min(group_size, n)
    y = upcast(x).reshape(g, -1, c, h, w)
    y = y - y.mean(dim=0, keepdim=True)
    y = (y.square().mean(dim=0) + EPS).sqrt()
    y = y.mean(dim=(1, 2, 3)).to(x.dtype)                     # (M,)
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)             # row g*M + m holds s[m]
    return torch.cat([x, y], dim=1)


_dispatch.register("minibatch_stddev", "ref", minibatch_stddev_ref)


def minibatch_stddev_double_backward(ddx, dout, x, group_size):
    """Gradients of dx = dout[:, :C] + ds[m] u / (F G) w.r.t. (dout, x), given ddx; u = (x - mean_g) / std_g.

        d dout[:, :C]   = ddx
        d dout[n, C, :] = mean-free sum_{g,f} ddx u / (F G), for n's group
        d x             = ds / (F G std) * (ddx - mean_g ddx - u * mean_g(ddx u))

    Plain PyTorch, so it is itself differentiable.
    """
    n, c, h, w = x.shape
    m, f = n // group_size, c * h * w
    xf = upcast(x).reshape(group_size, m, f)
    dd = upcast(ddx).reshape(group_size, m, f)
    dev = xf - xf.mean(dim=0, keepdim=True)
    sd = (dev.square().mean(dim=0, keepdim=True) + EPS).sqrt()
    u = dev / sd
    ds = upcast(dout[:, c]).reshape(group_size, m, h * w).sum(dim=(0, 2)).reshape(1, m, 1)
    d_stat = (dd * u).sum(dim=(0, 2)) / (f * group_size)
    d_stat_map = d_stat.reshape(1, m, 1, 1, 1).expand(group_size, m, 1, h, w).reshape(n, 1, h, w)
    d_dout = torch.cat([ddx, d_stat_map.to(ddx.dtype)], dim=1)
    d_x = ds / (f * group_size) / sd * (dd - dd.mean(dim=0, keepdim=True) - u * (dd * u).mean(dim=0, keepdim=True))
    return d_dout, d_x.reshape(x.shape).to(x.dtype)


# Fast backends: forward and first backward are kernels (a Triton custom op, or an extension op); the
# backward's backward is the plain-PyTorch formula above, which autograd can differentiate further.

def _fake(x, group_size):
    n, c, h, w = x.shape
    return empty_in_layout_of(x, shape=(n, c + 1, h, w))


def _fake_grad(dout, x, group_size):
    return empty_in_layout_of(x)


def wire(fwd, grad):
    """Register fake tensors and autograd for one backend's (forward, backward) ops."""
    def setup(ctx, inputs, output):
        x, ctx.group_size = inputs
        ctx.save_for_backward(x)

    def backward(ctx, dout):
        x, = ctx.saved_tensors
        return grad(dout, x, ctx.group_size), None

    def grad_setup(ctx, inputs, output):
        dout, x, ctx.group_size = inputs
        ctx.save_for_backward(dout, x)

    def grad_backward(ctx, ddx):
        dout, x = ctx.saved_tensors
        d_dout, d_x = minibatch_stddev_double_backward(ddx, dout, x, ctx.group_size)
        return d_dout, d_x, None

    torch.library.register_fake(fwd, _fake)
    torch.library.register_fake(grad, _fake_grad)
    torch.library.register_autograd(fwd, backward, setup_context=setup)
    torch.library.register_autograd(grad, grad_backward, setup_context=grad_setup)


def _kernels():
    from fastpggan.kernels import minibatch_stddev as k
    return k


@torch.library.custom_op("fastpggan::minibatch_stddev_triton", mutates_args=())
def _mbstd_triton_op(x: torch.Tensor, group_size: int) -> torch.Tensor:
    return _kernels().minibatch_stddev(x, group_size)


@torch.library.custom_op("fastpggan::minibatch_stddev_grad_triton", mutates_args=())
def _mbstd_grad_triton_op(dout: torch.Tensor, x: torch.Tensor, group_size: int) -> torch.Tensor:
    return _kernels().minibatch_stddev_grad(dout, x, group_size)


wire(_mbstd_triton_op, _mbstd_grad_triton_op)


def minibatch_stddev_triton(x, group_size):
    return _mbstd_triton_op(x, int(group_size))


_dispatch.register("minibatch_stddev", "triton", minibatch_stddev_triton, triton_unavailable)


@_ext.on_load
def _wire_ext():
    wire(_ext.op("minibatch_stddev"), _ext.op("minibatch_stddev_grad"))


def minibatch_stddev_ext(x, group_size):
    return _ext.op("minibatch_stddev")(x, int(group_size))


_dispatch.register("minibatch_stddev", "ext", minibatch_stddev_ext, _ext.ext_unavailable)


def minibatch_stddev(x, group_size=4, *, impl="auto"):
    """Append the group stddev feature map: (N, C, H, W) -> (N, C+1, H, W)."""
    if x.ndim != 4:
        raise ValueError(f"minibatch_stddev expects NCHW, got shape {tuple(x.shape)}")
    g = min(int(group_size), x.shape[0])
    if g < 1 or x.shape[0] % g:
        raise ValueError(f"minibatch_stddev: minibatch {x.shape[0]} must be divisible by the group size {g} "
                         "(official PGGAN requirement); pick a minibatch that is a multiple of it")
    return _dispatch.resolve("minibatch_stddev", impl, x)(x, g)
