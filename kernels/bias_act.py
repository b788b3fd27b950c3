"""bias_act kernels: the epilogue y = leaky_relu(x * gain + b[c]) with optional pixel norm over c.

- `bias_act`: elementwise form (no pixel norm).
- `bias_act_grad`: its backward, dx = where(y > 0, 1, slope) * dy * gain with the LReLU mask read from the saved
  output y: the same kernel. LReLU is piecewise linear, so it is also its own double backward.
- `bias_act_pn`: y = a * r with a = leaky_relu(x * gain + b), r = rsqrt(mean_c a^2 + 1e-8); returns (y, r).
- `bias_act_pn_grad`: dx = gain * mask(y) * r * (dy - y * mean_c(dy * y)), from the saved y and r.

Each function is the body of the op of the same name (fastpggan.ops registers them as `fastpggan::<name>_triton`).

Tensors are NCHW-contiguous (any rank >= 2, channel axis 1) or 4-d channels_last; outputs keep the layout.
fp16/bf16 are computed in fp32, fp64 in fp64.
"""

import triton
import triton.language as tl

from ._common import (
    ELEMENTWISE_BLOCK,
    MAX_TILE_CHANNELS,
    TILE_ELEMENTS,
    acc_dtype,
    cdiv,
    empty,
    needs_int64,
    pow2,
    program_start,
)
from ._tensors import accumulator_dtype, dense, is_channels_last, like_layout

PIXEL_NORM_EPS = 1e-8


