"""Drop-in nn.Modules of PGGAN, built on fastpggan.ops.

Equalized learning rate (paper Sec. 4.1): weights are stored N(0, 1) and scaled at run time by
gain / sqrt(fan_in); biases start at zero. The scale is linear, conv(x, w) * s == conv(x, w * s), so it goes where
it costs least: into the bias_act epilogue (`gain=`) where there is one (an activation or pixel norm), else into
the weight, with the bias into torch's op, so that a layer that fuses nothing costs what torch's layer does.
"""

import math
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .layer_args import CONV_ARGS, CONV_TRANSPOSE_ARGS, LINEAR_ARGS, MovesWeights, check_conv, pair, ready, slope

# the public layers, the one list of them (tests iterate it; README "API" names the same)
__all__ = ["EqualizedConv2d", "EqualizedConvTranspose2d", "EqualizedLinear", "PixelNorm", "MinibatchStdDev"]


def fused_kernel_4x4(w: torch.Tensor) -> torch.Tensor:
    """Official `fused_scale` kernel: the 3x3 kernel zero-padded to 5x5 and its four 4x4 shifts summed.

    A 3x3 conv after 2x nearest upsampling, or before 2x2 average pooling (with a further x0.25), equals
    one stride-2 (transposed) conv with this 4x4 kernel.
    """
    w = F.pad(w, [1, 1, 1, 1])
    return w[..., 1:, 1:] + w[..., :-1, 1:] + w[..., 1:, :-1] + w[..., :-1, :-1]


