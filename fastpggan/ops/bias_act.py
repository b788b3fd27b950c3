"""bias_act: the epilogue of every equalized-LR layer.

    y = leaky_relu(x * gain + bias[c], negative_slope)           (negative_slope = 1 means linear)
    y = y / sqrt(mean_c(y^2) + 1e-8)                              if pixel_norm  (paper Sec. 4.2, "pixelwise feature vector normalization")

The channel axis is dim 1 of a tensor of 2 or more dims. fp16/bf16 inputs are computed in fp32 and cast back,
so the pixel-norm statistics are always fp32. `gain` carries the equalized-LR scale gain/sqrt(fan_in), which is
linear and so commutes with the convolution before it (paper Sec. 4.1, "equalized learning rate").
"""
from typing import Optional

import torch
import torch.nn.functional as F

from fastpggan.kernels._layout import empty_in_layout_of

from . import _dispatch
from ._util import triton_unavailable, upcast

PIXEL_NORM_EPS = 1e-8


def bias_act_ref(x, bias=None, gain=1.0, negative_slope=0.2, pixel_norm=False):
    """Plain-PyTorch oracle. Differentiable to any order through autograd."""
    y = upcast(x)
    if gain != 1.0:
        y = y * gain
    if bias is not None:
        y = y + bias.to(y.dtype).reshape([1, -1] + [1] * (y.ndim - 2))
    if negative_slope != 1.0:
        y = F.leaky_relu(y, negative_slope)
    if pixel_norm:
        y = y * torch.rsqrt(y.square().mean(dim=1, keepdim=True) + PIXEL_NORM_EPS)
    return y.to(x.dtype)


_dispatch.register("bias_act", "ref", bias_act_ref)


# Triton backend. Each kernel is a torch custom op, so autograd and torch.compile see one opaque op.
#   forward            -> backward                    -> double backward
#   bias_act_triton    -> bias_act_grad_triton        -> bias_act_grad_triton (LReLU is piecewise linear)
#   bias_act_pn_triton -> bias_act_pn_grad_triton     -> not supported (G's pixel norm needs first order only)

def _kernels():
    from fastpggan.kernels import bias_act as k
    return k


@torch.library.custom_op("fastpggan::bias_act_triton", mutates_args=())
def _bias_act_triton_op(x: torch.Tensor, bias: Optional[torch.Tensor], gain: float, slope: float) -> torch.Tensor:
    return _kernels().bias_act(x, bias, gain, slope)


@torch.library.custom_op("fastpggan::bias_act_grad_triton", mutates_args=())
def _bias_act_grad_triton_op(dy: torch.Tensor, y: torch.Tensor, gain: float, slope: float) -> torch.Tensor:
    """dx = where(y > 0, 1, slope) * dy * gain."""
    return _kernels().bias_act(dy, None, gain, slope, ref=y)


