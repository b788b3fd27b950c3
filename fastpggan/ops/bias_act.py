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
from . import _ext
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


# Fast backends. Each kernel is a torch op (a Python custom op for Triton, a TORCH_LIBRARY op for the
# extension), so autograd and torch.compile see one opaque op. Both backends have the same four ops:
#   fwd     (x, bias?, gain, slope) -> y              backward: grad        double backward: grad again
#   grad    (dy, y, gain, slope) -> dx                (LReLU is piecewise linear: the mask does not move)
#   pn      (x, bias?, gain, slope) -> (y, r)         backward: pn_grad     double backward: not supported
#   pn_grad (dy, y, r, gain, slope) -> dx             (G's pixel norm needs first order only)


def _fake_like_x(x, *args):
    return empty_in_layout_of(x)


def _fake_like_y(dy, y, *args):
    return empty_in_layout_of(y)


def _fake_pn(x, bias, gain, slope):
    pixels = x.numel() // x.shape[1] if x.shape[1] else 0
    r = x.new_empty((pixels,), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return empty_in_layout_of(x), r


def _bias_grad(dx, gain, bias_dtype):
    """db = sum of dx over all but the channel axis, / gain (dx = gain * d(pre-activation))."""
    dims = [0] + list(range(2, dx.ndim))
    return (dx.sum(dim=dims, dtype=torch.float64 if dx.dtype == torch.float64 else torch.float32) / gain).to(bias_dtype)


def _setup(ctx, inputs, output):
    x, bias, gain, slope = inputs
    ctx.gain, ctx.slope = gain, slope
    ctx.bias_dtype = bias.dtype if bias is not None else None
    if isinstance(output, tuple):  # (y, r) of pixel norm
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(*output)
    else:
        ctx.save_for_backward(output)


def wire(fwd, grad, pn, pn_grad):
    """Register fake tensors and autograd for one backend's four bias_act ops."""
    def input_grads(ctx, dx_fn):
        gain = ctx.gain if ctx.gain != 0 else 1.0  # with gain 0, dx is 0 but the bias still needs the masked dy
        dx = dx_fn(gain)
        db = _bias_grad(dx, gain, ctx.bias_dtype) if ctx.bias_dtype is not None else None
        return (dx if ctx.gain != 0 else torch.zeros_like(dx)), db, None, None

    def fwd_backward(ctx, dy):
        y, = ctx.saved_tensors
        return input_grads(ctx, lambda gain: grad(dy, y, gain, ctx.slope))

    def grad_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.gain, ctx.slope = inputs[2], inputs[3]

    def grad_backward(ctx, ddx):
        y, = ctx.saved_tensors
        return grad(ddx, y, ctx.gain, ctx.slope), None, None, None

    def pn_backward(ctx, dy, _dr):
        y, r = ctx.saved_tensors
        return input_grads(ctx, lambda gain: pn_grad(dy, y, r, gain, ctx.slope))

    def pn_grad_backward(ctx, ddx):
        raise RuntimeError("fastpggan: the second-order gradient of bias_act with pixel_norm=True is not implemented "
                           "for the fast backends (PGGAN needs it only to first order); use impl='ref' for it")

    for op, fake in ((fwd, _fake_like_x), (grad, _fake_like_y), (pn, _fake_pn), (pn_grad, _fake_like_y)):
        torch.library.register_fake(op, fake)
    torch.library.register_autograd(fwd, fwd_backward, setup_context=_setup)
    torch.library.register_autograd(grad, grad_backward, setup_context=grad_setup)
    torch.library.register_autograd(pn, pn_backward, setup_context=_setup)
    torch.library.register_autograd(pn_grad, pn_grad_backward, setup_context=lambda ctx, inputs, output: None)


def _call(fwd, pn, x, bias, gain, negative_slope, pixel_norm):
    bias = bias.contiguous() if bias is not None else None
    if pixel_norm:
        return pn(x, bias, float(gain), float(negative_slope))[0]
    return fwd(x, bias, float(gain), float(negative_slope))


# -- Triton (fastpggan.kernels.bias_act) --

def _kernels():
    from fastpggan.kernels import bias_act as k
    return k


@torch.library.custom_op("fastpggan::bias_act_triton", mutates_args=())
def _bias_act_triton_op(x: torch.Tensor, bias: Optional[torch.Tensor], gain: float, slope: float) -> torch.Tensor:
    return _kernels().bias_act(x, bias, gain, slope)


@torch.library.custom_op("fastpggan::bias_act_grad_triton", mutates_args=())
def _bias_act_grad_triton_op(dy: torch.Tensor, y: torch.Tensor, gain: float, slope: float) -> torch.Tensor:
    return _kernels().bias_act(dy, None, gain, slope, ref=y)


@torch.library.custom_op("fastpggan::bias_act_pn_triton", mutates_args=())
def _bias_act_pn_triton_op(x: torch.Tensor, bias: Optional[torch.Tensor], gain: float,
                           slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _kernels().bias_act_pixel_norm(x, bias, gain, slope)


@torch.library.custom_op("fastpggan::bias_act_pn_grad_triton", mutates_args=())
def _bias_act_pn_grad_triton_op(dy: torch.Tensor, y: torch.Tensor, r: torch.Tensor, gain: float,
                                slope: float) -> torch.Tensor:
    return _kernels().bias_act_pixel_norm_grad(dy, y, r, gain, slope)


wire(_bias_act_triton_op, _bias_act_grad_triton_op, _bias_act_pn_triton_op, _bias_act_pn_grad_triton_op)


def bias_act_triton(x, bias=None, gain=1.0, negative_slope=0.2, pixel_norm=False):
    return _call(_bias_act_triton_op, _bias_act_pn_triton_op, x, bias, gain, negative_slope, pixel_norm)


def _bias_act_triton_unavailable(x):
    reason = triton_unavailable(x)
    if reason is None:
        from fastpggan.kernels._common import MAX_CHANNELS
        if x.shape[1] > MAX_CHANNELS:
            reason = f"the Triton pixel-norm tile holds at most {MAX_CHANNELS} channels, got {x.shape[1]}"
    return reason


_dispatch.register("bias_act", "triton", bias_act_triton, _bias_act_triton_unavailable)


# -- C++/CUDA extension (csrc/, torch.ops.fastpggan_ext) --

@_ext.on_load
def _wire_ext():
    wire(_ext.op("bias_act"), _ext.op("bias_act_grad"), _ext.op("bias_act_pn"), _ext.op("bias_act_pn_grad"))


def bias_act_ext(x, bias=None, gain=1.0, negative_slope=0.2, pixel_norm=False):
    return _call(_ext.op("bias_act"), _ext.op("bias_act_pn"), x, bias, gain, negative_slope, pixel_norm)


_dispatch.register("bias_act", "ext", bias_act_ext, _ext.ext_unavailable)


def bias_act(x, bias=None, *, gain=1.0, negative_slope=0.2, pixel_norm=False, impl="auto"):
    """Fused gain + per-channel bias + LeakyReLU (+ pixel norm). See the module docstring for the formula."""
    if x.ndim < 2:
        raise ValueError(f"bias_act expects a tensor with a channel axis at dim 1, got shape {tuple(x.shape)}")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != x.shape[1]):
        raise ValueError(f"bias must have shape ({x.shape[1]},), got {tuple(bias.shape)}")
    fn = _dispatch.resolve("bias_act", impl, x)
    return fn(x, bias, float(gain), float(negative_slope), bool(pixel_norm))
