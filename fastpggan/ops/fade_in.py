"""fade_in: the blend that grows a new resolution in smoothly (paper Sec. 3, Fig. 2).

    y = (1 - alpha) * upsample_nearest(low, to high's size) + alpha * high

`low` is at high's resolution or half of it. Written as (1-a)*u + a*h rather than lerp, so that alpha=0 gives
exactly u and alpha=1 gives exactly h: the grown network then equals the smaller one bit for bit.
"""
from typing import Optional

import torch
import torch.nn.functional as F

from fastpggan.kernels._layout import empty_in_layout_of

from . import _dispatch, _ext
from ._util import triton_unavailable


def upsample2x_nearest(x):
    """2x nearest-neighbour upsampling (official `upscale2d`)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def fade_in_ref(low, high, alpha):
    if low.shape[-1] != high.shape[-1]:
        low = upsample2x_nearest(low)
    return (1 - alpha) * low + alpha * high


_dispatch.register("fade_in", "ref", fade_in_ref)


# Fast backends. fade_in is linear in (low, high), so its backward is the adjoint map and the adjoint's backward
# is fade_in again: the two ops (fwd, grad) of each backend differentiate into each other to any order.
# alpha is not differentiated here; a tensor alpha that requires grad takes the ref path.

def _fake(low, high, alpha, alpha_t):
    return empty_in_layout_of(high)


def _fake_grad(dy, low_size, alpha, alpha_t):
    return empty_in_layout_of(dy, shape=low_size), empty_in_layout_of(dy)


def wire(fwd, grad):
    """Register fake tensors and autograd for one backend's (fade_in, fade_in_grad) ops."""
    def setup(ctx, inputs, output):
        low, high, ctx.alpha, alpha_t = inputs
        ctx.low_size = list(low.shape)
        ctx.save_for_backward(alpha_t)

    def backward(ctx, dy):
        alpha_t, = ctx.saved_tensors
        dlow, dhigh = grad(dy, ctx.low_size, ctx.alpha, alpha_t)
        return dlow, dhigh, None, None

    def grad_setup(ctx, inputs, output):
        dy, _, ctx.alpha, alpha_t = inputs
        ctx.high_shape, ctx.high_dtype = dy.shape, dy.dtype
        ctx.save_for_backward(alpha_t)

    def grad_backward(ctx, ddlow, ddhigh):
        alpha_t, = ctx.saved_tensors
        if ddhigh is None:
            ddhigh = torch.zeros(ctx.high_shape, dtype=ctx.high_dtype, device=ddlow.device)
        if ddlow is None:
            ddlow = ddhigh.new_zeros(ctx.high_shape[:2] + (ctx.high_shape[2] // 2, ctx.high_shape[3] // 2))
        return fwd(ddlow, ddhigh, ctx.alpha, alpha_t), None, None, None

    torch.library.register_fake(fwd, _fake)
    torch.library.register_fake(grad, _fake_grad)
    torch.library.register_autograd(fwd, backward, setup_context=setup)
    torch.library.register_autograd(grad, grad_backward, setup_context=grad_setup)


def _call(fwd, low, high, alpha):
    if isinstance(alpha, torch.Tensor):
        if alpha.requires_grad:
            return fade_in_ref(low, high, alpha)
        return fwd(low.to(high.dtype), high, 0.0, alpha.reshape(1).to(high.device))
    return fwd(low.to(high.dtype), high, float(alpha), None)


def _kernels():
    from fastpggan.kernels import fade_in as k
    return k


@torch.library.custom_op("fastpggan::fade_in_triton", mutates_args=())
def _fade_in_triton_op(low: torch.Tensor, high: torch.Tensor, alpha: float,
                       alpha_t: Optional[torch.Tensor]) -> torch.Tensor:
    return _kernels().fade_in(low, high, alpha, alpha_t)


@torch.library.custom_op("fastpggan::fade_in_grad_triton", mutates_args=())
def _fade_in_grad_triton_op(dy: torch.Tensor, low_size: list[int], alpha: float,
                            alpha_t: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().fade_in_grad(dy, low_size, alpha, alpha_t)


wire(_fade_in_triton_op, _fade_in_grad_triton_op)


def fade_in_triton(low, high, alpha):
    return _call(_fade_in_triton_op, low, high, alpha)


_dispatch.register("fade_in", "triton", fade_in_triton, triton_unavailable)


@_ext.on_load
def _wire_ext():
    wire(_ext.op("fade_in"), _ext.op("fade_in_grad"))


def fade_in_ext(low, high, alpha):
    return _call(_ext.op("fade_in"), low, high, alpha)


_dispatch.register("fade_in", "ext", fade_in_ext, _ext.ext_unavailable)


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
