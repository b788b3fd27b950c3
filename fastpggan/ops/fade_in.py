"""fade_in: the blend that grows a new resolution in smoothly (paper Sec. 3, Fig. 2).

    y = (1 - alpha) * upsample_nearest(low, to high's size) + alpha * high

`low` is at high's resolution or half of it. Written as (1-a)*u + a*h rather than lerp, so that alpha=0 gives
exactly u and alpha=1 gives exactly h: the grown network then equals the smaller one bit for bit.
"""
from typing import Union

import torch
import torch.nn.functional as F

from fastpggan.kernels._tensors import empty_in_layout_of

from . import _dispatch
from ._backends import KernelOp, register_backends


def fade_in(low: torch.Tensor, high: torch.Tensor, alpha: Union[float, torch.Tensor], *,
            impl: str = "auto") -> torch.Tensor:
    """Blend `low` (upsampled 2x if it is half of high's size) into `high` with weight alpha on high.

    Args:
        low: (N, C, H, W) or (N, C, H/2, W/2), the previous resolution's output.
        high: (N, C, H, W), the new block's output; NCHW-contiguous or channels_last.
        alpha: the weight of `high`, in [0, 1]: a float, or a 0-d tensor that the fast kernels read on the device
            (so a captured CUDA graph sees its new value). A tensor alpha that requires grad runs the reference.
        impl: 'auto', 'ref', 'triton' or 'ext' (see fastpggan.ops).

    Returns:
        (N, C, H, W) in high's dtype; the fast backends keep high's memory layout.
    """
    if low.ndim != 4 or high.ndim != 4 or low.shape[:2] != high.shape[:2]:
        raise ValueError(f"fade_in needs NCHW tensors with equal N and C, got {tuple(low.shape)} and "
                         f"{tuple(high.shape)}")
    lh, hh = low.shape[-2:], high.shape[-2:]
    if not (lh == hh or (lh[0] * 2 == hh[0] and lh[1] * 2 == hh[1])):
        raise ValueError(f"fade_in: low {tuple(lh)} must be high's size {tuple(hh)} or half of it")
    if isinstance(alpha, torch.Tensor) and alpha.ndim != 0:
        raise ValueError("fade_in: alpha must be a float or a 0-d tensor")
    fn = _dispatch.resolve("fade_in", impl, high, "same" if lh == hh else "up",
                           extra=dict(low_dtype=str(low.dtype).replace("torch.", ""),
                                      alpha="tensor" if isinstance(alpha, torch.Tensor) else "float"))
    return fn(low, high, alpha)


def upsample2x_nearest(x: torch.Tensor) -> torch.Tensor:
    """2x nearest-neighbour upsampling (official `upscale2d`)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def fade_in_ref(low, high, alpha):
    """Plain-PyTorch oracle. Differentiable to any order, alpha included."""
    if low.shape[-1] != high.shape[-1]:
        low = upsample2x_nearest(low)
    return (1 - alpha) * low + alpha * high


# Fast backends. fade_in is linear in (low, high), so its backward is the adjoint map and the adjoint's backward
# is fade_in again: the two kernel ops differentiate into each other to any order.
#   fade_in       (low, high, alpha, alpha_t?) -> y
#   fade_in_grad  (dy, low_size, alpha, alpha_t?) -> (dlow, dhigh)
# alpha_t, when given, is a (1,) device tensor read in place of alpha.

def _fake(low, high, alpha, alpha_t):
    return empty_in_layout_of(high)


def _fake_grad(dy, low_size, alpha, alpha_t):
    return empty_in_layout_of(dy, shape=low_size), empty_in_layout_of(dy)


def _autograd(k):
    def setup(ctx, inputs, output):
        low, high, ctx.alpha, alpha_t = inputs
        ctx.low_size = list(low.shape)
        ctx.save_for_backward(alpha_t)

    def backward(ctx, dy):
        alpha_t, = ctx.saved_tensors
        need_low, need_high = ctx.needs_input_grad[:2]
        if not (need_low or need_high):
            return None, None, None, None
        dlow, dhigh = k.fade_in_grad(dy, ctx.low_size, ctx.alpha, alpha_t)
        return dlow if need_low else None, dhigh if need_high else None, None, None

    def grad_setup(ctx, inputs, output):
        dy, ctx.low_size, ctx.alpha, alpha_t = inputs
        ctx.high_shape, ctx.high_dtype = dy.shape, dy.dtype
        ctx.save_for_backward(alpha_t)

    def grad_backward(ctx, ddlow, ddhigh):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        alpha_t, = ctx.saved_tensors
        if ddhigh is None:
            ddhigh = torch.zeros(ctx.high_shape, dtype=ctx.high_dtype, device=ddlow.device)
        if ddlow is None:
            ddlow = ddhigh.new_zeros(ctx.low_size)
        return k.fade_in(ddlow, ddhigh, ctx.alpha, alpha_t), None, None, None

    return {"fade_in": (setup, backward), "fade_in_grad": (grad_setup, grad_backward)}


def _call(k, low, high, alpha):
    if isinstance(alpha, torch.Tensor):
        if alpha.requires_grad:
            return fade_in_ref(low, high, alpha)
        return k.fade_in(low.to(high.dtype), high, 0.0, alpha.reshape(1).to(high.device))
    return k.fade_in(low.to(high.dtype), high, float(alpha), None)


register_backends(
    "fade_in", ref=fade_in_ref, kernels="fade_in", autograd=_autograd, call=_call,
    kernel_ops={
        "fade_in": KernelOp("(Tensor low, Tensor high, float alpha, Tensor? alpha_t) -> Tensor", _fake),
        "fade_in_grad": KernelOp("(Tensor dy, int[] low_size, float alpha, Tensor? alpha_t) -> (Tensor, Tensor)",
                                 _fake_grad),
    })