class EqualizedConv2d(MovesWeights[nn.Conv2d]):
    """nn.Conv2d with equalized LR, then bias, activation and optional pixel norm in one epilogue (ops.bias_act).

    The arguments up to `dtype` are nn.Conv2d's, in its order and with its defaults (padding 0; 'same' follows
    torch's arithmetic, even kernels included; only padding_mode 'zeros'). The weight is stored N(0, 1) and
    scaled by gain / sqrt(fan_in), fan_in = in_channels / groups * kh * kw, at run time; the bias starts at zero.
    State dict: `weight` (out_channels, in_channels / groups, kh, kw) unscaled, `bias` (out_channels) or none;
    `from_module(conv)` and `to_plain()` move weights from and to an nn.Conv2d. Dtypes: the weight is cast to the
    input's dtype (as under autocast), where nn.Conv2d would refuse a bf16 input on fp32 weights.

    Args (after nn.Conv2d's):
        gain: the equalized-LR gain (PGGAN: sqrt(2); 1 for to_rgb).
        up: 2x nearest upsample, then the conv (kernel 3, stride 1, padding 1 or 'same').
        down: the conv, then 2x2 average pooling (same restrictions).
        fused_scale: with up, one stride-2 transposed conv with the summed 4x4 kernel (official upscale2d_conv2d),
            the same function as upsample + conv; with down, one stride-2 conv with the summed kernel x0.25
            (official conv2d_downscale2d), which pools *before* bias and activation. False: official
            fused_scale=False, upscale2d then conv2d, or conv2d, bias, activation (and pixel norm) then downscale2d.
        act: 'linear' (the default, as nn.Conv2d) or 'lrelu' (slope 0.2, PGGAN's).
        pixel_norm: pixelwise feature normalization after the activation (paper Sec. 4.2).
        impl: the ops backend ('auto', 'ref', 'triton', 'ext', 'compiled').
    """

    plain, names = nn.Conv2d, CONV_ARGS

    def not_plain(self) -> str:
        return "up or down" if self.up or self.down else super().not_plain()

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Sequence[int]],
        stride: Union[int, Sequence[int]] = 1,
        padding: Union[str, int, Sequence[int]] = 0,
        dilation: Union[int, Sequence[int]] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        gain: float = math.sqrt(2),
        up: bool = False,
        down: bool = False,
        fused_scale: bool = True,
        act: str = "linear",
        pixel_norm: bool = False,
        impl: str = "auto",
    ):
        super().__init__()
        k, st, dil = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(dilation, "dilation")
        if isinstance(padding, str):
            if padding not in ("same", "valid"):
                raise ValueError(f"padding must be 'same', 'valid', an int or a pair, got {padding!r}")
            if padding == "same" and st != (1, 1):
                raise ValueError("padding='same' needs stride 1 (as nn.Conv2d); give the padding as numbers")
            pad: Union[str, Tuple[int, int]] = padding
        else:
            pad = pair(padding, "padding")
        check_conv(in_channels, out_channels, groups, padding_mode)
        if up and down:
            raise ValueError("EqualizedConv2d: up and down are exclusive")
        if (up or down) and (
            k != (3, 3) or st != (1, 1) or pad not in ("same", (1, 1)) or dil != (1, 1) or groups != 1
        ):
            raise ValueError("EqualizedConv2d: up and down are defined for a 3x3 kernel, stride 1, padding 1 ('same')")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding, self.dilation, self.groups = st, pad, dil, groups
        self.up, self.down, self.act, self.pixel_norm, self.impl = up, down, act, pixel_norm, ready(impl)
        self.fused_scale = bool(fused_scale)
        self.negative_slope = slope(act)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels // groups, *k, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None
        self.gain = gain
        self.scale = gain / math.sqrt(in_channels // groups * k[0] * k[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gain = self.scale * (0.25 if self.down and self.fused_scale else 1.0)
        resize = (4 if self.up else 1) / (4 if self.down and self.fused_scale else self.stride[0] * self.stride[1])
        w, b, folded = self.weight_and_bias(x, gain, int(x.numel() // x.shape[1] * self.out_channels * resize))
        if self.up and self.fused_scale:
            # conv_transpose is the adjoint of correlation, so the kernel is flipped to equal upsample + conv2d(w).
            w4 = fused_kernel_4x4(w.flip(2, 3)).transpose(0, 1)
            y = F.conv_transpose2d(x, w4, b, stride=2, padding=1)
        elif self.down and self.fused_scale:
            y = F.conv2d(x, fused_kernel_4x4(w), b, stride=2, padding=1)
        else:
            if self.up:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            y = F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups)
        y = self.epilogue(y, gain, folded)
        return F.avg_pool2d(y, 2) if self.down and not self.fused_scale else y

    def extra_repr(self) -> str:
        scale = f", fused_scale={self.fused_scale}" if self.up or self.down else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, up={self.up}, down={self.down}{scale}, act={self.act!r}, "
            f"pixel_norm={self.pixel_norm}"
        )


class EqualizedConvTranspose2d(MovesWeights[nn.ConvTranspose2d]):
    """nn.ConvTranspose2d with equalized LR, then bias, activation and optional pixel norm in one epilogue.

    The arguments up to `dtype` are nn.ConvTranspose2d's, in its order and with its defaults (only padding_mode
    'zeros'); forward takes its `output_size`. The weight (in_channels, out_channels / groups, kh, kw) is stored
    N(0, 1) and scaled by gain / sqrt(fan_in), fan_in = in_channels / groups * kh * kw / (sh * sw): the inputs that
    each output pixel sums where the stride divides the kernel. On a 1x1 input, PGGAN's first block as the public
    ports write it (`EqualizedConvTranspose2d(latent, c, 4)`), the scale is sqrt(2) / sqrt(16 * latent), the
    official dense layer's gain / 4 (networks.py Generator) exactly. State dict, from_module/to_plain and dtypes:
    as for EqualizedConv2d.

    Args (after nn.ConvTranspose2d's):
        gain, act, pixel_norm, impl: as for EqualizedConv2d.
    """

    plain, names = nn.ConvTranspose2d, CONV_TRANSPOSE_ARGS

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Union[int, Sequence[int]],
        stride: Union[int, Sequence[int]] = 1,
        padding: Union[int, Sequence[int]] = 0,
        output_padding: Union[int, Sequence[int]] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: Union[int, Sequence[int]] = 1,
        padding_mode: str = "zeros",
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        gain: float = math.sqrt(2),
        act: str = "linear",
        pixel_norm: bool = False,
        impl: str = "auto",
    ):
        super().__init__()
        k, st, pad = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(padding, "padding")
        out_pad, dil = pair(output_padding, "output_padding"), pair(dilation, "dilation")
        check_conv(in_channels, out_channels, groups, padding_mode)
        if any(st[d] < 1 or out_pad[d] >= max(st[d], dil[d]) for d in (0, 1)):
            raise ValueError(f"output_padding {out_pad} must be smaller than the stride {st} or the dilation {dil}")
        self.in_channels, self.out_channels, self.kernel_size, self.stride = in_channels, out_channels, k, st
        self.padding, self.output_padding, self.groups, self.dilation = pad, out_pad, groups, dil
        self.act, self.pixel_norm, self.impl = act, pixel_norm, ready(impl)
        self.negative_slope = slope(act)
        self.weight = nn.Parameter(torch.randn(in_channels, out_channels // groups, *k, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_channels, device=device, dtype=dtype)) if bias else None
        self.gain = gain
        self.scale = gain / math.sqrt(in_channels // groups * k[0] * k[1] / (st[0] * st[1]))

    def _output_padding(self, x: torch.Tensor, output_size: Optional[Sequence[int]]) -> List[int]:
        if output_size is None:
            return list(self.output_padding)
        size, pads = list(output_size)[-2:], []
        for d in (0, 1):
            least = (
                (x.shape[d - 2] - 1) * self.stride[d]
                - 2 * self.padding[d]
                + self.dilation[d] * (self.kernel_size[d] - 1)
                + 1
            )
            pads.append(size[d] - least)
            if not 0 <= pads[d] < max(self.stride[d], self.dilation[d]):
                raise ValueError(f"output_size {tuple(size)} is out of reach of input {tuple(x.shape[-2:])} here")
        return pads

    def forward(self, x: torch.Tensor, output_size: Optional[Sequence[int]] = None) -> torch.Tensor:
        pads = self._output_padding(x, output_size)
        out_numel = x.numel() // x.shape[1] * self.out_channels * self.stride[0] * self.stride[1]
        w, b, folded = self.weight_and_bias(x, self.scale, out_numel)
        y = F.conv_transpose2d(x, w, b, self.stride, self.padding, pads, self.groups, self.dilation)
        return self.epilogue(y, self.scale, folded)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, act={self.act!r}, pixel_norm={self.pixel_norm}"
        )


class EqualizedLinear(MovesWeights[nn.Linear]):
    """nn.Linear with equalized LR: y = act(x @ (w * gain/sqrt(in_features))^T + b), optional pixel norm.

    As nn.Linear it maps the last dimension of an input of any leading dimensions; `flatten=True` flattens all but
    dim 0 first (the official dense layer on a feature map). State dict, from_module/to_plain and dtypes: as for
    EqualizedConv2d. Pixel norm normalizes over the output features.

    Args:
        in_features, out_features, bias, device, dtype: nn.Linear's.
        gain, act, pixel_norm, impl: as for EqualizedConv2d.
        flatten: flatten all but dim 0 of the input first.
    """

    plain, names = nn.Linear, LINEAR_ARGS

    def not_plain(self) -> str:
        return "flatten" if self.flatten else super().not_plain()

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        device: Optional[torch.device] = None,
        dtype: Optional[torch.dtype] = None,
        *,
        gain: float = math.sqrt(2),
        act: str = "linear",
        pixel_norm: bool = False,
        flatten: bool = False,
        impl: str = "auto",
    ):
        super().__init__()
        self.in_features, self.out_features, self.act, self.pixel_norm = in_features, out_features, act, pixel_norm
        self.flatten, self.impl = flatten, ready(impl)
        self.negative_slope = slope(act)
        self.weight = nn.Parameter(torch.randn(out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype)) if bias else None
        self.gain = gain
        self.scale = gain / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1) if self.flatten else x
        rows = x.reshape(-1, self.in_features)
        w = self.weight.to(x.dtype)
        if self.fuses_nothing and self.bias is not None:
            # nothing to fuse: the scale is GEMM's alpha and the bias its C, no pass beyond torch's own
            y = torch.addmm(self.bias.to(x.dtype), rows, w.t(), alpha=self.scale)
        else:
            y = self.epilogue(rows @ w.t(), self.scale, folded=False)
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (
            f"{self.in_features}, {self.out_features}, act={self.act!r}, pixel_norm={self.pixel_norm}"
            f"{', flatten=True' if self.flatten else ''}"
        )


class PixelNorm(nn.Module):
    """b = a / sqrt(mean_c(a^2) + 1e-8), over dim 1 (paper Sec. 4.2)."""

    def __init__(self, impl: str = "auto"):
        super().__init__()
        self.impl = ready(impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.bias_act(x, None, negative_slope=1.0, pixel_norm=True, impl=self.impl)


class MinibatchStdDev(nn.Module):
    """Appends the group-stddev feature map (paper Sec. 3): (N, C, H, W) -> (N, C+1, H, W)."""

    def __init__(self, group_size: int = 4, impl: str = "auto"):
        super().__init__()
        self.group_size, self.impl = group_size, ready(impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.minibatch_stddev(x, self.group_size, impl=self.impl)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"