@triton.jit
def _bias_act_kernel(
    x_ptr,
    b_ptr,
    ref_ptr,
    y_ptr,
    numel,
    C,
    c_stride,
    gain,
    slope,
    HAS_BIAS: tl.constexpr,
    MASK_FROM_REF: tl.constexpr,
    INT64: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = program_start(BLOCK, INT64) + tl.arange(0, BLOCK)
    inb = offs < numel
    v = tl.load(x_ptr + offs, mask=inb).to(ACC) * gain
    if HAS_BIAS:
        c = (offs // c_stride) % C
        v += tl.load(b_ptr + c, mask=inb).to(ACC)
    if MASK_FROM_REF:
        pos = tl.load(ref_ptr + offs, mask=inb).to(ACC) > 0
    else:
        pos = v > 0
    v = tl.where(pos, v, v * slope)
    tl.store(y_ptr + offs, v.to(y_ptr.dtype.element_ty), mask=inb)


def _channel_geometry(x):
    """(C, pixels per sample, stride of c, stride of a pixel, stride of a sample) in x's memory order."""
    c = x.shape[1]
    hw = x[0, 0].numel()
    if is_channels_last(x):
        return c, hw, 1, c, c * hw
    return c, hw, hw, 1, c * hw


def bias_act(x, bias, gain, slope, ref=None):
    """leaky_relu(x * gain + bias[c]); with `ref`, where(ref > 0, 1, slope) * x * gain (bias must be None)."""
    if ref is not None:
        ref = dense(ref)
        x = like_layout(x, ref)
    else:
        x = dense(x)
    y = empty(None, like=x)
    if x.numel() == 0:
        return y
    c, _, c_stride, _, _ = _channel_geometry(x)
    _bias_act_kernel[(cdiv(x.numel(), ELEMENTWISE_BLOCK),)](
        x,
        bias if bias is not None else x,
        ref if ref is not None else x,
        y,
        x.numel(),
        c,
        c_stride,
        float(gain),
        float(slope),
        HAS_BIAS=bias is not None,
        MASK_FROM_REF=ref is not None,
        INT64=needs_int64(x),
        ACC=acc_dtype(x),
        BLOCK=ELEMENTWISE_BLOCK,
    )
    return y


def bias_act_grad(dy, y, gain, slope):
    """dx = where(y > 0, 1, slope) * dy * gain, from the saved output y."""
    return bias_act(dy, None, gain, slope, ref=y)


@triton.jit
def _pixel_tile(p0, P, HW, C, s_c, s_p, s_n, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Offsets and mask of a [BLOCK_P pixels, BLOCK_C channels] tile starting at pixel p0."""
    p = p0 + tl.arange(0, BLOCK_P)
    c = tl.arange(0, BLOCK_C)
    n = p // HW
    hw = p % HW
    offs = (n * s_n + hw * s_p)[:, None] + (c * s_c)[None, :]
    return p, offs, (p < P)[:, None] & (c < C)[None, :]


@triton.jit
def _activated(x_ptr, b_ptr, offs, m, c, C, gain, slope, HAS_BIAS: tl.constexpr, ACC: tl.constexpr):
    """leaky_relu(x * gain + b[c]) on a tile, 0 outside the mask."""
    a = tl.load(x_ptr + offs, mask=m, other=0).to(ACC) * gain
    if HAS_BIAS:
        a += tl.load(b_ptr + c, mask=c < C, other=0).to(ACC)[None, :]
    a = tl.where(a > 0, a, a * slope)
    return tl.where(m, a, 0)


@triton.jit
def _pixel_norm_fwd_kernel(
    x_ptr,
    b_ptr,
    y_ptr,
    r_ptr,
    P,
    HW,
    C,
    s_c,
    s_p,
    s_n,
    gain,
    slope,
    eps,
    HAS_BIAS: tl.constexpr,
    INT64: tl.constexpr,
    CHUNKED: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    p0 = program_start(BLOCK_P, INT64)
    if CHUNKED:  # more channels than a tile holds in registers: sum the squares chunk by chunk, then write
        p, _, _ = _pixel_tile(p0, P, HW, C, s_c, s_p, s_n, BLOCK_P, BLOCK_C)
        base = ((p // HW) * s_n + (p % HW) * s_p)[:, None]
        ss = tl.zeros([BLOCK_P], ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            m = (p < P)[:, None] & (c < C)[None, :]
            a = _activated(x_ptr, b_ptr, base + (c * s_c)[None, :], m, c, C, gain, slope, HAS_BIAS, ACC)
            ss += tl.sum(a * a, axis=1)
        r = 1.0 / tl.sqrt(ss / C + eps)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            m = (p < P)[:, None] & (c < C)[None, :]
            offs = base + (c * s_c)[None, :]
            a = _activated(x_ptr, b_ptr, offs, m, c, C, gain, slope, HAS_BIAS, ACC)
            tl.store(y_ptr + offs, (a * r[:, None]).to(y_ptr.dtype.element_ty), mask=m)
    else:
        p, offs, m = _pixel_tile(p0, P, HW, C, s_c, s_p, s_n, BLOCK_P, BLOCK_C)
        a = _activated(x_ptr, b_ptr, offs, m, tl.arange(0, BLOCK_C), C, gain, slope, HAS_BIAS, ACC)
        r = 1.0 / tl.sqrt(tl.sum(a * a, axis=1) / C + eps)
        tl.store(y_ptr + offs, (a * r[:, None]).to(y_ptr.dtype.element_ty), mask=m)
    tl.store(r_ptr + p, r, mask=p < P)


@triton.jit
def _pixel_norm_bwd_kernel(
    dy_ptr,
    y_ptr,
    r_ptr,
    dx_ptr,
    P,
    HW,
    C,
    s_c,
    s_p,
    s_n,
    gain,
    slope,
    INT64: tl.constexpr,
    CHUNKED: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    p0 = program_start(BLOCK_P, INT64)
    p, offs, m = _pixel_tile(p0, P, HW, C, s_c, s_p, s_n, BLOCK_P, BLOCK_C)
    r = tl.load(r_ptr + p, mask=p < P, other=0).to(ACC)
    if CHUNKED:  # the dot product chunk by chunk, then dx
        base = ((p // HW) * s_n + (p % HW) * s_p)[:, None]
        dot = tl.zeros([BLOCK_P], ACC)
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            m = (p < P)[:, None] & (c < C)[None, :]
            offs = base + (c * s_c)[None, :]
            dot += tl.sum(
                tl.load(dy_ptr + offs, mask=m, other=0).to(ACC) * tl.load(y_ptr + offs, mask=m, other=0).to(ACC), axis=1
            )
        dot = dot / C
        for c0 in range(0, C, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            m = (p < P)[:, None] & (c < C)[None, :]
            offs = base + (c * s_c)[None, :]
            dy = tl.load(dy_ptr + offs, mask=m, other=0).to(ACC)
            y = tl.load(y_ptr + offs, mask=m, other=0).to(ACC)
            da = r[:, None] * (dy - y * dot[:, None])
            tl.store(dx_ptr + offs, (tl.where(y > 0, da, da * slope) * gain).to(dx_ptr.dtype.element_ty), mask=m)
    else:
        dy = tl.load(dy_ptr + offs, mask=m, other=0).to(ACC)
        y = tl.load(y_ptr + offs, mask=m, other=0).to(ACC)
        dot = tl.sum(dy * y, axis=1) / C
        da = r[:, None] * (dy - y * dot[:, None])
        dx = tl.where(y > 0, da, da * slope) * gain
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=m)


def tile_warps(block_p, block_c, per_thread=8):
    """Warps for a [block_p, block_c] tile: `per_thread` elements a thread at most (8; 4 for the chunked loops,
    which keep more live), up to 32 warps. 16 elements take 90-115 registers in the backward: 25 % occupancy on
    sm_90 (tests/test_triton_compile.py reads it from the compiled code)."""
    return max(1, min(32, block_p * block_c // (per_thread * 32)))


def _tile(x):
    """Tile [block_p pixels, block_c channels] and its warps: all channels up to MAX_TILE_CHANNELS; beyond, the
    kernels loop over chunks of block_c channels (a whole-channel tile spills on sm_90), with the tile kept at
    TILE_ELEMENTS. NCHW reads block_p contiguous values per channel, so at least one 32-byte sector of them.
    Returns (C, H*W, channel stride, pixel stride, sample stride, block_p, block_c, warps, chunked)."""
    c, hw, s_c, s_p, s_n = _channel_geometry(x)
    block_c = min(pow2(c), MAX_TILE_CHANNELS)
    block_p = max(1, TILE_ELEMENTS // block_c)
    if s_p == 1:
        block_p = max(block_p, 32 // x.element_size())
    block_p = min(block_p, pow2(x.numel() // max(c, 1)))
    chunked = block_c < c
    if chunked:
        block_c = min(MAX_TILE_CHANNELS, max(16, TILE_ELEMENTS // block_p))
    return c, hw, s_c, s_p, s_n, block_p, block_c, tile_warps(block_p, block_c, 4 if chunked else 8), chunked


def bias_act_pn(x, bias, gain, slope):
    """(y, r): y = a * r, a = leaky_relu(x * gain + bias[c]), r = rsqrt(mean_c a^2 + eps) per pixel (flat, in the
    accumulator dtype)."""
    x = dense(x)
    c, hw, s_c, s_p, s_n, block_p, block_c, warps, chunked = _tile(x)
    pixels = x.numel() // c if c else 0
    y = empty(None, like=x)
    r = empty((pixels,), dtype=accumulator_dtype(x.dtype), device=x.device)
    if x.numel() == 0:
        return y, r
    _pixel_norm_fwd_kernel[(cdiv(pixels, block_p),)](
        x,
        bias if bias is not None else x,
        y,
        r,
        pixels,
        hw,
        c,
        s_c,
        s_p,
        s_n,
        float(gain),
        float(slope),
        PIXEL_NORM_EPS,
        HAS_BIAS=bias is not None,
        INT64=needs_int64(x),
        CHUNKED=chunked,
        ACC=acc_dtype(x),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    return y, r


def bias_act_pn_grad(dy, y, r, gain, slope):
    """dx of bias_act_pn from the upstream dy and the saved y, r (bias grad = dx summed / gain)."""
    dy = like_layout(dy, y)
    c, hw, s_c, s_p, s_n, block_p, block_c, warps, chunked = _tile(y)
    pixels = r.numel()
    dx = empty(None, like=y)
    if y.numel() == 0:
        return dx
    _pixel_norm_bwd_kernel[(cdiv(pixels, block_p),)](
        dy,
        y,
        r,
        dx,
        pixels,
        hw,
        c,
        s_c,
        s_p,
        s_n,
        float(gain),
        float(slope),
        INT64=needs_int64(y),
        CHUNKED=chunked,
        ACC=acc_dtype(y),
        BLOCK_P=block_p,
        BLOCK_C=block_c,
        num_warps=warps,
    )
    return dx
