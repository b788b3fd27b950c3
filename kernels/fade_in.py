"""fade_in kernels: y = (1 - a) * up2x(low) + a * high in one pass, and its backward in one pass.

The backward runs over low's elements: each reads its 2x2 block of dy, writes d_high = a * dy there and
d_low = (1 - a) * sum(block). Without the upsample (low and high the same size) both are elementwise.
`alpha` is a float, or a 1-element device tensor read by the kernel (so CUDA graphs can update it in place).
Both tensors are NCHW-contiguous or both channels_last.
"""
import torch
import triton
import triton.language as tl

from ._common import ELEMENTWISE_BLOCK, acc_dtype, cdiv, empty, needs_int64, program_start
from ._tensors import dense, is_channels_last, like_layout

# Warps per launch where the default 4 would hold too many elements a thread: the upsampling backward with 4
# warps takes 96 registers (31 % occupancy on sm_90); tests/test_triton_compile.py compiles with these.
NUM_WARPS = {"_fade_in_bwd_kernel": 8}


@triton.jit
def _alpha(alpha, alpha_ptr, ALPHA_PTR: tl.constexpr, ACC: tl.constexpr):
    if ALPHA_PTR:
        return tl.load(alpha_ptr).to(ACC)
    return tl.full([], alpha, ACC)


@triton.jit
def _low_offset(offs, C, H, W, UP: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """Offset in low of the source of high's element `offs`."""
    if not UP:
        return offs
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
        n = offs // (C * W * H)
        return ((n * (H // 2) + h // 2) * (W // 2) + w // 2) * C + c
    w = offs % W
    h = (offs // W) % H
    nc = offs // (W * H)
    return (nc * (H // 2) + h // 2) * (W // 2) + w // 2


@triton.jit
def _fade_in_fwd_kernel(low_ptr, high_ptr, y_ptr, alpha, alpha_ptr, numel, C, H, W, UP: tl.constexpr,
                        CHANNELS_LAST: tl.constexpr, ALPHA_PTR: tl.constexpr, INT64: tl.constexpr,
                        ACC: tl.constexpr, BLOCK: tl.constexpr):
    offs = program_start(BLOCK, INT64) + tl.arange(0, BLOCK)
    inb = offs < numel
    a = _alpha(alpha, alpha_ptr, ALPHA_PTR, ACC)
    lo = tl.load(low_ptr + _low_offset(offs, C, H, W, UP, CHANNELS_LAST), mask=inb).to(ACC)
    hi = tl.load(high_ptr + offs, mask=inb).to(ACC)
    tl.store(y_ptr + offs, ((1 - a) * lo + a * hi).to(y_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _fade_in_bwd_kernel(dy_ptr, dlow_ptr, dhigh_ptr, alpha, alpha_ptr, numel_low, C, H, W, UP: tl.constexpr,
                        CHANNELS_LAST: tl.constexpr, ALPHA_PTR: tl.constexpr, INT64: tl.constexpr,
                        ACC: tl.constexpr, BLOCK: tl.constexpr):
    j = program_start(BLOCK, INT64) + tl.arange(0, BLOCK)
    inb = j < numel_low
    a = _alpha(alpha, alpha_ptr, ALPHA_PTR, ACC)
    if UP:
        if CHANNELS_LAST:
            c = j % C
            wl = (j // C) % (W // 2)
            hl = (j // (C * (W // 2))) % (H // 2)
            n = j // (C * (W // 2) * (H // 2))
            base = ((n * H + 2 * hl) * W + 2 * wl) * C + c
            step_w = C
        else:
            wl = j % (W // 2)
            hl = (j // (W // 2)) % (H // 2)
            nc = j // ((W // 2) * (H // 2))
            base = (nc * H + 2 * hl) * W + 2 * wl
            step_w = 1
        d00 = tl.load(dy_ptr + base, mask=inb).to(ACC)
        d01 = tl.load(dy_ptr + base + step_w, mask=inb).to(ACC)
        d10 = tl.load(dy_ptr + base + W * step_w, mask=inb).to(ACC)
        d11 = tl.load(dy_ptr + base + (W + 1) * step_w, mask=inb).to(ACC)
        ty = dhigh_ptr.dtype.element_ty
        tl.store(dhigh_ptr + base, (a * d00).to(ty), mask=inb)
        tl.store(dhigh_ptr + base + step_w, (a * d01).to(ty), mask=inb)
        tl.store(dhigh_ptr + base + W * step_w, (a * d10).to(ty), mask=inb)
        tl.store(dhigh_ptr + base + (W + 1) * step_w, (a * d11).to(ty), mask=inb)
        tl.store(dlow_ptr + j, ((1 - a) * ((d00 + d01) + (d10 + d11))).to(dlow_ptr.dtype.element_ty), mask=inb)
    else:
        d = tl.load(dy_ptr + j, mask=inb).to(ACC)
        tl.store(dhigh_ptr + j, (a * d).to(dhigh_ptr.dtype.element_ty), mask=inb)
        tl.store(dlow_ptr + j, ((1 - a) * d).to(dlow_ptr.dtype.element_ty), mask=inb)


def fade_in(low, high, alpha, alpha_t=None):
    """(1 - a) * up2x(low) + a * high, a = alpha_t[0] if alpha_t is given else alpha. Output in high's layout."""
    high = dense(high)
    low = like_layout(low, high)
    y = empty(None, like=high)
    if high.numel() == 0:
        return y
    n, c, h, w = high.shape
    _fade_in_fwd_kernel[(cdiv(high.numel(), ELEMENTWISE_BLOCK),)](
        low, high, y, float(alpha), alpha_t if alpha_t is not None else high, high.numel(), c, h, w,
        UP=low.shape[-1] != w, CHANNELS_LAST=is_channels_last(high), ALPHA_PTR=alpha_t is not None,
        INT64=needs_int64(high), ACC=acc_dtype(high), BLOCK=ELEMENTWISE_BLOCK)
    return y


def fade_in_grad(dy, low_shape, alpha, alpha_t=None):
    """(d_low, d_high) of fade_in given dy; d_low has shape low_shape, both in dy's dtype and layout."""
    dy = dense(dy)
    n, c, h, w = dy.shape
    up = low_shape[-1] != w
    cl = is_channels_last(dy)
    dhigh = empty(None, like=dy)
    dlow = empty(low_shape, dtype=dy.dtype, device=dy.device,
                 memory_format=torch.channels_last if cl else torch.contiguous_format)
    if dy.numel() == 0:
        return dlow, dhigh
    _fade_in_bwd_kernel[(cdiv(dlow.numel(), ELEMENTWISE_BLOCK),)](
        dy, dlow, dhigh, float(alpha), alpha_t if alpha_t is not None else dy, dlow.numel(), c, h, w,
        UP=up, CHANNELS_LAST=cl, ALPHA_PTR=alpha_t is not None, INT64=needs_int64(dy), ACC=acc_dtype(dy),
        BLOCK=ELEMENTWISE_BLOCK, num_warps=NUM_WARPS["_fade_in_bwd_kernel"])
    return dlow, dhigh
