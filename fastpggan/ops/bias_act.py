"""bias_act: the epilogue of every equalized-LR layer.

    y = leaky_relu(x * gain + bias[c], negative_slope)           (negative_slope = 1 means linear)
    y = y / sqrt(mean_c(y^2) + 1e-8)                              if pixel_norm  (paper Sec. 4.2, "pixelwise feature vector normalization")

The channel axis is dim 1 of a tensor of 2 or more dims. fp16/bf16 inputs are computed in fp32 and cast back,
so the pixel-norm statistics are always fp32. `gain` carries the equalized-LR scale gain/sqrt(fan_in), which is
linear and so commutes with the convolution before it (paper Sec. 4.1, "equalized learning rate").
"""
import torch
import torch.nn.functional as F

from . import _dispatch
from ._util import upcast

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


def bias_act(x, bias=None, *, gain=1.0, negative_slope=0.2, pixel_norm=False, impl="auto"):
    """Fused gain + per-channel bias + LeakyReLU (+ pixel norm). See the module docstring for the formula."""
    if x.ndim < 2:
        raise ValueError(f"bias_act expects a tensor with a channel axis at dim 1, got shape {tuple(x.shape)}")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != x.shape[1]):
        raise ValueError(f"bias must have shape ({x.shape[1]},), got {tuple(bias.shape)}")
    fn = _dispatch.resolve("bias_act", impl, x)
    return fn(x, bias, float(gain), float(negative_slope), bool(pixel_norm))
