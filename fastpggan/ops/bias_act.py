"""bias_act: the epilogue of every equalized-LR layer.

    y = leaky_relu(x * gain + bias[c], negative_slope)           (negative_slope = 1 means linear)
    y = y / sqrt(mean_c(y^2) + 1e-8)       if pixel_norm  (paper Sec. 4.2, "pixelwise feature vector normalization")

The channel axis is dim 1 of a tensor of 2 or more dims. fp16/bf16 inputs are computed in fp32 and cast back,
so the pixel-norm statistics are always fp32. `gain` carries the equalized-LR scale gain/sqrt(fan_in), which is
linear and so commutes with the convolution before it (paper Sec. 4.1, "equalized learning rate").
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn.functional as F

from fastpggan.kernels._tensors import accumulator_dtype, empty_in_layout_of, like_layout

from . import _dispatch
from ._backends import KernelOp, register_backends
from ._util import upcast
from .opspec import CPU_OPS_RESULT, EXT_ON_CPU, Inputs, OpSpec, Probe, Variant, dtype_name, odd_shapes

PIXEL_NORM_EPS = 1e-8


@dataclasses.dataclass(frozen=True)
class BiasActVariant(Variant):
    """What selects a bias_act kernel besides x; its text is e.g. 'lrelu,bias,pn'."""

    linear: bool = False  # negative_slope == 1: no activation
    bias: bool = True
    pixel_norm: bool = False

    def __str__(self) -> str:
        return ",".join(
            ["linear" if self.linear else "lrelu", "bias" if self.bias else "nobias"]
            + (["pn"] if self.pixel_norm else [])
        )

    @classmethod
    def parse(cls, text: str) -> "BiasActVariant":
        parts = text.split(",")
        if (
            len(parts) not in (2, 3)
            or parts[0] not in ("lrelu", "linear")
            or parts[1] not in ("bias", "nobias")
            or parts[2:] not in ([], ["pn"])
        ):
            raise ValueError(f"bias_act variant must be like 'lrelu,bias' or 'linear,nobias,pn', got {text!r}")
        return cls(parts[0] == "linear", parts[1] == "bias", parts[2:] == ["pn"])


def bias_act(
    x: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    gain: float = 1.0,
    negative_slope: float = 0.2,
    pixel_norm: bool = False,
    impl: str = "auto",
) -> torch.Tensor:
    """Fused gain + per-channel bias + LeakyReLU (+ pixel norm over the channels); see the module docstring.

    Args:
        x: (N, C, ...) pre-activations, channel axis 1; NCHW-contiguous or channels_last.
        bias: (C,) per-channel bias, or None.
        gain: scale applied to x before the bias (equalized LR's gain / sqrt(fan_in)).
        negative_slope: LeakyReLU slope; 1.0 is linear (no activation).
        pixel_norm: divide each pixel's channel vector by its RMS (+1e-8 inside the root) after the activation.
        impl: 'auto', 'ref', 'triton', 'ext' or 'compiled' (see fastpggan.ops).

    Returns:
        Tensor of x's shape and dtype; the fast backends keep x's memory layout. Differentiable twice on every
        backend (with pixel norm, the fast backends' double backward is the plain-PyTorch formula's).
    """
    if x.ndim < 2:
        raise ValueError(f"bias_act expects a tensor with a channel axis at dim 1, got shape {tuple(x.shape)}")
    if bias is not None and (bias.ndim != 1 or bias.shape[0] != x.shape[1]):
        raise ValueError(f"bias must have shape ({x.shape[1]},), got {tuple(bias.shape)}")
    variant = BiasActVariant(negative_slope == 1.0, bias is not None, bool(pixel_norm))
    fn = _dispatch.resolve(
        "bias_act",
        impl,
        x,
        variant,
        extra=dict(
            gain=float(gain), slope=float(negative_slope), bias_dtype=None if bias is None else dtype_name(bias)
        ),
        others=(bias,),
    )
    return fn(x, bias, float(gain), float(negative_slope), bool(pixel_norm))


def bias_act_ref(
    x: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    gain: float = 1.0,
    negative_slope: float = 0.2,
    pixel_norm: bool = False,
) -> torch.Tensor:
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
#   bias_act_pn       (x, bias?, gain, slope) -> (y, r)    backward: bias_act_pn_grad (+ r's share, if r has one)
#   bias_act_pn_grad  (dy, y, r, gain, slope) -> dx        double backward: its plain-PyTorch formula's own
#                                                          (PGGAN needs first order; other GANs differentiate G twice)


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
    if isinstance(output, tuple):  # (y, r) of pixel norm: r has a gradient only in a double backward, else None
        ctx.set_materialize_grads(False)
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
        (y,) = ctx.saved_tensors
        return _input_grads(ctx, lambda gain: k.bias_act_grad(dy, y, gain, ctx.slope))

    def grad_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.gain, ctx.slope = inputs[2], inputs[3]

    def grad_backward(ctx, ddx):
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        (y,) = ctx.saved_tensors
        return k.bias_act_grad(ddx, y, ctx.gain, ctx.slope), None, None, None

    def pn_backward(ctx, dy, dr):
        if dy is None and dr is None:
            return None, None, None, None
        y, r = ctx.saved_tensors

        def dx_of_gain(gain):
            dx = k.bias_act_pn_grad(dy, y, r, gain, ctx.slope) if dy is not None else None
            if dr is not None:
                from_r = _pn_grad_from_r(dr, y, r, gain, ctx.slope)
                dx = from_r if dx is None else dx + from_r
            return dx

        return _input_grads(ctx, dx_of_gain)

    def pn_grad_setup(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:3])
        ctx.gain, ctx.slope = inputs[3], inputs[4]

    def pn_grad_backward(ctx, ddx):
        """The vector-Jacobian product of _torch_bias_act_pn_grad (what the kernel computes) by autograd; with
        create_graph (grad mode on here) through the saved tensors themselves, so that higher orders hold too."""
        needs, create = ctx.needs_input_grad[:3], torch.is_grad_enabled()
        with torch.enable_grad():
            ins = [
                t if create and t.requires_grad else t.detach().requires_grad_(need)
                for t, need in zip(ctx.saved_tensors, needs)
            ]
            wanted = [t for t, need in zip(ins, needs) if need]
            dy, y, r = ins
            dx = _torch_bias_act_pn_grad(dy, y, r, ctx.gain, ctx.slope)
            grads = iter(torch.autograd.grad(dx, wanted, ddx, create_graph=create, allow_unused=True))
        return tuple(next(grads) if need else None for need in needs) + (None, None)

    return {
        "bias_act": (_setup, backward),
        "bias_act_grad": (grad_setup, grad_backward),
        "bias_act_pn": (_setup, pn_backward),
        "bias_act_pn_grad": (pn_grad_setup, pn_grad_backward),
    }


def _pn_grad_from_r(dr, y, r, gain, slope):
    """dx from a gradient of r = rsqrt(mean_c(a^2) + eps), per pixel: dr/da = -r^3 a / C = -r^2 y / C (y = a r),
    through the LReLU (a has y's sign) and the gain."""
    v = _pixels_last(y.to(r.dtype))
    rr, g = r.reshape(v.shape[:-1]).unsqueeze(-1), dr.reshape(v.shape[:-1]).unsqueeze(-1)
    da = -g * rr.square() * v / v.shape[-1]
    dx = torch.where(v > 0, da * gain, da * (gain * slope))
    return like_layout(dx.movedim(-1, 1).to(y.dtype), y)


def _call(k, x, bias, gain, negative_slope, pixel_norm):
    bias = bias.contiguous() if bias is not None else None
    if pixel_norm:
        return k.bias_act_pn(x, bias, gain, negative_slope)[0]
    return k.bias_act(x, bias, gain, negative_slope)


# The kernel ops in plain PyTorch, computed as the kernels compute them (accumulator dtype, the kernels' output
# layout): the bodies of the compiled backend. r is per pixel in (n, h, w) order.


def _torch_bias_act(x, bias, gain, slope):
    return like_layout(bias_act_ref(x, bias, gain, slope), x)


def _torch_bias_act_grad(dy, y, gain, slope):
    acc = accumulator_dtype(y.dtype)
    d = dy.to(acc)  # both products formed in acc (torch.where of two Python floats would be float32)
    return like_layout(torch.where(y.to(acc) > 0, d * gain, d * (gain * slope)).to(y.dtype), y)


def _pixels_last(t):
    """(N, C, ...) -> (N, ..., C): each pixel's channels in the last dim."""
    return t.movedim(1, -1)


def _torch_bias_act_pn(x, bias, gain, slope):
    a = bias_act_ref(x, bias, gain, slope).to(accumulator_dtype(x.dtype))
    r = torch.rsqrt(_pixels_last(a).square().mean(dim=-1) + PIXEL_NORM_EPS)
    y = a * r.unsqueeze(1)
    return like_layout(y.to(x.dtype), x), r.reshape(-1)


def _torch_bias_act_pn_grad(dy, y, r, gain, slope):
    """dx = gain * lrelu'(a) * r * (dy - y * mean_c(dy * y)), since y = a * r and a has y's sign."""
    acc = accumulator_dtype(y.dtype)
    d, v = _pixels_last(dy.to(acc)), _pixels_last(y.to(acc))
    rr = r.reshape(v.shape[:-1]).unsqueeze(-1)
    dn = rr * (d - v * (d * v).mean(dim=-1, keepdim=True))
    dx = torch.where(v > 0, dn * gain, dn * (gain * slope))
    return like_layout(dx.movedim(-1, 1).to(y.dtype), y)


TORCH_KERNELS: Dict[str, Callable[..., Any]] = {
    "bias_act": _torch_bias_act,
    "bias_act_grad": _torch_bias_act_grad,
    "bias_act_pn": _torch_bias_act_pn,
    "bias_act_pn_grad": _torch_bias_act_pn_grad,
}


def _probe(v: BiasActVariant, shape, extra, inputs: Inputs) -> Probe:
    x = inputs.tensor(shape)
    bias = inputs.tensor((shape[1],), extra.get("bias_dtype")) if v.bias else None
    gain, slope = extra.get("gain", 0.7), extra.get("slope", 1.0 if v.linear else 0.2)

    def call(impl):
        return bias_act(x, bias, gain=gain, negative_slope=slope, pixel_norm=v.pixel_norm, impl=impl)

    slack = None
    if v.pixel_norm and x.dtype in (torch.float16, torch.bfloat16):
        slack = functools.partial(pn_rounding_slack, x, bias, gain, slope)
    return Probe([x] + ([bias] if bias is not None else []), [1, x.numel() // shape[1]], call, True, slack)


def pn_rounding_slack(
    x: torch.Tensor, bias: Optional[torch.Tensor], gain: float, slope: float, dy: torch.Tensor
) -> List[Optional[torch.Tensor]]:
    """[dx, dbias] bounds on what the fast pixel-norm backward adds in fp16/bf16 to ref's error (Probe.grad_slack).

    It reads y rounded to x's dtype, y_i (1 + d_i) with |d_i| <= u (the unit roundoff), where ref's autograd keeps
    fp32; dx_i = gain s_i r (dy_i - y_i mean_c(dy y)) then moves by at most gain s_i r |y_i| (2 + u) u mean_c|dy y|
    (s_i: 1 or the slope). Bounded here with 3u. It grows with r = 1/rms, unlike the tolerance's global scale: at C = 3
    one draw in a few thousand left that scale (the self-test's flake of 2026-12-07).

    Args:
        x, bias, gain, slope: the probe's inputs and arguments of bias_act (x in fp16 or bf16).
        dy: the output gradient the check backpropagates.

    Returns:
        [bound on dx's extra error, elementwise like x] (+ [the bias gradient's, shape (C,)] if bias is given).
    """
    u = torch.finfo(x.dtype).eps / 2
    a = bias_act_ref(x.detach().double(), None if bias is None else bias.detach().double(), gain, slope)
    s = torch.where(a > 0, 1.0, slope)
    r = torch.rsqrt(a.square().mean(dim=1, keepdim=True) + PIXEL_NORM_EPS)
    y = (a * r).abs()
    core = 3 * u * s * r * y * (dy.double().abs() * y).mean(dim=1, keepdim=True)
    dims = [0] + list(range(2, x.ndim))
    slack: List[Optional[torch.Tensor]] = [abs(gain) * core]
    return slack + ([core.sum(dim=dims)] if bias is not None else [])


def _check_cases(dtype, layout, big):
    out = []
    for shape in odd_shapes(big):
        for text in ("lrelu,bias", "lrelu,bias,pn", "linear,nobias,pn", "linear,bias"):
            v = BiasActVariant.parse(text)
            out.append((v, shape, dict(gain=0.43, slope=1.0 if v.linear else 0.2, bias_dtype="float32")))
    if layout == "contiguous":  # dense layers and latents
        for text in ("lrelu,bias", "linear,nobias,pn", "lrelu,bias,pn"):
            v = BiasActVariant.parse(text)
            out.append((v, (3, 17), dict(gain=1.7, slope=1.0 if v.linear else 0.2, bias_dtype="float32")))
    return out


def _bench_cases(shapes):
    return [
        (label, res, BiasActVariant(pixel_norm=pn), (n, c, res, res), dict(gain=0.05, bias_dtype="float32"))
        for label, pn in (("bias_act", False), ("bias_act+pixelnorm", True))
        for res, (n, c) in shapes.items()
    ]


register_backends(
    OpSpec(
        "bias_act",
        bias_act_ref,
        BiasActVariant,
        _probe,
        _check_cases,
        _bench_cases,
        # forward reads x and writes y; the backward reads dy and y and writes dx (bias and statistics ignored)
        traffic=lambda v: (2, 5),
        # forward + backward at 4-32^2, fp32, vs ref: 2.2-2.9x, with pixel norm 2.7-5.3x on the CPU
        auto_order=EXT_ON_CPU,
        auto_order_source=CPU_OPS_RESULT,
    ),
    kernels="bias_act",
    torch_kernels=TORCH_KERNELS,
    autograd=_autograd,
    call=_call,
    kernel_ops={
        "bias_act": KernelOp("(Tensor x, Tensor? bias, float gain, float slope) -> Tensor", _fake_like_x),
        "bias_act_grad": KernelOp("(Tensor dy, Tensor y, float gain, float slope) -> Tensor", _fake_like_y),
        "bias_act_pn": KernelOp("(Tensor x, Tensor? bias, float gain, float slope) -> (Tensor, Tensor)", _fake_pn),
        "bias_act_pn_grad": KernelOp(
            "(Tensor dy, Tensor y, Tensor r, float gain, float slope) -> Tensor", _fake_like_y
        ),
    },
)
