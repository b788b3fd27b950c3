"""fade_in: the blend that grows a new resolution in smoothly (paper Sec. 3, Fig. 2).

    y = (1 - alpha) * upsample_nearest(low, to high's size) + alpha * high

`low` is at high's resolution or half of it. Written as (1-a)*u + a*h rather than lerp, so that alpha=0 gives
exactly u and alpha=1 gives exactly h: the grown network then equals the smaller one bit for bit.
"""

import dataclasses
from typing import Any, Callable, Dict, Union

import torch
import torch.nn.functional as F

from fastpggan.kernels._tensors import accumulator_dtype, empty_in_layout_of, like_layout

from . import _dispatch
from ._backends import KernelOp, register_backends
from .opspec import CPU_OPS_RESULT, EXT_ON_CPU, Inputs, OpSpec, Probe, Variant, dtype_name, odd_shapes


@dataclasses.dataclass(frozen=True)
class FadeVariant(Variant):
    """'up' when low is half of high's size (the upsampling kernel), 'same' when the sizes are equal."""

    up: bool

    def __str__(self) -> str:
        return "up" if self.up else "same"

    @classmethod
    def parse(cls, text: str) -> "FadeVariant":
        if text not in ("up", "same"):
            raise ValueError(f"fade_in variant must be 'up' or 'same', got {text!r}")
        return cls(text == "up")


def fade_in(
    low: torch.Tensor, high: torch.Tensor, alpha: Union[float, torch.Tensor], *, impl: str = "auto"
) -> torch.Tensor:
    """Blend `low` (upsampled 2x if it is half of high's size) into `high` with weight alpha on high.

    Args:
        low: (N, C, H, W) or (N, C, H/2, W/2), the previous resolution's output.
        high: (N, C, H, W), the new block's output; NCHW-contiguous or channels_last.
        alpha: the weight of `high`, in [0, 1]: a float, or a 0-d tensor that the fast kernels read on the device
            (so a captured CUDA graph sees its new value). A tensor alpha that requires grad runs the reference.
        impl: 'auto', 'ref', 'triton', 'ext' or 'compiled' (see fastpggan.ops).

    Returns:
        (N, C, H, W) in high's dtype; the fast backends keep high's memory layout.
    """
    if low.ndim != 4 or high.ndim != 4 or low.shape[:2] != high.shape[:2]:
        raise ValueError(
            f"fade_in needs NCHW tensors with equal N and C, got {tuple(low.shape)} and {tuple(high.shape)}"
        )
    lh, hh = low.shape[-2:], high.shape[-2:]
    if not (lh == hh or (lh[0] * 2 == hh[0] and lh[1] * 2 == hh[1])):
        raise ValueError(f"fade_in: low {tuple(lh)} must be high's size {tuple(hh)} or half of it")
    if isinstance(alpha, torch.Tensor) and alpha.ndim != 0:
        raise ValueError("fade_in: alpha must be a float or a 0-d tensor")
    fn = _dispatch.resolve(
        "fade_in",
        impl,
        high,
        FadeVariant(lh != hh),
        extra=dict(low_dtype=dtype_name(low), alpha="tensor" if isinstance(alpha, torch.Tensor) else "float"),
        others=(low, alpha),
    )
    return fn(low, high, alpha)


def upsample2x_nearest(x: torch.Tensor) -> torch.Tensor:
    """2x nearest-neighbour upsampling (official `upscale2d`)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


def fade_in_ref(low: torch.Tensor, high: torch.Tensor, alpha: Union[float, torch.Tensor]) -> torch.Tensor:
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
        (alpha_t,) = ctx.saved_tensors
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
        (alpha_t,) = ctx.saved_tensors
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


# The kernel ops in plain PyTorch, computed as the kernels compute them: the bodies of the compiled backend.


def _weight(alpha, alpha_t, acc):
    return alpha_t.reshape(()).to(acc) if alpha_t is not None else alpha


def _torch_fade_in(low, high, alpha, alpha_t):
    acc = accumulator_dtype(high.dtype)
    a = _weight(alpha, alpha_t, acc)
    u = low.to(acc)
    if low.shape[-1] != high.shape[-1]:
        u = upsample2x_nearest(u)
    return like_layout(((1 - a) * u + a * high.to(acc)).to(high.dtype), high)


def _torch_fade_in_grad(dy, low_size, alpha, alpha_t):
    acc = accumulator_dtype(dy.dtype)
    a = _weight(alpha, alpha_t, acc)
    d = dy.to(acc)
    dlow = (1 - a) * d
    if low_size[-1] != dy.shape[-1]:  # the transpose of 2x nearest upsampling: sum each 2x2 block
        n, c, h, w = dy.shape
        dlow = dlow.reshape(n, c, h // 2, 2, w // 2, 2).sum(dim=(3, 5))
    return like_layout(dlow.to(dy.dtype), dy), like_layout((a * d).to(dy.dtype), dy)


TORCH_KERNELS: Dict[str, Callable[..., Any]] = {"fade_in": _torch_fade_in, "fade_in_grad": _torch_fade_in_grad}


def _probe(v: FadeVariant, shape, extra, inputs: Inputs) -> Probe:
    high = inputs.tensor(shape)
    low = inputs.tensor(
        tuple(shape[:2]) + ((shape[2] // 2, shape[3] // 2) if v.up else tuple(shape[2:])), extra.get("low_dtype")
    )
    alpha = torch.tensor(0.37, device=high.device) if extra.get("alpha") == "tensor" else 0.37
    return Probe([low, high], [4 if v.up else 1, 1], lambda impl: fade_in(low, high, alpha, impl=impl), True)


def _check_cases(dtype, layout, big):
    out = []
    for n, c, h, w in odd_shapes(big):
        out.append((FadeVariant(True), (n, c, 8, 8), dict(low_dtype=dtype, alpha="tensor")))
        out.append((FadeVariant(False), (n, c, h, w), dict(low_dtype=dtype, alpha="float")))
    return out


def _bench_cases(shapes):
    """G's RGB output fade at each resolution, and D's feature fade (at half the resolution, same size)."""
    return [
        ("fade_in G rgb", res, FadeVariant(True), (n, 3, res, res), {}) for res, (n, _) in shapes.items() if res >= 8
    ] + [
        ("fade_in D features", res, FadeVariant(False), (n, shapes[res // 2][1], res // 2, res // 2), {})
        for res, (n, _) in shapes.items()
        if res >= 8 and res // 2 in shapes
    ]


register_backends(
    OpSpec(
        "fade_in",
        fade_in_ref,
        FadeVariant,
        _probe,
        _check_cases,
        _bench_cases,
        # forward reads low and high and writes y, the backward reads dy and writes dlow and dhigh; the upsampling
        # fade's low is a quarter of the size
        traffic=lambda v: (2.25, 4.5) if v.up else (3, 6),
        # forward + backward at 4-32^2, fp32, vs ref: 1.2-2.4x on the CPU; CUDA: ref until checked on the GPU
        auto_order=EXT_ON_CPU,
        auto_order_source=CPU_OPS_RESULT,
    ),
    kernels="fade_in",
    torch_kernels=TORCH_KERNELS,
    autograd=_autograd,
    call=_call,
    kernel_ops={
        "fade_in": KernelOp("(Tensor low, Tensor high, float alpha, Tensor? alpha_t) -> Tensor", _fake),
        "fade_in_grad": KernelOp(
            "(Tensor dy, int[] low_size, float alpha, Tensor? alpha_t) -> (Tensor, Tensor)", _fake_grad
        ),
    },
)