@torch.library.custom_op("fastpggan::bias_act_pn_triton", mutates_args=())
def _bias_act_pn_triton_op(x: torch.Tensor, bias: Optional[torch.Tensor], gain: float,
                           slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, r) with r the per-pixel rsqrt(mean_c a^2 + eps), saved for the backward."""
    return _kernels().bias_act_pixel_norm(x, bias, gain, slope)


@torch.library.custom_op("fastpggan::bias_act_pn_grad_triton", mutates_args=())
def _bias_act_pn_grad_triton_op(dy: torch.Tensor, y: torch.Tensor, r: torch.Tensor, gain: float,
                                slope: float) -> torch.Tensor:
    return _kernels().bias_act_pixel_norm_grad(dy, y, r, gain, slope)


@_bias_act_triton_op.register_fake
def _(x, bias, gain, slope):
    return empty_in_layout_of(x)


@_bias_act_grad_triton_op.register_fake
def _(dy, y, gain, slope):
    return empty_in_layout_of(y)


@_bias_act_pn_triton_op.register_fake
def _(x, bias, gain, slope):
    pixels = x.numel() // x.shape[1] if x.shape[1] else 0
    return empty_in_layout_of(x), x.new_empty((pixels,), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


@_bias_act_pn_grad_triton_op.register_fake
def _(dy, y, r, gain, slope):
    return empty_in_layout_of(y)


def _bias_grad(dx, gain, bias_dtype):
    """db = sum of dx over all but the channel axis, / gain (dx = gain * d(pre-activation))."""
    dims = [0] + list(range(2, dx.ndim))
    return (dx.sum(dim=dims, dtype=torch.float64 if dx.dtype == torch.float64 else torch.float32) / gain).to(bias_dtype)


def _setup_bias_act(ctx, inputs, output):
    x, bias, gain, slope = inputs
    y = output[0] if isinstance(output, tuple) else output
    ctx.gain, ctx.slope = gain, slope
    ctx.bias_dtype = bias.dtype if bias is not None else None
    if isinstance(output, tuple):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(y, output[1])
    else:
        ctx.save_for_backward(y)


def _bias_act_backward(ctx, dy):
    y, = ctx.saved_tensors
    gain = ctx.gain if ctx.gain != 0 else 1.0  # with gain 0, dx is 0 but the bias still needs the masked dy
    dx = _bias_act_grad_triton_op(dy, y, gain, ctx.slope)
    db = _bias_grad(dx, gain, ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return (dx if ctx.gain != 0 else torch.zeros_like(dx)), db, None, None


def _setup_bias_act_grad(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])
    ctx.gain, ctx.slope = inputs[2], inputs[3]


def _bias_act_grad_backward(ctx, ddx):
    y, = ctx.saved_tensors
    return _bias_act_grad_triton_op(ddx, y, ctx.gain, ctx.slope), None, None, None


def _bias_act_pn_backward(ctx, dy, _dr):
    y, r = ctx.saved_tensors
    gain = ctx.gain if ctx.gain != 0 else 1.0
    dx = _bias_act_pn_grad_triton_op(dy, y, r, gain, ctx.slope)
    db = _bias_grad(dx, gain, ctx.bias_dtype) if ctx.bias_dtype is not None else None
    return (dx if ctx.gain != 0 else torch.zeros_like(dx)), db, None, None


def _bias_act_pn_grad_backward(ctx, ddx):
    raise RuntimeError("fastpggan: the second-order gradient of bias_act with pixel_norm=True is not implemented "
                       "for impl='triton' (PGGAN needs it only to first order); use impl='ref' for it")


_bias_act_triton_op.register_autograd(_bias_act_backward, setup_context=_setup_bias_act)
_bias_act_grad_triton_op.register_autograd(_bias_act_grad_backward, setup_context=_setup_bias_act_grad)
_bias_act_pn_triton_op.register_autograd(_bias_act_pn_backward, setup_context=_setup_bias_act)
_bias_act_pn_grad_triton_op.register_autograd(_bias_act_pn_grad_backward, setup_context=lambda ctx, inputs, output: None)


def bias_act_triton(x, bias=None, gain=1.0, negative_slope=0.2, pixel_norm=False):
    bias = bias.contiguous() if bias is not None else None
    if pixel_norm:
        return _bias_act_pn_triton_op(x, bias, float(gain), float(negative_slope))[0]
    return _bias_act_triton_op(x, bias, float(gain), float(negative_slope))


def _bias_act_triton_unavailable(x):
    reason = triton_unavailable(x)
    if reason is None:
        from fastpggan.kernels._common import MAX_CHANNELS
        if x.shape[1] > MAX_CHANNELS:
            reason = f"the Triton pixel-norm tile holds at most {MAX_CHANNELS} channels, got {x.shape[1]}"
    return reason


_dispatch.register("bias_act", "triton", bias_act_triton, _bias_act_triton_unavailable)


def bias_act(x, bias=None, *, gain=1.0, negative_slope=0.2, pixel_norm=False, impl="auto"):
    """Fused gain + per-channel bias + LeakyReLU (+ pixel norm). See the module docstring for the formula."""
    if x.ndim < 2:
        raise ValueError(f"bias_act expects a tensor with a channel axis at dim 1, got shape {tuple(x.shape)}")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != x.shape[1]):
        raise ValueError(f"bias must have shape ({x.shape[1]},), got {tuple(bias.shape)}")
    fn = _dispatch.resolve("bias_act", impl, x)
    return fn(x, bias, float(gain), float(negative_slope), bool(pixel_norm))
