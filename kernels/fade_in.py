"""fade_in kernels: y = (1 - a) * up2x(low) + a * high in one pass, and its backward in one pass.

The backward runs over low's elements: each reads its 2x2 block of dy, writes d_high = a * dy there and
d_low = (1 - a) * sum(block). In NCHW it runs over low's rows instead: each takes high's row pair 2L, 2L + 1 as
two contiguous rows (vector loads and stores) and sums adjacent columns for d_low. Without the upsample (low and
high the same size) both are elementwise.
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
def _fade_in_fwd_kernel(
    low_ptr,
    high_ptr,
    y_ptr,
    alpha,
    alpha_ptr,
    numel,
    C,
    H,
    W,
    UP: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    ALPHA_PTR: tl.constexpr,
    INT64: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = program_start(BLOCK, INT64) + tl.arange(0, BLOCK)
    inb = offs < numel
    a = _alpha(alpha, alpha_ptr, ALPHA_PTR, ACC)
    lo = tl.load(low_ptr + _low_offset(offs, C, H, W, UP, CHANNELS_LAST), mask=inb).to(ACC)
    hi = tl.load(high_ptr + offs, mask=inb).to(ACC)
    tl.store(y_ptr + offs, ((1 - a) * lo + a * hi).to(y_ptr.dtype.element_ty), mask=inb)


@triton.jit
def _fade_in_bwd_kernel(
    dy_ptr,
    dlow_ptr,
    dhigh_ptr,
    alpha,
    alpha_ptr,
    numel_low,
    C,
    H,
    W,
    UP: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    ALPHA_PTR: tl.constexpr,
    INT64: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
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


@triton.jit
def _fade_in_bwd_rows_kernel(
    dy_ptr,
    dlow_ptr,
    dhigh_ptr,
    alpha,
    alpha_ptr,
    rows,
    W,
    ALPHA_PTR: tl.constexpr,
    INT64: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    """NCHW upsampling backward over `rows` low rows (n, c, hl): high rows 2L and 2L + 1, W wide."""
    r = program_start(BLOCK_R, INT64) + tl.arange(0, BLOCK_R)
    a = _alpha(alpha, alpha_ptr, ALPHA_PTR, ACC)
    ty = dhigh_ptr.dtype.element_ty
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        m = (r < rows)[:, None] & (w < W)[None, :]
        top = (2 * r * W)[:, None] + w[None, :]
        d0 = tl.load(dy_ptr + top, mask=m, other=0).to(ACC)
        d1 = tl.load(dy_ptr + top + W, mask=m, other=0).to(ACC)
        tl.store(dhigh_ptr + top, (a * d0).to(ty), mask=m)
        tl.store(dhigh_ptr + top + W, (a * d1).to(ty), mask=m)
        pairs = tl.sum(tl.reshape(d0 + d1, [BLOCK_R, BLOCK_W // 2, 2]), axis=2)
        wl = w0 // 2 + tl.arange(0, BLOCK_W // 2)
        ml = (r < rows)[:, None] & (wl < W // 2)[None, :]
        tl.store(
            dlow_ptr + (r * (W // 2))[:, None] + wl[None, :], ((1 - a) * pairs).to(dlow_ptr.dtype.element_ty), mask=ml
        )


def rows_tile(w):
    """(BLOCK_R, BLOCK_W, warps) of _fade_in_bwd_rows_kernel for high rows w wide: about 1024 high elements per row
    of the pair. Where w is a multiple of 16 the JIT knows the rows are aligned and moves 16 bytes per access with 4
    warps; otherwise the code is scalar and 8 warps keep it under 64 registers."""
    block_w = min(triton.next_power_of_2(w), 1024)
    return max(1, 1024 // block_w), block_w, 4 if w % 16 == 0 else 8


def fade_in(low, high, alpha, alpha_t=None):
    """(1 - a) * up2x(low) + a * high, a = alpha_t[0] if alpha_t is given else alpha. Output in high's layout."""
    high = dense(high)
    low = like_layout(low, high)
    y = empty(None, like=high)
    if high.numel() == 0:
        return y
    n, c, h, w = high.shape
    _fade_in_fwd_kernel[(cdiv(high.numel(), ELEMENTWISE_BLOCK),)](
        low,
        high,
        y,
        float(alpha),
        alpha_t if alpha_t is not None else high,
        high.numel(),
        c,
        h,
        w,
        UP=low.shape[-1] != w,
        CHANNELS_LAST=is_channels_last(high),
        ALPHA_PTR=alpha_t is not None,
        INT64=needs_int64(high),
        ACC=acc_dtype(high),
        BLOCK=ELEMENTWISE_BLOCK,
    )
    return y


def fade_in_grad(dy, low_shape, alpha, alpha_t=None):
    """(d_low, d_high) of fade_in given dy; d_low has shape low_shape, both in dy's dtype and layout."""
    dy = dense(dy)
    n, c, h, w = dy.shape
    up = low_shape[-1] != w
    cl = is_channels_last(dy)
    dhigh = empty(None, like=dy)
    dlow = empty(
        low_shape,
        dtype=dy.dtype,
        device=dy.device,
        memory_format=torch.channels_last if cl else torch.contiguous_format,
    )
    if dy.numel() == 0:
        return dlow, dhigh
    if up and not cl:
        rows = dlow.numel() // (w // 2)
        block_r, block_w, warps = rows_tile(w)
        _fade_in_bwd_rows_kernel[(cdiv(rows, block_r),)](
            dy,
            dlow,
            dhigh,
            float(alpha),
            alpha_t if alpha_t is not None else dy,
            rows,
            w,
            ALPHA_PTR=alpha_t is not None,
            INT64=needs_int64(dy),
            ACC=acc_dtype(dy),
            BLOCK_R=block_r,
            BLOCK_W=block_w,
            num_warps=warps,
        )
        return dlow, dhigh
    _fade_in_bwd_kernel[(cdiv(dlow.numel(), ELEMENTWISE_BLOCK),)](
        dy,
        dlow,
        dhigh,
        float(alpha),
        alpha_t if alpha_t is not None else dy,
        dlow.numel(),
        c,
        h,
        w,
        UP=up,
        CHANNELS_LAST=cl,
        ALPHA_PTR=alpha_t is not None,
        INT64=needs_int64(dy),
        ACC=acc_dtype(dy),
        BLOCK=ELEMENTWISE_BLOCK,
        num_warps=NUM_WARPS["_fade_in_bwd_kernel"],
    )
    return dlow, dhigh
