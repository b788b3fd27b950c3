"""bias_act: the epilogue of every equalized-LR layer.

    y = leaky_relu(x * gain + bias[c], negative_slope)           (negative_slope = 1 means linear)
    y = y / sqrt(mean_c(y^2) + 1e-8)       if pixel_norm  (paper Sec. 4.2, "pixelwise feature vector normalization")

The channel axis is dim 1 of a tensor of 2 or more dims. fp16/bf16 inputs are computed in fp32 and cast back,
so the pixel-norm statistics are always fp32. `gain` carries the equalized-LR scale gain/sqrt(fan_in), which is
linear and so commutes with the convolution before it (paper Sec. 4.1, "equalized learning rate").
"""
from typing import Optional

import torch
import torch.nn.functional as F

from fastpggan.kernels._tensors import accumulator_dtype, empty_in_layout_of

from . import _dispatch
from ._backends import KernelOp, register_backends
from ._util import upcast

PIXEL_NORM_EPS = 1e-8


def bias_act(x: torch.Tensor, bias: Optional[torch.Tensor] = None, *, gain: float = 1.0,
             negative_slope: float = 0.2, pixel_norm: bool = False, impl: str = "auto") -> torch.Tensor:
    """Fused gain + per-channel bias + LeakyReLU (+ pixel norm over the channels); see the module docstring.

    Args:
        x: (N, C, ...) pre-activations, channel axis 1; NCHW-contiguous or channels_last.
        bias: (C,) per-channel bias, or None.
        gain: scale applied to x before the bias (equalized LR's gain / sqrt(fan_in)).
        negative_slope: LeakyReLU slope; 1.0 is linear (no activation).
        pixel_norm: divide each pixel's channel vector by its RMS (+1e-8 inside the root) after the activation.
        impl: 'auto', 'ref', 'triton' or 'ext' (see fastpggan.ops).

    Returns:
        Tensor of x's shape and dtype; the fast backends keep x's memory layout. Differentiable twice without pixel
        norm, once with it on the fast backends (G needs no more).
    """
    if x.ndim < 2:
        raise ValueError(f"bias_act expects a tensor with a channel axis at dim 1, got shape {tuple(x.shape)}")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != x.shape[1]):
        raise ValueError(f"bias must have shape ({x.shape[1]},), got {tuple(bias.shape)}")
    variant = ",".join(["linear" if negative_slope == 1.0 else "lrelu", "nobias" if bias is None else "bias"] +
                       (["pn"] if pixel_norm else []))
    fn = _dispatch.resolve("bias_act", impl, x, variant, extra=dict(
        gain=float(gain), slope=float(negative_slope), bias_dtype=None if bias is None else _dtype_name(bias)))
    return fn(x, bias, float(gain), float(negative_slope), bool(pixel_norm))


def _dtype_name(t):
    return str(t.dtype).replace("torch.", "")


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


# Fast backends. Each kernel op is one opaque torch op to autograd and torch.compile:
#   bias_act          (x, bias?, gain, slope) -> y         backward: bias_act_grad   double backward: it again
#   bias_act_grad     (dy, y, gain, slope) -> dx           (LReLU is piecewise linear: the mask does not move)
#   bias_act_pn       (x, bias?, gain, slope) -> (y, r)    backward: bias_act_pn_grad  double backward: none
#   bias_act_pn_grad  (dy, y, r, gain, slope) -> dx        (G's pixel norm needs first order only)

def _fake_like_x(x, *args):
    return empty_in_layout_of(x)


def _fake_like_y(dy, y, *args):
    return empty_in_layout_of(y)


def _fake_pn(x, bias, gain, slope):
    pixels = x.numel() // x.shape[1] if x.shape[1] else 0
    return empty_in_layout_of(x), x.new_empty((pixels,), dtype=accumulator_dtype(x.dtype))


def _bias_grad(dx, gain, bias_dtype):
    """db = sum of dx over all but the channel axis, / gain (dx = gain * d(pre-activation))."""
    dims = [0] + list(range(2, dx.ndim))
    return (dx.sum(dim=dims, dtype=accumulator_dtype(dx.dtype)) / gain).to(bias_dtype)


def _setup(ctx, inputs, output):
    x, bias, gain, slope = inputs
    ctx.gain, ctx.slope = gain, slope
    ctx.bias_dtype = bias.dtype if bias is not None else None
    if isinstance(output, tuple):  # (y, r) of pixel norm
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(*output)
    else:
        ctx.save_for_backward(output)


def _input_grads(ctx, dx_of_gain):
    """(dx, dbias, None, None) as asked for; dbias needs dx, so dx is computed if either is."""
    need_x, need_bias = ctx.needs_input_grad[:2]
    if not (need_x or need_bias):
        return None, None, None, None
    gain = ctx.gain if ctx.gain != 0 else 1.0  # with gain 0, dx is 0 but the bias still needs the masked dy
    dx = dx_of_gain(gain)
    db = _bias_grad(dx, gain, ctx.bias_dtype) if need_bias else None
    if need_x and ctx.gain == 0:
        dx = torch.zeros_like(dx)
    return (dx if need_x else None), db, None, None


def _autograd(k):
    def backward(ctx, dy):
        y, = ctx.saved_tensors
        return _input_grads(ctx, lambda gain: k.bias_act_grad(dy, y, gain, ctx.slope))

    def grad_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.gain, ctx.slope = inputs[2], inputs[3]

    def grad_backward(ctx, ddx):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        y, = ctx.saved_tensors
        return k.bias_act_grad(ddx, y, ctx.gain, ctx.slope), None, None, None

    def pn_backward(ctx, dy, _dr):
        y, r = ctx.saved_tensors
        return _input_grads(ctx, lambda gain: k.bias_act_pn_grad(dy, y, r, gain, ctx.slope))

    def pn_grad_backward(ctx, ddx):
        raise RuntimeError("fastpggan: the second-order gradient of bias_act with pixel_norm=True is not implemented "
                           "for the fast backends (PGGAN needs it only to first order); use impl='ref' for it")

    return {"bias_act": (_setup, backward), "bias_act_grad": (grad_setup, grad_backward),
            "bias_act_pn": (_setup, pn_backward),
            "bias_act_pn_grad": (lambda ctx, inputs, output: None, pn_grad_backward)}


def _call(k, x, bias, gain, negative_slope, pixel_norm):
    bias = bias.contiguous() if bias is not None else None
    if pixel_norm:
        return k.bias_act_pn(x, bias, gain, negative_slope)[0]
    return k.bias_act(x, bias, gain, negative_slope)


register_backends(
    "bias_act", ref=bias_act_ref, kernels="bias_act", autograd=_autograd, call=_call,
    kernel_ops={
        "bias_act": KernelOp("(Tensor x, Tensor? bias, float gain, float slope) -> Tensor", _fake_like_x),
        "bias_act_grad": KernelOp("(Tensor dy, Tensor y, float gain, float slope) -> Tensor", _fake_like_y),
        "bias_act_pn": KernelOp("(Tensor x, Tensor? bias, float gain, float slope) -> (Tensor, Tensor)", _fake_pn),
        "bias_act_pn_grad": KernelOp("(Tensor dy, Tensor y, Tensor r, float gain, float slope) -> Tensor",
                                     _fake_like_y),
    })
