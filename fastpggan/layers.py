"""Drop-in nn.Modules of PGGAN, built on fastpggan.ops.

Equalized learning rate (paper Sec. 4.1): weights are stored N(0, 1) and scaled at run time by
gain / sqrt(fan_in); biases start at zero. The scale is linear, so it is applied in the bias_act epilogue
(`gain=`) instead of to the weight: conv(x, w) * s == conv(x, w * s).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops

# the public layers, the one list of them (tests iterate it; README "API" names the same)
__all__ = ["EqualizedConv2d", "EqualizedLinear", "PixelNorm", "MinibatchStdDev"]


def _ready(impl: str) -> str:
    """`impl`, with what choosing a fast backend on the CPU needs done now (ops.backends.prepare), so that the
    first call may be inside a torch.compile trace (a CUDA device is prepared by its first eager call, or
    explicitly)."""
    if impl != "ref":
        ops.backends.prepare("cpu")
    return impl


LRELU_SLOPE = 0.2
_SLOPES = {"lrelu": LRELU_SLOPE, "linear": 1.0}


def _slope(act: str) -> float:
    if act not in _SLOPES:
        raise ValueError(f"act must be 'lrelu' or 'linear', got {act!r}")
    return _SLOPES[act]


def fused_kernel_4x4(w: torch.Tensor) -> torch.Tensor:
    """Official `fused_scale` kernel: the 3x3 kernel zero-padded to 5x5 and its four 4x4 shifts summed.

    A 3x3 conv after 2x nearest upsampling, or before 2x2 average pooling (with a further x0.25), equals
    one stride-2 (transposed) conv with this 4x4 kernel.
    """
    w = F.pad(w, [1, 1, 1, 1])
    return w[..., 1:, 1:] + w[..., :-1, 1:] + w[..., 1:, :-1] + w[..., :-1, :-1]


class EqualizedConv2d(nn.Module):
    """conv2d with equalized LR, then bias, activation and optional pixel norm in one epilogue (ops.bias_act).

    Args:
        in_ch, out_ch: input and output channels.
        kernel_size: square kernel size; "same" padding.
        gain: the equalized-LR gain; the weight, stored N(0, 1), is scaled by gain / sqrt(in_ch * k * k) at run time.
        bias: add a per-channel bias (initialised to zero).
        up: 2x nearest upsample, then the conv3x3.
        down: the conv3x3, then 2x2 average pooling.
        fused_scale: with up, one stride-2 transposed conv with the summed 4x4 kernel (official upscale2d_conv2d),
            the same function as upsample + conv; with down, one stride-2 conv with the summed kernel x0.25
            (official conv2d_downscale2d), which pools *before* bias and activation. False: official
            fused_scale=False, upscale2d then conv2d, or conv2d, bias, activation (and pixel norm) then downscale2d.
        act: 'lrelu' (slope 0.2) or 'linear'.
        pixel_norm: pixelwise feature normalization after the activation (paper Sec. 4.2).
        impl: the ops backend ('auto', 'ref', 'triton', 'ext', 'compiled').
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int,
        *,
        gain: float = math.sqrt(2),
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        fused_scale: bool = True,
        act: str = "lrelu",
        pixel_norm: bool = False,
        impl: str = "auto",
    ):
        super().__init__()
        if up and down:
            raise ValueError("EqualizedConv2d: up and down are exclusive")
        if (up or down) and kernel_size != 3:
            raise ValueError("EqualizedConv2d: the up/down variants are defined for kernel_size=3")
        self.in_ch, self.out_ch, self.kernel_size = in_ch, out_ch, kernel_size
        self.up, self.down, self.act, self.pixel_norm, self.impl = up, down, act, pixel_norm, _ready(impl)
        self.fused_scale = bool(fused_scale)
        self.negative_slope = _slope(act)
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale = gain / math.sqrt(in_ch * kernel_size * kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype)
        gain = self.scale
        if self.up and self.fused_scale:
            # conv_transpose is the adjoint of correlation, so the kernel is flipped to equal upsample + conv2d(w).
            w4 = fused_kernel_4x4(w.flip(2, 3)).transpose(0, 1)
            y = F.conv_transpose2d(x, w4, stride=2, padding=1)
        elif self.down and self.fused_scale:
            y = F.conv2d(x, fused_kernel_4x4(w), stride=2, padding=1)
            gain = gain * 0.25
        else:
            if self.up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            y = F.conv2d(x, w, padding=self.kernel_size // 2)
        y = ops.bias_act(
            y, self.bias, gain=gain, negative_slope=self.negative_slope, pixel_norm=self.pixel_norm, impl=self.impl
        )
        return F.avg_pool2d(y, 2) if self.down and not self.fused_scale else y

    def extra_repr(self) -> str:
        scale = f", fused_scale={self.fused_scale}" if self.up or self.down else ""
        return (
            f"{self.in_ch}, {self.out_ch}, kernel_size={self.kernel_size}, up={self.up}, down={self.down}"
            f"{scale}, act={self.act!r}, pixel_norm={self.pixel_norm}"
        )


class EqualizedLinear(nn.Module):
    """Dense layer with equalized LR: y = act(x @ (w * gain/sqrt(in))^T + b), optional pixel norm.

    Args:
        in_features, out_features: input (after flattening all but dim 0) and output sizes.
        gain, bias, act, pixel_norm, impl: as for EqualizedConv2d.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        gain: float = math.sqrt(2),
        bias: bool = True,
        act: str = "lrelu",
        pixel_norm: bool = False,
        impl: str = "auto",
    ):
        super().__init__()
        self.in_features, self.out_features, self.act, self.pixel_norm, self.impl = (
            in_features,
            out_features,
            act,
            pixel_norm,
            _ready(impl),
        )
        self.negative_slope = _slope(act)
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x.flatten(1), self.weight.to(x.dtype))
        return ops.bias_act(
            y,
            self.bias,
            gain=self.scale,
            negative_slope=self.negative_slope,
            pixel_norm=self.pixel_norm,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, act={self.act!r}, pixel_norm={self.pixel_norm}"


class PixelNorm(nn.Module):
    """b = a / sqrt(mean_c(a^2) + 1e-8), over dim 1 (paper Sec. 4.2)."""

    def __init__(self, impl: str = "auto"):
        super().__init__()
        self.impl = _ready(impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.bias_act(x, None, negative_slope=1.0, pixel_norm=True, impl=self.impl)


class MinibatchStdDev(nn.Module):
    """Appends the group-stddev feature map (paper Sec. 3): (N, C, H, W) -> (N, C+1, H, W)."""

    def __init__(self, group_size: int = 4, impl: str = "auto"):
        super().__init__()
        self.group_size, self.impl = group_size, _ready(impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.minibatch_stddev(x, self.group_size, impl=self.impl)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"
